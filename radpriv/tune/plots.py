"""Optuna's own plots of a study, as PNG files (matplotlib backend, no browser needed)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def save_study_plots(study, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    directory.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history": ovm.plot_optimization_history}
    if len(complete) >= 2 and len(study.best_params) >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    else:
        log.info("tune: no parameter-importance plot (needs ≥ 2 completed trials and ≥ 2 parameters)")
    out = []
    for name, plot in plots.items():
        ax = plot(study)
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        out.append(path)
    return out
