"""Which model won, and by how much: the per-model view of a study (every study; most useful with
`tune.models`).

`model_comparison.csv` has one row per model: its trials (counted, complete, pruned), its best
completed trial by validation weighted F1 with that trial's parameters, validation and test
weighted F1, and the ε its run spent alone. The privacy cost of choosing among all of them is
the study's `privacy/epsilon_total`, not any row's ε. `model_comparison.png` plots validation
and test weighted F1 of every completed trial per model, the best trial per model marked.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ("model", "trials", "complete", "pruned", "best_trial", "lr", "max_grad_norm", "val_f1_weighted",
           "test_f1_weighted", "epsilon_run", "run_id")


@dataclass
class TrialResult:
    number: int
    model: str
    val_f1: float
    test_f1: float
    epsilon: float  # the run's own ε (NaN: non-private)
    params: dict
    run_id: str | None


@dataclass
class ModelRow:
    model: str
    trials: int
    complete: int
    pruned: int
    best_trial: int | None = None
    lr: float = math.nan
    max_grad_norm: float = math.nan
    val_f1_weighted: float = math.nan
    test_f1_weighted: float = math.nan
    epsilon_run: float = math.nan
    run_id: str | None = None


def trial_model(trial, default_model: str) -> str:
    """The model a trial trained: its `model` parameter in a search across models."""
    return str(trial.params.get("model", default_model))


def trial_results(trials, default_model: str, client) -> list[TrialResult]:
    """The completed trials with their runs' test weighted F1 and ε (read from MLflow)."""
    import optuna

    out = []
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        run_id = t.user_attrs.get("run_id")
        metrics = client.get_run(run_id).data.metrics if run_id else {}
        out.append(TrialResult(t.number, trial_model(t, default_model), float(t.value),
                               float(metrics.get("test/f1_weighted", math.nan)),
                               float(metrics.get("privacy/epsilon", math.nan)), dict(t.params), run_id))
    return out


def model_rows(models: list[str], counted_trials, results: list[TrialResult], default_model: str) -> list[ModelRow]:
    """One row per model (in `models` order, then any other model a trial of the study trained)."""
    import optuna

    seen = list(dict.fromkeys([*models, *(trial_model(t, default_model) for t in counted_trials)]))
    rows = []
    for model in seen:
        mine = [t for t in counted_trials if trial_model(t, default_model) == model]
        row = ModelRow(model, len(mine), sum(t.state == optuna.trial.TrialState.COMPLETE for t in mine),
                       sum(t.state == optuna.trial.TrialState.PRUNED for t in mine))
        done = [r for r in results if r.model == model]
        if done:
            best = max(done, key=lambda r: r.val_f1)
            row.best_trial, row.val_f1_weighted, row.test_f1_weighted = best.number, best.val_f1, best.test_f1
            row.lr = float(best.params.get("lr", math.nan))
            row.max_grad_norm = float(best.params.get("max_grad_norm", math.nan))
            row.epsilon_run, row.run_id = best.epsilon, best.run_id
        rows.append(row)
    return rows


def write_csv(rows: list[ModelRow], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                             for k, v in asdict(row).items()})
    return path


def plot(rows: list[ModelRow], results: list[TrialResult], path: Path) -> Path | None:
    """Validation (●) and test (×) weighted F1 of every completed trial per model; the best trial
    per model (by validation) circled. None when no trial completed."""
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [r.model for r in rows]
    with plt.style.context("default"):  # Optuna's plots switch the global style
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(models) + 1.5), 3.6))
        for x, row in enumerate(rows):
            mine = [r for r in results if r.model == row.model]
            if not mine:
                ax.annotate(f"no completed trial\n({row.pruned} pruned)", (x, 0.5), xycoords=("data", "axes fraction"),
                            ha="center", va="center", fontsize=8, color="gray")
            offsets = [0.0] if len(mine) <= 1 else [-0.2 + 0.4 * i / (len(mine) - 1) for i in range(len(mine))]
            for dx, r in zip(offsets, mine):
                best = r.number == row.best_trial
                ax.scatter(x + dx, r.val_f1, marker="o", color="tab:blue", s=60 if best else 22,
                           edgecolors="black" if best else "none", zorder=3)
                if math.isfinite(r.test_f1):
                    ax.scatter(x + dx, r.test_f1, marker="x", color="tab:orange", s=40 if best else 18, zorder=3)
        ax.scatter([], [], marker="o", color="tab:blue", label="validation (best trial outlined)")
        ax.scatter([], [], marker="x", color="tab:orange", label="test")
        ax.set_xticks(range(len(models)), models)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_ylabel("weighted F1")
        ax.set_title("completed trials per model")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def log_comparison(client, parent_id: str, models: list[str], counted_trials, default_model: str,
                   directory: Path) -> list[ModelRow]:
    """Write and log the comparison on the parent run, with `compare/<model>/...` metrics."""
    results = trial_results(counted_trials, default_model, client)
    rows = model_rows(models, counted_trials, results, default_model)
    directory.mkdir(parents=True, exist_ok=True)
    client.log_artifact(parent_id, str(write_csv(rows, directory / "model_comparison.csv")))
    png = plot(rows, results, directory / "model_comparison.png")
    if png is not None:
        client.log_artifact(parent_id, str(png))
    for row in rows:
        for key, value in (("best_val_f1_weighted", row.val_f1_weighted),
                           ("best_test_f1_weighted", row.test_f1_weighted),
                           ("trials", row.trials)):
            if math.isfinite(value):
                client.log_metric(parent_id, f"compare/{row.model}/{key}", float(value))
    return rows
