"""`radpriv sweep`: train every cell of the grid (or reuse it), add the baselines, compare, plot.

One parent MLflow run per invocation; each cell is an ordinary training run
(`radpriv.train.train`) nested under it. Resumable by construction: before training a cell,
the experiment is searched for a finished run (`radpriv.complete=true`) whose run key — the
hash of the resolved config and the data's content, the tag every training run carries — is
the cell's; if there is one, from this sweep, an earlier one or a standalone `radpriv train`
with the same config, it is reused. A killed sweep started again trains only what is missing
(and a cell killed mid-training resumes from its epoch-end checkpoint, as `radpriv train` does).

Several workers started with the same command split the cells among themselves: each claims a
cell in the tracking database before training it and skips the cells other live workers hold
(claims.py, obtain.py); with `sweep.init_from=public` the public model of the warm cells is
claimed the same way, so one worker trains it and the others wait for it. Every worker then
builds the same table from the finished runs.

Statistics need per-report test predictions: they are recomputed in memory from each cell's
logged model and never written anywhere (predictions.py).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from radpriv.config import compose, model_sources
from radpriv.data.sources import load_table
from radpriv.data.table import ReportTable
from radpriv.errors import ConfigError
from radpriv.model.encoder import available_models
from radpriv.process_memory import PEAK_RESIDENT_METRIC, resident_bytes, return_freed_memory
from radpriv.sweep import baselines, claims, report, stats
from radpriv.sweep.grid import (
    DP_KIND,
    PUBLIC_KIND,
    WARM_KIND,
    Cell,
    build_grid,
    cell_overrides,
    check_epsilons,
    training_overrides,
)
from radpriv.sweep.obtain import Held, Target, hms, obtain
from radpriv.sweep.predictions import binarize, logged_model_predictions
from radpriv.tracking.parent_run import mlflow_run_id, open_parent_run
from radpriv.tracking.resume import find_finished

log = logging.getLogger(__name__)

CELL_TAG = "radpriv.sweep.cell"
SWEEP_TAG = "radpriv.sweep"
BASELINES = ("tfidf_lr", "dp_lr")
PLAN_PARENT = "none"  # the parent run id a planned cell is composed with: no run is opened


@dataclass
class CellResult:
    cell: Cell
    run_id: str
    reused: bool
    seconds: float  # this invocation's time on the cell (a reused cell: reloading and predicting)
    epsilon_spent: float | None
    predictions: stats.SeedPredictions
    train_seconds: float | None = None  # the training run's own time, whenever it ran (run_train_seconds)
    peak_resident_gb: float | None = None  # the training run's peak resident memory (None: not logged)
    unit: str | None = None  # what the run's ε protects: patient | report (None: non-private)


def run_train_seconds(metrics: dict) -> float | None:
    """A training run's own time: every invocation it took (killed ones up to their last
    checkpoint), or, for runs logged before that was recorded, the one that finished it."""
    return metrics.get("time/cumulative_s", metrics.get("time/total_s"))


def run_unit(client, run) -> str | None:
    """The privacy unit a private run used: its `radpriv.unit` tag, else its privacy.json (a run
    logged before the tag existed); None for a run without DP."""
    unit = run.data.tags.get("radpriv.unit")
    if unit:
        return unit
    from radpriv.tracking.model_ref import run_json

    facts = run_json(client, run.info.run_id, "privacy.json") or {}  # none: nothing known of its unit
    return facts.get("unit") if facts.get("private") else None


def sweep_command(overrides: list[str]) -> dict:
    cfg = compose(["+sweep=default", *overrides])
    return run_sweep(cfg, list(overrides))


def _check_settings(cfg: DictConfig) -> None:
    s = cfg.sweep
    b = s.bootstrap
    if int(b.n_resamples) < 1:
        raise ConfigError(f"sweep.bootstrap.n_resamples={b.n_resamples}: must be ≥ 1")
    if not 0 < float(b.alpha) < 1:
        raise ConfigError(f"sweep.bootstrap.alpha={b.alpha}: must be in (0, 1), e.g. 0.05 for 95% intervals")
    bad = [x for x in (s.baselines or []) if x not in BASELINES]
    if bad:
        raise ConfigError(f"sweep.baselines: {bad} unknown; choose from {', '.join(BASELINES)} (or [] for none)")
    if "dp_lr" in (s.baselines or []):
        check_epsilons(s.epsilons)
    claims.check_settings(s.claims)


def _cell_cfg(base: list[str], cell: Cell, parent_id: str, exp_name: str, spelling: str | None = None) -> DictConfig:
    cfg = compose([*cell_overrides(base, cell, spelling), f"tracking.parent_run_id={parent_id}",
                   f"tracking.experiment={exp_name}", "tracking.log_model=true"])
    with open_dict(cfg):  # a flat tag name (an override `+tracking.tags.a.b=v` would nest it)
        cfg.tracking.tags[CELL_TAG] = cell.name
    return cfg


def _search_ids(client, cfg: DictConfig, first: str | None) -> list[str]:
    """Where finished cells are looked for: `first` (the parent run's experiment), then the
    data's default experiment radpriv-<data>, where plain `radpriv train` runs go."""
    from radpriv.tracking.mlflow_run import experiment_name

    default_exp = client.get_experiment_by_name(experiment_name(cfg))
    ids = ([first] if first else []) + ([default_exp.experiment_id] if default_exp else [])
    return list(dict.fromkeys(ids))


def keyed_table(cfg: DictConfig, table: ReportTable) -> ReportTable:
    """The table a training run of `cfg` is keyed by: with trainer.thresholds=public (a public
    start's default) train swaps in the public validation split before it computes its run key,
    so a finished warm cell carries that table's fingerprint, not the private table's."""
    if str(cfg.trainer.thresholds) != "public":
        return table
    from radpriv.model.public_start import load_public_corpus, with_public_validation

    return with_public_validation(table, load_public_corpus(cfg, table))


def cell_keys(base: list[str], cell: Cell, cfg: DictConfig, table: ReportTable) -> list[str]:
    """The run keys a finished run of this cell may carry: the first is the one it is trained
    under; the others, the same ε spelled as a standalone `radpriv train` may have (1 for 1.0)."""
    from radpriv.tracking.release import private_folder
    from radpriv.tracking.resume import run_keys

    fingerprint = keyed_table(cfg, table).fingerprint()
    folder = private_folder(cfg)
    parent = cfg.tracking.parent_run_id
    exp_name = cfg.tracking.experiment
    cfgs = [cfg] + [_cell_cfg(base, cell, parent, exp_name, s) for s in cell.epsilon_spellings()[1:]]
    per_cfg = [run_keys(c, fingerprint, folder) for c in cfgs]
    return list(dict.fromkeys([keys[0] for keys in per_cfg] + [k for keys in per_cfg for k in keys[1:]]))


def plan_sweep(cfg: DictConfig, cells: list[Cell], base: list[str], tables, client, uri: str, skipped: dict,
               mlflow_run_id: str | None = None) -> dict:
    """`sweep.plan_only=true`: each cell's state, who holds it, and what is left (plan.py), and of
    the public models the warm cells start from; opens no run and writes nothing. `mlflow_run_id`:
    the run `mlflow run` opened (MLFLOW_RUN_ID), whose experiment is searched first, as the sweep
    itself would (it joins that run)."""
    from radpriv.sweep import plan
    from radpriv.tracking.mlflow_run import experiment_name

    exp_name = experiment_name(cfg)
    search_ids = _search_ids(client, cfg, client.get_run(mlflow_run_id).info.experiment_id if mlflow_run_id else None)
    root = cfg.tracking.checkpoint_dir
    planned, warm = [], []
    for cell in cells:
        cell_cfg = _cell_cfg(base, cell, PLAN_PARENT, exp_name)  # tracking.* is not in the run key
        planned.append((cell, cell_keys(base, cell, cell_cfg, tables(cell.seed)), int(cell_cfg.trainer.max_epochs)))
        if cell.kind == WARM_KIND:
            warm.append((cell, cell_cfg, tables(cell.seed)))
    publics = plan.needed_public_models(warm)
    held = claims.read_claims(cfg.sweep.claims, uri, [keys[0] for _, keys, _ in planned] +
                              [model.keys[0] for model, _ in publics])
    ttl_s = float(cfg.sweep.claims.ttl_s)
    states = [plan.cell_state(cell, keys, max_epochs, client, search_ids, Path(root) if root else None,
                              claim=held.get(keys[0]), ttl_s=ttl_s)
              for cell, keys, max_epochs in planned]
    public_states = [plan.public_state(model, warm_cells, client, held.get(model.keys[0]), ttl_s)
                     for model, warm_cells in publics]
    return {**plan.summarize(states, public_states), "skipped_models": skipped}


def _test_part(table: ReportTable) -> ReportTable:
    return table.subset("test")


def _peak_note(peak_gb: float | None) -> str:
    return "" if peak_gb is None else f"; its training peaked at {peak_gb:.1f} GB resident"


def _memory_note() -> str:
    """Return the cell's freed memory to the OS (see radpriv.process_memory); say how much went."""
    released, resident = return_freed_memory(), resident_bytes()
    if released is None or resident is None:
        return ""
    return f"; {resident / 2**30:.1f} GB resident ({released / 2**30:.1f} GB freed memory returned)"


WAIT_LOG_S = 60.0  # while waiting for other workers' cells: a log line when they change, else this often


def cell_target(label: str, cfg: DictConfig, keys: list[str], table: ReportTable, client,
                search_ids: list[str], needs: Target | None = None) -> Target:
    """The cell as a target to obtain (obtain.py): found under any of its run keys, claimed and
    trained under the first."""

    def find() -> str | None:
        run = find_finished(client, search_ids, keys)
        return None if run is None else run.info.run_id

    def train() -> str:
        from radpriv.train import train

        return train(cfg, table=table)["run_id"]

    return Target(label, keys[0], find, train, needs)


def public_corpora():
    """(cell, its config, its table) → the public corpus its public start reads, read once a seed:
    the corpus depends on the data settings every cell of a sweep shares and on the seed."""
    from radpriv.model.public_start import PublicCorpusData, load_public_corpus

    read: dict[int, PublicCorpusData] = {}

    def corpus(cell: Cell, cfg: DictConfig, table: ReportTable) -> PublicCorpusData:
        if cell.seed not in read:
            read[cell.seed] = load_public_corpus(cfg, table)
        return read[cell.seed]

    return corpus


def public_target(label: str, cfg: DictConfig, table: ReportTable, corpus) -> Target:
    """The public model a warm cell starts from (`corpus`: public_corpora's), as a target of its
    own: obtained under a claim on its run key before the cell is claimed, it is trained by one
    worker however many reach its warm cells at once, and the cell's training then finds it."""
    from radpriv.data.overlap import check_no_overlap
    from radpriv.train import find_public_model, public_model, train_public_model

    model = public_model(cfg, corpus)

    def train() -> str:
        # an overlapping corpus is refused before anything trains on it, as the cell's training would
        check_no_overlap(table, corpus.table, same_dataset=corpus.same_dataset)
        return train_public_model(cfg, model)

    return Target(f"{label}: public model {model.name}", model.keys[0], lambda: find_public_model(model), train)


def _cell_result(cell: Cell, run_id: str, reused: bool, table: ReportTable, client, uri: str, batch_size: int,
                 t_cell: float) -> tuple[CellResult, float]:
    """Reload the cell's logged model and predict its test split, in memory; (result, test F1 weighted)."""
    run = client.get_run(run_id)
    metrics = run.data.metrics
    unit = run_unit(client, run) if cell.epsilon is not None else None
    test = _test_part(table)
    probs, thresholds = logged_model_predictions(run_id, uri, test, batch_size)
    preds = stats.SeedPredictions(cell.seed, stats.test_key(test.ids), binarize(probs, thresholds), test.labels)
    f1 = float(stats.f1_scores(preds.preds, preds.labels)["f1_weighted"])
    logged = metrics.get("test/f1_weighted")
    if logged is not None and abs(logged - f1) > 1e-4:
        log.warning("sweep: %s: the reloaded model scores test F1 %.4f, the run logged %.4f", cell.name, f1, logged)
    return CellResult(cell, run_id, reused, time.perf_counter() - t_cell, metrics.get("privacy/epsilon"), preds,
                      run_train_seconds(metrics), metrics.get(PEAK_RESIDENT_METRIC), unit), f1


def _held_note(waiting: dict[int, Held], cells: list[Cell], targets: dict[int, Target]) -> str:
    return ", ".join(f"{cells[i].name} ({'' if h.target is targets[i] else 'its public model: '}{h.claim.worker}, "
                     f"heartbeat {h.claim.age_s():.0f} s ago)" for i, h in waiting.items())


def run_cells(cells: list[Cell], base: list[str], tables, client, uri: str, parent_id: str,
              exp_name: str, search_ids: list[str], batch_size: int, progress: bool,
              store: claims.ClaimStore | None = None, poll_s: float = 5.0) -> list[CellResult]:
    """Train (or reuse) every cell and predict its test split in memory; results in grid order.

    Passes over the cells left: a finished cell is reused, a free (or expired) one claimed and
    trained, one that another live worker holds skipped for now. A warm cell's public model is a
    claimed target of its own, obtained first (public_target). Passes repeat until every cell is
    finished, waiting `poll_s` between them while only other workers' cells (or public models)
    are left. Without `store` (one worker) the first pass does everything.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n = len(cells)
    results: dict[int, CellResult] = {}
    targets: dict[int, Target] = {}
    corpus_of = public_corpora()
    left = list(range(n))
    last_note, last_note_at = None, 0.0
    skipped: set[tuple[int, str, str]] = set()  # (cell, claim key, holder) already logged as skipped
    bar = tqdm(total=n, desc="sweep", unit="cell", disable=not progress)
    try:
        while left:
            waiting: dict[int, Held] = {}
            for i in left:
                t_cell = time.perf_counter()
                cell = cells[i]
                table = tables(cell.seed)
                label = f"[{i + 1}/{n}] {cell.name}"
                if i not in targets:  # the run keys hash the data: once per cell
                    cfg = _cell_cfg(base, cell, parent_id, exp_name)
                    # without claims the warm cell's own training finds or trains the public model
                    claimed = cell.kind == WARM_KIND and store is not None
                    needs = public_target(label, cfg, table, corpus_of(cell, cfg, table)) if claimed else None
                    targets[i] = cell_target(label, cfg, cell_keys(base, cell, cfg, table), table, client,
                                             search_ids, needs)
                bar.set_postfix_str(cell.name)
                got = obtain(targets[i], store, t0)
                if isinstance(got, Held):
                    holder = (i, got.claim.cell_key, got.claim.worker)
                    if holder not in skipped:
                        log.info("sweep: %s: %s: skipped for now", got.target.name,
                                 got.claim.describe(float("inf")))
                        skipped.add(holder)
                    waiting[i] = got
                    continue
                run_id, reused = got
                if reused:
                    log.info("sweep: %s: reusing finished run %s (same config and data)", label, run_id)
                r, f1 = _cell_result(cell, run_id, reused, table, client, uri, batch_size, t_cell)
                results[i] = r
                done_trained = sum(not x.reused for x in results.values())
                log.info("sweep: %s: done in %s (%s run %s), test F1 weighted %.3f; %d trained, %d reused, "
                         "elapsed %s%s", label, hms(r.seconds), "reused" if reused else "trained", run_id, f1,
                         done_trained, len(results) - done_trained, hms(time.perf_counter() - t0),
                         _peak_note(r.peak_resident_gb) + _memory_note())
                bar.update(1)
            progressed = len(waiting) < len(left)
            left = list(waiting)
            if not left or progressed:
                continue
            # only cells that other live workers hold are left: wait for them to finish or expire
            note = _held_note(waiting, cells, targets)
            bar.set_postfix_str(f"waiting for {len(waiting)} cells of other workers")
            held_by = {(i, h.claim.worker) for i, h in waiting.items()}
            if held_by != last_note or time.perf_counter() - last_note_at >= WAIT_LOG_S:
                log.info("sweep: %d of %d cells done; waiting for %d held by other workers: %s (elapsed %s)",
                         len(results), n, len(waiting), note, hms(time.perf_counter() - t0))
                last_note, last_note_at = held_by, time.perf_counter()
            time.sleep(poll_s)
    finally:
        bar.close()
    return [results[i] for i in range(n)]


def run_baselines(cfg: DictConfig, seeds: list[int], tables, progress: bool) -> dict[tuple, list]:
    """(method, "", ε) → [(SeedPredictions, ε spent or None)] for the classical baselines."""
    from tqdm.auto import tqdm

    s = cfg.sweep
    wanted = list(s.baselines or [])
    jobs = [("tfidf_lr", None, seed) for seed in seeds if "tfidf_lr" in wanted]
    jobs += [("dp_lr", eps, seed) for seed in seeds for eps in check_epsilons(s.epsilons) if "dp_lr" in wanted]
    out: dict[tuple, list] = defaultdict(list)
    thresholds = str(cfg.trainer.thresholds)
    for method, eps, seed in tqdm(jobs, desc="baselines", unit="fit", disable=not progress or not jobs):
        t0 = time.perf_counter()
        table = tables(seed)
        if method == "tfidf_lr":
            res = baselines.tfidf_logreg(table, thresholds=thresholds, **OmegaConf.to_container(s.tfidf_lr))
        else:
            res = baselines.dp_logreg(table, eps, thresholds=thresholds, **OmegaConf.to_container(s.dp_lr))
        test = _test_part(table)
        preds = stats.SeedPredictions(seed, stats.test_key(test.ids), binarize(res.probs_test, res.thresholds),
                                      test.labels)
        out[(method, "", eps)].append((preds, res.epsilon_spent))
        log.info("sweep: baseline %s%s seed %d: test F1 weighted %.3f (%.1f s)", method,
                 "" if eps is None else f" ε={eps:g}", seed,
                 float(stats.f1_scores(preds.preds, preds.labels)["f1_weighted"]), time.perf_counter() - t0)
    return out


def public_model_results(cells: list[Cell], base: list[str], tables, uri: str, parent_id: str, exp_name: str,
                         batch_size: int) -> dict[tuple, list]:
    """(public, model, 0) → [(SeedPredictions, run id)]: per model and seed of the public-start
    cells, the public model they started from, alone, on the same test reports. Nothing of it
    saw a private report (its thresholds come from the public validation split): ε = 0."""
    from radpriv.model.public_start import load_public_corpus
    from radpriv.train import find_or_train_public_model

    firsts: dict[tuple, Cell] = {}
    for c in cells:
        if c.kind == WARM_KIND:
            firsts.setdefault((c.model, c.seed), c)
    out: dict[tuple, list] = defaultdict(list)
    for (model, seed), cell in firsts.items():
        table = tables(seed)
        cfg = _cell_cfg(base, cell, parent_id, exp_name)
        run_id = find_or_train_public_model(cfg, load_public_corpus(cfg, table))  # the warm cells trained it
        test = _test_part(table)
        # by name: a public corpus of a related schema may lack some of this data's labels
        probs, thresholds = logged_model_predictions(run_id, uri, test, batch_size, by_name=True)
        preds = stats.SeedPredictions(seed, stats.test_key(test.ids), binarize(probs, thresholds), test.labels)
        out[(PUBLIC_KIND, model, 0.0)].append((preds, run_id))
        log.info("sweep: public model alone, %s seed %d (run %s): test F1 weighted %.3f", model, seed, run_id,
                 float(stats.f1_scores(preds.preds, preds.labels)["f1_weighted"]))
    return out


#: what each baseline's ε protects: DP-LR's rows are reports, whatever patients the data name
BASELINE_UNITS = {"dp_lr": "report", "tfidf_lr": None}


def row_unit(units: list[str | None], name: str) -> str | None:
    """One row's privacy unit (its seeds' runs agree unless runs from another config were reused)."""
    named = sorted({u for u in units if u})
    if len(named) > 1:
        log.warning("sweep: the runs of %s used different privacy units %s", name, named)
    return "+".join(named) or None


def build_rows(results: list[CellResult], baseline_out: dict, boot: stats.Bootstrap, alpha: float,
               public_out: dict | None = None):
    """The table's rows, the per-label F1 of the neural cells, and the paired comparisons."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in results:
        groups[r.cell.group].append((r.predictions, r.epsilon_spent, r.run_id, r.unit))
    for key, items in baseline_out.items():
        groups[key] += [(p, e, None, BASELINE_UNITS[key[0]]) for p, e in items]
    for key, items in (public_out or {}).items():
        groups[key] += [(p, 0.0, run_id, None) for p, run_id in items]
    rows, per_label = [], {}
    for (method, model, eps), items in groups.items():
        seeds = [p for p, _, _, _ in items]
        spent = [e for _, e, _, _ in items if e is not None]
        row = {"method": method, "model": model, "epsilon": eps, **stats.summarize(boot, seeds, alpha),
               "epsilon_spent": float(np.mean(spent)) if spent else None,
               "privacy.unit": row_unit([u for _, _, _, u in items], f"{method} {model} ε={eps}"),
               "run_ids": ";".join(r for _, _, r, _ in items if r)}
        if method in (DP_KIND, WARM_KIND) and ("lora", model, None) in groups:
            test = stats.paired_test(boot, seeds, [p for p, _, _, _ in groups[("lora", model, None)]],
                                     "f1_weighted", alpha)
            if test is not None:
                row.update(diff_vs_lora=test["diff"], diff_ci_low=test["diff_ci_low"],
                           diff_ci_high=test["diff_ci_high"], p_vs_lora=test["p"])
        if method in (DP_KIND, WARM_KIND, PUBLIC_KIND, "lora", "full"):
            per_label[(method, model, eps)] = stats.per_label_mean(seeds)
        rows.append(row)
    tested = [r for r in rows if r.get("p_vs_lora") is not None]
    for r, p in zip(tested, stats.holm([r["p_vs_lora"] for r in tested], alpha)):
        r["p_holm"] = p
    return report.sort_rows(rows), per_label


def run_sweep(cfg: DictConfig, overrides: list[str]) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from radpriv.tracking.mlflow_run import experiment_name, flatten, tracking_uri
    from radpriv.train import configure_threads

    t0 = time.perf_counter()
    _check_settings(cfg)
    cells = build_grid(cfg.sweep)
    base = training_overrides(overrides)
    models = list(dict.fromkeys(c.model for c in cells))
    compose([*base, *cells[0].overrides()])  # a bad base override fails here, before any model loads
    ok, skipped = available_models(model_sources(models, base), "sweep")
    cells = [c for c in cells if c.model in ok]
    seeds = list(dict.fromkeys(c.seed for c in cells))
    configure_threads(cfg.trainer.num_threads)

    cache: dict[int, ReportTable] = {}

    def tables(seed: int) -> ReportTable:
        if seed not in cache:
            cache[seed] = load_table(cfg.data, seed)
        return cache[seed]

    for seed in seeds:  # data errors before the parent run is opened
        tables(seed)
    uri = tracking_uri(cfg.tracking.uri)
    client = MlflowClient(uri)
    if cfg.sweep.plan_only:
        return plan_sweep(cfg, cells, base, tables, client, uri, skipped, mlflow_run_id())
    progress = bool(cfg.sweep.progress_bar)
    name = f"sweep {cfg.data.name} {'+'.join(ok)}"
    with open_parent_run(client, experiment_name(cfg), name,
                         {SWEEP_TAG: "true", "radpriv.dataset": str(cfg.data.name)}) as parent:
        parent_id, exp_id, exp_name = parent.run_id, parent.experiment_id, parent.experiment_name
        search_ids = _search_ids(client, cfg, exp_id)
        log.info("sweep: %d cells (%s × %d ε%s × %d seeds + %s), parent run %s in %s%s", len(cells),
                 "+".join(ok), len(cfg.sweep.epsilons),
                 " × cold/public start" if cfg.sweep.init_from else "",
                 len(seeds), "/".join(cfg.sweep.nonprivate or []) or "no non-private",
                 parent_id, exp_name, f"; skipped {sorted(skipped)}" if skipped else "")
        params = {**flatten({"sweep": OmegaConf.to_container(cfg.sweep, resolve=True)}),
                  "sweep.base_overrides": " ".join(base)[:6000] or "(none)",
                  "sweep.skipped_models": ",".join(sorted(skipped)) or "(none)"}
        client.log_batch(parent_id, params=[Param(k, v) for k, v in params.items()])
        store = claims.open_store(cfg.sweep.claims, uri)
        try:
            results = run_cells(cells, base, tables, client, uri, parent_id, exp_name, search_ids,
                                int(cfg.trainer.eval_batch_size), progress, store, float(cfg.sweep.claims.poll_s))
        finally:
            if store is not None:
                store.close()
        public_out = public_model_results(cells, base, tables, uri, parent_id, exp_name,
                                          int(cfg.trainer.eval_batch_size))
        baseline_out = run_baselines(cfg, seeds, tables, progress)
        b = cfg.sweep.bootstrap
        boot = stats.Bootstrap(int(b.n_resamples), int(b.seed))
        rows, per_label = build_rows(results, baseline_out, boot, float(b.alpha), public_out)
        wall = time.perf_counter() - t0
        summary = _log_outputs(client, parent_id, cfg, rows, per_label, results, skipped, tables(seeds[0]),
                               wall, overrides)
    log.info("sweep: finished in %s: %d cells trained, %d reused", hms(wall),
             sum(not r.reused for r in results), sum(r.reused for r in results))
    return {"run_id": parent_id, "experiment": exp_name, **summary}


def _log_outputs(client, parent_id: str, cfg: DictConfig, rows, per_label, results: list[CellResult],
                 skipped: dict, table: ReportTable, wall: float, overrides: list[str]) -> dict:
    from radpriv.sweep import plots

    alpha = float(cfg.sweep.bootstrap.alpha)
    trained = sum(not r.reused for r in results)
    # a resumed sweep's wall time covers only what it did itself: the cells' own training times,
    # summed, are the compute the whole table cost, however many invocations it took
    train_times = [r.train_seconds for r in results if r.train_seconds is not None]
    train_time = sum(train_times) if train_times else None
    metrics = {"sweep/wall_time_s": wall, "sweep/cells": len(results), "sweep/cells_trained": trained,
               "sweep/cells_reused": len(results) - trained, "sweep/cells_train_time_s": train_time}
    for r in rows:
        name = report.row_name(r)
        metrics[f"{name}/f1_weighted"] = r["f1_weighted_mean"]
        if r.get("p_holm") is not None:
            metrics[f"{name}/p_holm"] = r["p_holm"]
    for k, v in metrics.items():
        if v is not None and math.isfinite(v):
            client.log_metric(parent_id, k, float(v))
    logged = f" ({len(train_times)} of {len(results)} cells logged one)" if len(train_times) < len(results) else ""
    header = (f"# radpriv sweep on {cfg.data.name}\n\n`radpriv sweep {' '.join(overrides)}` — "
              f"{len(results)} cells ({trained} trained, {len(results) - trained} reused), wall time "
              f"{hms(wall)}; the cells' own training times sum to "
              f"{hms(train_time) if train_time is not None else 'unknown'}"
              f"{logged}"
              ". Test metrics: mean ± sd over seeds, "
              f"{100 * (1 - alpha):g}% percentile bootstrap CI over test reports "
              f"({int(cfg.sweep.bootstrap.n_resamples)} redraws); Δ and p: paired bootstrap against "
              "non-private LoRA of the same model and seeds, Holm-adjusted over all ε × models. "
              "unit: what a DP row's ε protects (privacy.unit), a patient with all their reports or one report.")
    if any(r["method"] == PUBLIC_KIND for r in rows):
        header += (" Public start: the DP-LoRA cells again from the public model (finetune.init_from=public, "
                   "thresholds on the public validation split); public model alone: that model on the same "
                   "test reports, with no private data (ε = 0). Holm's adjustment covers the public-start "
                   "rows' tests too.")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "plots").mkdir()
        report.write_csv(rows, tmp / "results.csv")
        report.write_markdown(rows, tmp / "results.md", header, alpha)
        plots.privacy_utility_curve(rows, tmp / "plots" / "privacy_utility.png",
                                    f"{cfg.data.name}: privacy–utility (bands: {100 * (1 - alpha):g}% bootstrap CI)")
        plots.per_label_heatmap(per_label, table.label_names, tmp / "plots" / "per_label_f1_heatmap.png",
                                f"{cfg.data.name}: per-label test F1, mean over seeds")
        cells = [{"cell": r.cell.name, "run_id": r.run_id, "reused": r.reused, "seconds": round(r.seconds, 1),
                  "train_seconds": r.train_seconds, "peak_resident_gb": r.peak_resident_gb} for r in results]
        rows_json = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                     for r in rows]  # strict JSON: no NaN (an sd over one seed)
        (tmp / "sweep.json").write_text(json.dumps(
            {"cells": cells, "skipped_models": skipped, "rows": rows_json, "wall_time_s": wall,
             "cells_train_time_s": train_time}, indent=2))
        for f in ("results.csv", "results.md", "sweep.json"):
            client.log_artifact(parent_id, str(tmp / f))
        client.log_artifacts(parent_id, str(tmp / "plots"), "plots")
    return {"cells": len(results), "trained": trained, "reused": len(results) - trained,
            "skipped_models": skipped, "wall_time_s": round(wall, 1),
            "artifacts": ["results.csv", "results.md", "sweep.json", "plots/privacy_utility.png",
                          "plots/per_label_f1_heatmap.png"],
            "metrics": {k: v for k, v in metrics.items() if v is not None}}
