"""Optuna's own plots of a study as PNG files (its matplotlib backend: no browser, no plotly)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def save_study_plots(study, directory: Path) -> list[Path]:
    """optimization_history.png, and param_importances.png when ≥ 2 trials completed (fANOVA
    needs at least two observations); says in the log which plot it skipped and why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        log.info("tune: no plots (no completed trial)")
        return []
    plots = {"optimization_history": ovm.plot_optimization_history}
    if len(complete) >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    else:
        log.info("tune: no parameter-importance plot: it needs ≥ 2 completed trials, the study has %d", len(complete))
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = directory / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            out.append(path)
    return out
