"""`radpriv sweep` (issue 6): grid, resumability, baselines' privacy budget, statistics, errors."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import pytest
import torch

from radpriv.cli import main
from radpriv.config import compose
from radpriv.errors import ConfigError, ModelError
from radpriv.model.metrics import classification_metrics
from radpriv.process_memory import malloc_trim, peak_resident_bytes
from radpriv.sweep import baselines, stats
from radpriv.sweep.grid import Cell, build_grid, cell_overrides, training_overrides
from radpriv.train import train
from tests.helpers.cli import TINY, error_lines, sweep_json
from tests.synthetic import PATIENT_CSV, synthetic_table, write_patient_csv

# the tiny training settings, less the model (the grid sets it per cell)
TRAIN = [*(o for o in TINY if not o.startswith("model=")), "trainer.max_epochs=1", "trainer.num_threads=1"]
SMALL = [*TRAIN, "sweep.bootstrap.n_resamples=200", "sweep.progress_bar=false"]
GRID = ["sweep.models=[tiny_bert,tiny_albert]", "sweep.epsilons=[1,10]", "sweep.seeds=[42]"]




def _training_runs(client) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, "tags.`radpriv.run_key` != ''")


# --------------------------------------------------------------------------------------------
# end to end: 2 models × 2 ε × 1 seed (+ LoRA and full per model), then the same command again
# --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_sweep_trains_the_grid_logs_table_and_plots_and_a_second_run_trains_nothing(
        tracking_uri, reports_csv, capsys, tmp_path, monkeypatch):
    csv_path, texts = reports_csv
    data = ["data=ct_rate_text", f"data.path={csv_path}"]
    # a standalone run of one cell's config, made before the sweep (ε spelled 1, not 1.0)
    assert main_train(capsys, [*TRAIN, *data, "model=tiny_bert", "privacy.epsilon=1"])
    client = mlflow.MlflowClient(tracking_uri)
    standalone = _training_runs(client)
    assert len(standalone) == 1

    out, err = sweep_json(capsys, [*SMALL, *data, *GRID])
    assert (out["cells"], out["trained"], out["reused"]) == (8, 7, 1)
    assert "the run logged" not in err, [ln for ln in err.splitlines() if "the run logged" in ln]
    progress = [ln for ln in err.splitlines() if ln.startswith("radpriv: sweep: [")]
    assert "reusing finished run" in err and "Traceback" not in err
    assert any("[1/8]" in m and "training" in m for m in progress)
    assert any("[8/8]" in m and "done in" in m and "elapsed" in m for m in progress)
    if malloc_trim() is not None:  # each cell's freed memory went back to the OS (process_memory)
        assert all("freed memory returned" in m for m in progress if "done in" in m)
    if peak_resident_bytes() is not None:  # every cell was trained here: each logged its peak
        assert all("its training peaked at" in m for m in progress if "done in" in m)
    parent = out["run_id"]
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 7  # the reused standalone run keeps its own (no) parent
    assert {c.data.tags["radpriv.sweep.cell"] for c in children} == {
        f"{m}-{w}-seed42" for m in ("tiny_bert", "tiny_albert") for w in ("lora", "full", "eps1", "eps10")
    } - {"tiny_bert-eps1-seed42"}
    arts = {a.path for a in client.list_artifacts(parent)} | {a.path for a in client.list_artifacts(parent, "plots")}
    assert {"results.csv", "results.md", "sweep.json", "plots/privacy_utility.png",
            "plots/per_label_f1_heatmap.png"} <= arts
    local = Path(mlflow.artifacts.download_artifacts(run_id=parent, dst_path=str(tmp_path / "art")))
    for png in ("privacy_utility.png", "per_label_f1_heatmap.png"):
        assert (local / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(io.StringIO((local / "results.csv").read_text())))
    methods = [(r["method"], r["model"], r["epsilon"]) for r in rows]
    assert len(rows) == 11 and len(set(methods)) == 11  # 2 × (lora, full, 2 ε) + tfidf + 2 dp_lr
    by = {m: r for m, r in zip(methods, rows)}
    for model in ("tiny_bert", "tiny_albert"):
        for eps in ("1", "10"):
            row = by[("dp_lora", model, eps)]
            assert 0 <= float(row["p_vs_lora"]) <= float(row["p_holm"]) <= 1
            assert (float(row["f1_weighted_ci_low"]) <= float(row["f1_weighted_mean"])
                    <= float(row["f1_weighted_ci_high"]))
            assert 0.99 * float(eps) <= float(row["epsilon_spent"]) <= float(eps)
            # one seed: the table's mean is the run's own logged test F1, recomputed from its model
            run = client.get_run(row["run_ids"])
            assert float(row["f1_weighted_mean"]) == pytest.approx(run.data.metrics["test/f1_weighted"], abs=1e-4)
    assert by[("dp_lora", "tiny_bert", "1")]["run_ids"] == standalone[0].info.run_id
    assert float(by[("dp_lr", "", "10")]["epsilon_spent"]) == pytest.approx(10.0)
    assert "| DP-LoRA | tiny_albert | 10 |" in (local / "results.md").read_text()
    # the unit each DP row's runs used (ct_rate_text names no patient: reports); none without DP
    assert {m: r["privacy.unit"] for m, r in by.items()} == {
        m: "report" if m[0] in ("dp_lora", "dp_lr") else "—" for m in by}
    assert "| ε spent | unit |" in (local / "results.md").read_text()
    # nothing of a report's text in what the sweep wrote
    written = "\n".join(p.read_text(errors="ignore") for p in local.rglob("*") if p.suffix in (".csv", ".md", ".json"))
    assert "fabricated marker sentence" in texts[0] and "fabricated marker" not in written

    # the same command again, inside a run `mlflow run` opened: nothing is trained
    n_before = len(_training_runs(client))
    outer = client.create_run(client.get_run(parent).info.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    again, _ = sweep_json(capsys, [*SMALL, *data, *GRID])
    assert (again["trained"], again["reused"], again["run_id"]) == (0, 8, outer)
    assert len(_training_runs(client)) == n_before
    # the training time of the table is the cells' own, whichever invocation trained them
    assert out["metrics"]["sweep/cells_train_time_s"] > 0
    assert again["metrics"]["sweep/cells_train_time_s"] == pytest.approx(out["metrics"]["sweep/cells_train_time_s"])
    assert again["metrics"]["sweep/wall_time_s"] < out["metrics"]["sweep/wall_time_s"]
    assert again["metrics"]["dp_lora/tiny_albert/eps10/f1_weighted"] == pytest.approx(
        out["metrics"]["dp_lora/tiny_albert/eps10/f1_weighted"])


@pytest.mark.integration
def test_a_sweep_with_no_epsilon_trains_only_its_nonprivate_cell(tracking_uri, reports_csv, capsys, tmp_path):
    """Part of a grid (docs/COMMANDS.md's parallel recipe): the full fine-tuning cell alone, no ε."""
    csv_path, _ = reports_csv
    grid = ["sweep.models=[tiny_bert]", "sweep.epsilons=[]", "sweep.nonprivate=[full]", "sweep.seeds=[42]",
            "sweep.baselines=[tfidf_lr]"]
    out, err = sweep_json(capsys, [*SMALL, "data=ct_rate_text", f"data.path={csv_path}", *grid])
    assert (out["cells"], out["trained"]) == (1, 1) and "Traceback" not in err
    local = Path(mlflow.artifacts.download_artifacts(run_id=out["run_id"], dst_path=str(tmp_path / "art")))
    rows = list(csv.DictReader(io.StringIO((local / "results.csv").read_text())))
    assert sorted(r["method"] for r in rows) == ["full", "tfidf_lr"]
    assert (local / "plots" / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_a_sweep_on_patients_says_each_rows_unit(tracking_uri, capsys, tmp_path):
    """Data that name patients: the DP-LoRA cell protects patients (its privacy.json), DP-LR reports."""
    path = tmp_path / "patients.csv"
    write_patient_csv(path, n_patients=40, seed=1)
    grid = ["sweep.models=[tiny_bert]", "sweep.epsilons=[4]", "sweep.nonprivate=[lora]", "sweep.seeds=[42]",
            "sweep.baselines=[dp_lr]"]
    out, err = sweep_json(capsys, [*SMALL, *PATIENT_CSV, f"data.path={path}", "privacy.max_reports_per_patient=4",
                              *grid])
    assert (out["cells"], out["trained"]) == (2, 2) and "Traceback" not in err
    local = Path(mlflow.artifacts.download_artifacts(run_id=out["run_id"], dst_path=str(tmp_path / "art")))
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO((local / "results.csv").read_text()))}
    assert {m: r["privacy.unit"] for m, r in rows.items()} == {"dp_lora": "patient", "lora": "—", "dp_lr": "report"}
    facts = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=rows["dp_lora"]["run_ids"], artifact_path="privacy.json", dst_path=str(tmp_path / "p"))).read_text())
    assert facts["unit"] == "patient"
    md = (local / "results.md").read_text()
    assert "| DP-LoRA | tiny_bert | 4 |" in md and "| patient |" in md and "| report |" in md
    assert json.loads((local / "sweep.json").read_text())["rows"][0]["privacy.unit"] is None  # LoRA first


@pytest.mark.integration
def test_a_runs_unit_comes_from_its_tag_else_its_privacy_json(tracking_uri, tmp_path):
    """Runs logged before the `radpriv.unit` tag existed still name their unit in privacy.json."""
    from radpriv.sweep.run import row_unit, run_unit

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("units")

    def logged(tags: dict, privacy: dict | None):
        run_id = client.create_run(exp, tags=tags).info.run_id
        if privacy is not None:
            facts = tmp_path / run_id / "privacy.json"
            facts.parent.mkdir()
            facts.write_text(json.dumps(privacy))
            client.log_artifact(run_id, str(facts))
        return client.get_run(run_id)

    assert run_unit(client, logged({"radpriv.unit": "patient"}, None)) == "patient"
    assert run_unit(client, logged({}, {"private": True, "unit": "report"})) == "report"
    assert run_unit(client, logged({}, {"private": False, "unit": "none"})) is None
    assert run_unit(client, logged({}, None)) is None
    assert row_unit(["patient", "patient"], "x") == "patient" and row_unit([None], "x") is None
    assert row_unit(["report", "patient"], "x") == "patient+report"  # never one unit for mixed runs


@pytest.mark.integration
def test_cells_are_found_whatever_the_threads_and_progress_bar_but_only_with_the_same_secret(
        tracking_uri, reports_csv, capsys, tmp_path):
    """Workers run with one thread and no bar; the command that builds the table need not. The run
    key is keyed with the private folder's secret: a worker with another secret finds nothing."""
    from radpriv.data.sources import load_table
    from radpriv.sweep.run import _cell_cfg, cell_keys
    from radpriv.tracking.resume import RUN_KEY_TAG

    csv_path, _ = reports_csv
    overrides = [*SMALL, "data=ct_rate_text", f"data.path={csv_path}", "sweep.models=[tiny_bert]",
                 "sweep.epsilons=[]", "sweep.nonprivate=[lora]", "sweep.seeds=[42]", "sweep.baselines=[]"]
    first, _ = sweep_json(capsys, overrides)
    assert first["trained"] == 1
    again, _ = sweep_json(capsys, [*overrides, "trainer.num_threads=2", "trainer.progress_bar=true",
                              "trainer.log_every_n_steps=1"])
    assert (again["trained"], again["reused"]) == (0, 1)

    client = mlflow.MlflowClient(tracking_uri)
    (run,) = _training_runs(client)
    cfg = compose(["+sweep=default", *overrides])
    (cell,) = build_grid(cfg.sweep)
    base = training_overrides(overrides)
    keys = cell_keys(base, cell, _cell_cfg(base, cell, "p", "e"), load_table(cfg.data, 42))
    assert keys == [run.data.tags[RUN_KEY_TAG]]
    other, _ = sweep_json(capsys, [*overrides, f"tracking.private_dir={tmp_path / 'another-secret'}"])
    assert (other["trained"], other["reused"]) == (1, 0)


class _StopAtSecondEpoch(L.Callback):
    """A worker killed after its first epoch: the epoch-end checkpoint of epoch 1 exists."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("stopped after epoch 1")


@pytest.mark.integration
def test_plan_only_says_what_is_finished_started_and_left_and_trains_nothing(tracking_uri, reports_csv, capsys):
    csv_path, _ = reports_csv
    base = [*(o for o in SMALL if o != "trainer.max_epochs=1"), "trainer.max_epochs=2", "data=ct_rate_text",
            f"data.path={csv_path}", "sweep.baselines=[]"]
    grid = ["sweep.models=[tiny_bert]", "sweep.epsilons=[1]", "sweep.nonprivate=[lora]", "sweep.seeds=[42]"]
    client = mlflow.MlflowClient(tracking_uri)

    plan, err = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
    assert (plan["finished"], plan["started"], plan["to_train"]) == (0, 0, 2)
    assert plan["estimated_left_s"] is None and plan["cells_without_estimate"] == 2
    assert "no estimate yet for 2" in err
    assert client.search_experiments(filter_string="name != 'Default'") == []  # nothing opened

    # the ε = 1 cell, as a sweep worker would train it, stopped after its first epoch of two
    train_overrides = [o for o in base if not o.startswith("sweep.")]
    cell_cfg = compose(cell_overrides(train_overrides, Cell("tiny_bert", "dp_lora", 1.0, 42)))
    with pytest.raises(RuntimeError, match="stopped after epoch 1"):
        train(cell_cfg, extra_callbacks=[_StopAtSecondEpoch()])
    (started_run,) = _training_runs(client)

    plan, err = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
    states = {s["cell"]: s for s in plan["states"]}
    assert states["tiny_bert-eps1-seed42"] == {"cell": "tiny_bert-eps1-seed42", "status": "started",
                                               "run_id": started_run.info.run_id, "epochs_done": 1}
    assert states["tiny_bert-lora-seed42"]["status"] == "to train"
    assert "1 of 2 epochs in its checkpoint" in err
    assert len(_training_runs(client)) == 1

    # the sweep resumes the started cell, trains the other; then nothing is left
    out, err = sweep_json(capsys, [*base, *grid])
    assert out["trained"] == 2
    finished = client.get_run(started_run.info.run_id)
    assert finished.data.tags["radpriv.complete"] == "true"
    # begun outside any sweep, finished by this one: it nests there now (MLflow refuses changed
    # params, so the first start's tracking.* params stay, and the log says so)
    assert finished.data.tags["mlflow.parentRunId"] == out["run_id"]
    assert finished.data.tags["radpriv.sweep.cell"] == "tiny_bert-eps1-seed42"
    assert "keeps its first start's" in err and "tracking.parent_run_id" in err
    n_runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    plan, err = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
    assert (plan["finished"], plan["to_train"], plan["estimated_left_s"]) == (2, 0, 0)
    assert "nothing left to train" in err
    # each finished cell logged its training's peak memory; the plan gives the worst per kind
    peaks = {s["cell"]: client.get_run(s["run_id"]).data.metrics["memory/peak_resident_gb"] for s in plan["states"]}
    assert all(0.05 < p < 64 for p in peaks.values()), peaks
    assert plan["peak_resident_gb"] == {"tiny_bert " + kind: pytest.approx(peaks[f"tiny_bert-{cell}-seed42"], abs=0.01)
                                        for kind, cell in (("dp_lora", "eps1"), ("lora", "lora"))}
    assert "peak resident memory of one cell" in err and "workers running at once need the sum" in err
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == n_runs

    # a second seed: each of its cells costs what the finished cell of its kind took, all its
    # invocations counted (the eps1 cell's first, stopped after epoch 1, is in its checkpoint)
    wider, err = sweep_json(capsys, [*base, *grid[:-1], "sweep.seeds=[42,43]", "sweep.plan_only=true"])
    took = {s["cell"]: client.get_run(s["run_id"]).data.metrics for s in wider["states"] if s["status"] == "finished"}
    assert took["tiny_bert-eps1-seed42"]["time/earlier_invocations_s"] > 0
    assert took["tiny_bert-lora-seed42"]["time/earlier_invocations_s"] == 0
    took = {cell: m["time/cumulative_s"] for cell, m in took.items()}
    assert (wider["finished"], wider["to_train"]) == (2, 2)
    assert wider["estimated_left_s"] == pytest.approx(sum(took.values()), abs=0.2)
    assert "of one worker left" in err


def test_plan_estimates_each_cell_from_the_finished_cells_of_its_model_and_kind():
    from radpriv.sweep.plan import FINISHED, STARTED, TO_TRAIN, CellState, estimate_left, peak_memory_by_kind

    def cell(kind, seed, eps=None):
        return Cell("minilm", kind, eps, seed)

    states = [CellState(cell("lora", 42), FINISHED, "a", 100.0), CellState(cell("lora", 43), FINISHED, "b", 300.0),
              CellState(cell("dp_lora", 42, 1.0), FINISHED, "c", 50.0),
              CellState(cell("lora", 44), TO_TRAIN, max_epochs=8),  # median 200
              CellState(cell("dp_lora", 43, 0.1), STARTED, "d", epochs_done=6, max_epochs=8),  # a quarter of 50
              CellState(cell("full", 42), TO_TRAIN, max_epochs=8)]  # no finished full cell: no estimate
    assert estimate_left(states) == (200.0 + 12.5, 2, ["minilm full"])
    assert peak_memory_by_kind(states) == {}  # none logged it (runs from before 2026-11-30)
    peaks = [CellState(cell("full", 42), FINISHED, "f", 4000.0, peak_resident_gb=12.6),
             CellState(cell("full", 43), FINISHED, "g", 4100.0, peak_resident_gb=11.9),
             CellState(cell("lora", 45), FINISHED, "h", 150.0, peak_resident_gb=3.9), *states]
    assert peak_memory_by_kind(peaks) == {"minilm full": 12.6, "minilm lora": 3.9}  # the worst, largest first
    done = CellState(cell("full", 42), STARTED, "e", epochs_done=8, max_epochs=8, checkpoint_age_s=5)
    assert "all 8 epochs in its checkpoint" in done.describe() and "0:00:05 ago" in done.describe()


def main_train(capsys, overrides) -> bool:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *overrides])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err[-3000:]
    return True


# --------------------------------------------------------------------------------------------
# statistics against a direct computation
# --------------------------------------------------------------------------------------------


def _known_example(seed: int = 3, n: int = 40, labels: int = 4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.35).astype(np.float32)
    y[rng.random((n, labels)) < 0.05] = -1  # unknown entries count nowhere
    good = np.where(rng.random((n, labels)) < 0.85, y == 1, y != 1).astype(np.int8)
    poor = np.where(rng.random((n, labels)) < 0.6, y == 1, y != 1).astype(np.int8)
    return y, good, poor


def _tm(preds: np.ndarray, labels: np.ndarray) -> dict:
    """radpriv's torchmetrics path on 0/1 predictions (threshold 0.5)."""
    return classification_metrics(torch.as_tensor(preds, dtype=torch.float32), torch.as_tensor(labels),
                                  [0.5] * labels.shape[1], [f"l{j}" for j in range(labels.shape[1])])


def test_f1_matches_radpriv_metrics_including_unknown_labels():
    y, good, _ = _known_example()
    ours, ref = stats.f1_scores(good, y), _tm(good, y)
    for metric in stats.METRICS:
        assert float(ours[metric]) == pytest.approx(ref[metric], abs=1e-6)
    assert ours["per_label"].tolist() == pytest.approx([ref[f"f1/l{j}"] for j in range(4)], abs=1e-6)
    # a hand-checked case: label 0 has tp=1, fp=1, fn=1 → 0.5; label 1 nothing; label 2 masked
    p, t = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 1]]), np.array([[1, 0, 0], [1, 0, 0], [0, 0, -1]])
    got = stats.f1_scores(p, t)
    assert (float(got["f1_weighted"]), float(got["f1_micro"]), float(got["f1_macro"])) == pytest.approx(
        (0.5, 0.5, 0.5 / 3))


def test_bootstrap_ci_and_paired_test_agree_with_a_direct_computation():
    y, good, poor = _known_example()
    key = stats.test_key([f"r{i}" for i in range(len(y))])
    a = [stats.SeedPredictions(1, key, good, y)]
    b = [stats.SeedPredictions(1, key, poor, y)]
    boot = stats.Bootstrap(200, seed=7)
    idx = np.random.default_rng([7, int(key[:15], 16)]).integers(0, len(y), size=(200, len(y)))
    assert (boot.indices(key, len(y)) == idx).all()  # a plain uniform redraw of the reports

    # direct: redraw the rows, score each replicate with torchmetrics, take percentiles
    direct_a = np.array([_tm(good[i], y[i])["f1_weighted"] for i in idx])
    direct_b = np.array([_tm(poor[i], y[i])["f1_weighted"] for i in idx])
    assert boot.replicates(a, "f1_weighted") == pytest.approx(direct_a, abs=1e-6)
    summary = stats.summarize(boot, a)
    assert summary["f1_weighted_mean"] == pytest.approx(_tm(good, y)["f1_weighted"], abs=1e-6)
    assert (summary["f1_weighted_ci_low"], summary["f1_weighted_ci_high"]) == pytest.approx(
        tuple(np.quantile(direct_a, [0.025, 0.975])), abs=1e-6)

    d = _tm(good, y)["f1_weighted"] - _tm(poor, y)["f1_weighted"]
    reps = direct_a - direct_b
    p_direct = (1 + sum(abs(r - d) >= abs(d) for r in reps)) / (len(reps) + 1)
    test = stats.paired_test(boot, a, b)
    assert test["diff"] == pytest.approx(d, abs=1e-6)
    assert test["p"] == pytest.approx(p_direct)
    assert (test["diff_ci_low"], test["diff_ci_high"]) == pytest.approx(
        tuple(np.quantile(reps, [0.025, 0.975])), abs=1e-6)
    assert d > 0.1 and test["p"] < 0.05  # 85% vs 60% correct entries: a real difference
    same = stats.paired_test(boot, a, a)
    assert same["diff"] == 0 and same["p"] == 1.0
    # a cell on other test reports has no pair
    assert stats.paired_test(boot, a, [stats.SeedPredictions(1, "0" * 16, poor, y)]) is None


def test_seeds_on_one_test_split_share_their_redraws_and_holm_is_holm():
    y, good, poor = _known_example()
    key = stats.test_key(["x"])
    boot = stats.Bootstrap(50, seed=0)
    two = [stats.SeedPredictions(1, key, good, y), stats.SeedPredictions(2, key, poor, y)]
    idx = boot.indices(key, len(y))
    direct = [(_tm(good[i], y[i])["f1_macro"] + _tm(poor[i], y[i])["f1_macro"]) / 2 for i in idx]
    assert boot.replicates(two, "f1_macro") == pytest.approx(direct, abs=1e-6)
    mean, sd = stats.point(two, "f1_macro")
    vals = [_tm(good, y)["f1_macro"], _tm(poor, y)["f1_macro"]]
    assert (mean, sd) == pytest.approx((np.mean(vals), np.std(vals, ddof=1)), abs=1e-6)
    # Holm by hand: sorted p 0.01, 0.03, 0.04 → 3·0.01, max(2·0.03, ·), max(1·0.04, ·)
    assert stats.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert stats.holm([]) == []


# --------------------------------------------------------------------------------------------
# baselines: the DP one spends exactly ε, split over the labels, and never fits on the data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon, n_labels", [(0.01, 18), (0.1, 14), (1.0, 3), (10.0, 7)])
def test_per_label_epsilons_compose_to_epsilon(epsilon, n_labels):
    shares, spent = baselines.per_label_epsilons(epsilon, n_labels)
    assert len(shares) == n_labels and sum(shares) <= epsilon * (1 + 1e-12)
    assert sum(shares) == pytest.approx(epsilon, rel=1e-9) and spent == pytest.approx(epsilon, rel=1e-12)
    assert max(shares) - min(shares) < 1e-12 * epsilon * n_labels


def test_dp_logreg_gives_each_label_its_share_and_is_noisy(monkeypatch):
    table = synthetic_table(n=120, seed=1)
    real = baselines._diffprivlib()
    seen = []

    def recording():
        accountant, path, clip = real

        def path_spy(x, y, epsilon, data_norm, **kw):
            seen.append((epsilon, data_norm, float(np.linalg.norm(x, axis=1).max())))
            return path(x, y, epsilon=epsilon, data_norm=data_norm, **kw)
        return accountant, path_spy, clip

    monkeypatch.setattr(baselines, "_diffprivlib", recording)
    out = baselines.dp_logreg(table, 0.3, n_features=64)
    assert len(seen) == table.num_labels
    assert sum(e for e, _, _ in seen) == pytest.approx(0.3, rel=1e-9) and out.epsilon_spent == pytest.approx(0.3)
    assert all(dn == 1.0 and norm <= 1.0 + 1e-9 for _, dn, norm in seen)  # rows bounded by data_norm
    # with a huge budget the same code is plain logistic regression: it learns the findings
    loose = baselines.dp_logreg(table, 1e6, n_features=64, C=100.0, max_iter=500)
    test = table.subset("test")
    assert float(stats.f1_scores((loose.probs_test >= loose.thresholds).astype(int), test.labels)["f1_weighted"]) > 0.8


def test_dp_logreg_noise_is_fresh_at_every_call_whatever_the_seeds(monkeypatch):
    """Identical inputs and identically seeded global generators: the noise still differs, since
    it comes from OS entropy (the sweep's seed is published); the non-private TF-IDF baseline,
    which has no noise, stays deterministic."""
    import random

    table = synthetic_table(n=120, seed=1)
    states = []
    real = baselines.noise_state

    def recording():
        states.append(real())
        return states[-1]

    monkeypatch.setattr(baselines, "noise_state", recording)
    fits = []
    for _ in range(2):
        np.random.seed(0), random.seed(0)
        fits.append(baselines.dp_logreg(table, 0.3, n_features=64))
    assert len(states) == 2 and all(isinstance(s, np.random.RandomState) for s in states)
    assert not np.allclose(fits[0].probs_test, fits[1].probs_test)
    a, b = baselines.tfidf_logreg(table, min_df=1), baselines.tfidf_logreg(table, min_df=1)
    assert np.array_equal(a.probs_test, b.probs_test) and np.array_equal(a.thresholds, b.thresholds)


def test_dp_logreg_takes_no_seed():
    import inspect

    assert "seed" not in inspect.signature(baselines.dp_logreg).parameters


def test_hashed_features_of_a_report_do_not_depend_on_the_other_reports():
    texts = ["heart enlarged. lungs are clear.", "tube in place.", "fluid at the base. exam limited."]
    alone = baselines.hashing_features(texts[:1], 256)
    together = baselines.hashing_features(texts, 256)
    assert np.array_equal(alone[0], together[0])
    assert np.linalg.norm(together, axis=1) == pytest.approx(1.0)


def test_tfidf_baseline_learns_the_synthetic_findings():
    table = synthetic_table(n=120, seed=2)
    out = baselines.tfidf_logreg(table, min_df=1)
    test = table.subset("test")
    assert float(stats.f1_scores((out.probs_test >= out.thresholds).astype(int), test.labels)["f1_weighted"]) > 0.9


# --------------------------------------------------------------------------------------------
# the grid, and bad input: one line, exit 2, no MLflow run
# --------------------------------------------------------------------------------------------


def test_default_grid_and_cell_overrides():
    from radpriv.config import compose

    cfg = compose(["+sweep=default"])
    cells = build_grid(cfg.sweep)
    assert len(cells) == 1 * 3 * (4 + 2)
    assert cells[0] == Cell("minilm", "lora", None, 42) and cells[1] == Cell("minilm", "full", None, 42)
    assert [c.epsilon for c in cells[2:6]] == [0.01, 0.1, 1.0, 10.0]
    assert cells[4].overrides() == ["model=minilm", "seed=42", "privacy.epsilon=1.0"]
    assert cells[4].epsilon_spellings() == ["1.0", "1"] and cells[2].epsilon_spellings() == ["0.01"]
    base = training_overrides(["data=ct_rate_text", "sweep.seeds=[1]", "+sweep.x=1", "finetune.lr=0.02"])
    assert base == ["data=ct_rate_text", "finetune.lr=0.02"]
    assert cell_overrides(base, cells[1]) == ["data=ct_rate_text", "model=minilm", "seed=42", "finetune=full",
                                              "privacy.epsilon=null"]
    assert "finetune.lr=0.02" in cell_overrides(base, cells[0])


def test_init_from_public_adds_a_warm_twin_per_dp_cell_and_leaves_the_cold_cells_alone():
    from radpriv.config import compose

    cold = build_grid(compose(["+sweep=default"]).sweep)
    both = build_grid(compose(["+sweep=default", "sweep.init_from=public"]).sweep)
    warm = [c for c in both if c not in cold]
    assert [c for c in both if c in cold] == cold
    assert [(c.model, c.epsilon, c.seed) for c in warm] == [(c.model, c.epsilon, c.seed) for c in cold
                                                             if c.kind == "dp_lora"]
    assert warm[0].name == "minilm-eps0.01-public-seed42" and warm[0].group == ("dp_lora_public", "minilm", 0.01)
    assert warm[0].overrides() == ["model=minilm", "seed=42", "finetune.init_from=public", "privacy.epsilon=0.01"]


def test_an_unavailable_model_is_skipped_in_one_line(monkeypatch, caplog):
    from radpriv.model import encoder
    from radpriv.model.encoder import available_models

    real = encoder.load_encoder

    def offline(spec, seed=0):
        if spec.name == "bert_small":
            raise ModelError("model 'bert_small' is not in the local Hugging Face cache and huggingface.co "
                             "cannot be reached")
        return real(spec, seed)

    monkeypatch.setattr(encoder, "load_encoder", offline)
    with caplog.at_level(logging.WARNING, logger="radpriv"):
        ok, skipped = available_models({"bert_small": "bert_small", "tiny_bert": "tiny_bert"}, "sweep")
    assert ok == ["tiny_bert"] and list(skipped) == ["bert_small"]
    lines = [r.getMessage() for r in caplog.records if "bert_small" in r.getMessage()]
    assert len(lines) == 1 and "skipped" in lines[0] and "\n" not in lines[0]
    with pytest.raises(ModelError, match="none of"):
        available_models({"bert_small": "bert_small"}, "sweep")


@pytest.mark.parametrize("extra, message", [
    ("sweep.models=[]", "sweep.models is empty"),
    ("sweep.seeds=[]", "sweep.seeds is empty"),
    ("sweep.models=[tiny_bert,gpt9]", "unknown model 'gpt9'"),
    ("sweep.epsilons=[1,0]", "must be a finite number > 0"),
    ("sweep.epsilons=[-1]", "must be a finite number > 0"),
    ("sweep.epsilons=[abc]", "is not a number"),
    ("sweep.epsilons=[] sweep.nonprivate=[]", "sweep.epsilons and sweep.nonprivate are both empty"),
    ("model=tiny_bert", "use sweep.models"),
    ("privacy.epsilon=1", "use sweep.epsilons"),
    ("sweep.nonprivate=[lora,dp]", "sweep.nonprivate"),
    ("sweep.baselines=[svm]", "sweep.baselines"),
    ("sweep.bootstrap.alpha=1.5", "sweep.bootstrap.alpha"),
    ("sweep.init_from=private", "sweep.init_from"),
])
def test_bad_sweep_settings_are_one_line_errors(tracking_uri, reports_csv, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SMALL, "data=ct_rate_text", f"data.path={reports_csv[0]}",
              "sweep.models=[tiny_bert]", *extra.split()])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    if Path(tracking_uri.removeprefix("sqlite:///")).exists():
        client = mlflow.MlflowClient(tracking_uri)
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_build_grid_rejects_a_non_list():
    with pytest.raises(ConfigError, match="expected a list"):
        build_grid({"models": "minilm", "epsilons": [1], "seeds": [1], "nonprivate": []})


# --------------------------------------------------------------------------------------------
# sweep.init_from=public: 1 model × 1 ε × 1 seed, cold and from the public model, on two shards
# --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_public_start_sweep_has_cold_warm_and_public_alone_rows(tracking_uri, reports_csv, capsys, tmp_path):
    csv_path, _ = reports_csv
    # the private cells train on shard 1/2 of the CSV; the public model on shard 0/2 of the same CSV
    base = [*SMALL, "data=ct_rate_text", f"data.path={csv_path}", "data.train_shard=1/2",
            f"finetune.public.data={{name:ct_rate_text,path:{csv_path}}}", "finetune.public.max_epochs=1"]
    grid = ["sweep.models=[tiny_bert]", "sweep.epsilons=[1]", "sweep.seeds=[42]", "sweep.nonprivate=[]",
            "sweep.baselines=[]", "sweep.init_from=public"]
    plan, _ = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
    assert [s["cell"] for s in plan["states"]] == ["tiny_bert-eps1-seed42", "tiny_bert-eps1-public-seed42"]
    assert plan["to_train"] == 2

    out, err = sweep_json(capsys, [*base, *grid])
    assert (out["cells"], out["trained"]) == (2, 2) and "the run logged" not in err
    local = Path(mlflow.artifacts.download_artifacts(run_id=out["run_id"], dst_path=str(tmp_path / "art")))
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO((local / "results.csv").read_text()))}
    assert set(rows) == {"dp_lora", "dp_lora_public", "public"}
    assert rows["dp_lora_public"]["epsilon"] == "1" and rows["dp_lora_public"]["privacy.unit"] == "report"
    assert (rows["public"]["epsilon"], rows["public"]["epsilon_spent"], rows["public"]["privacy.unit"]) == (
        "0", "0", "—")
    md = (local / "results.md").read_text()
    assert "| DP-LoRA (public start) | tiny_bert | 1 |" in md
    assert "| public model alone (no private data) | tiny_bert | 0 |" in md
    client = mlflow.MlflowClient(tracking_uri)
    warm_id = rows["dp_lora_public"]["run_ids"]
    privacy = json.loads(Path(client.download_artifacts(warm_id, "privacy.json", str(tmp_path))).read_text())
    assert privacy["warm_start"]["public"]
    # the public row is the model the warm cell started from, and it never saw a private report
    assert privacy["warm_start"]["source"] == rows["public"]["run_ids"] != warm_id
    assert rows["dp_lora"]["run_ids"] not in (warm_id, rows["public"]["run_ids"])

    # both cells are found again (the warm one under the key of its public validation split)
    again, _ = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
    assert (again["finished"], again["to_train"]) == (2, 0)


@pytest.mark.integration
def test_plan_only_lists_the_public_model_of_the_warm_cells_its_claim_and_its_progress(
        tracking_uri, reports_csv, capsys):
    from radpriv.data.sources import load_table
    from radpriv.model.public_start import load_public_corpus
    from radpriv.sweep.claims import ClaimStore
    from radpriv.sweep.run import PLAN_PARENT, _cell_cfg, public_target
    from radpriv.train import public_model

    csv_path, _ = reports_csv
    base = [*SMALL, "data=ct_rate_text", f"data.path={csv_path}", "data.train_shard=1/2",
            f"finetune.public.data={{name:ct_rate_text,path:{csv_path}}}", "finetune.public.max_epochs=2"]
    grid = ["sweep.models=[tiny_bert]", "sweep.epsilons=[1,10]", "sweep.seeds=[42]", "sweep.nonprivate=[]",
            "sweep.baselines=[]", "sweep.init_from=public"]
    warm = ["tiny_bert-eps1-public-seed42", "tiny_bert-eps10-public-seed42"]
    client = mlflow.MlflowClient(tracking_uri)

    plan, err = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
    (public,) = plan["public_models"]  # one for both warm cells
    assert public == {"public_model": "radpriv-public-ct_rate18-tiny_bert", "seed": 42, "status": "to train",
                      "run_id": None, "epochs_done": None, "warm_cells": warm}
    assert (plan["to_train"], plan["cells_without_estimate"], plan["public_models_without_estimate"]) == (4, 4, 1)
    assert plan["estimated_left_s"] is None
    assert ("public model radpriv-public-ct_rate18-tiny_bert, seed 42 (the start of 2 warm cells, trained "
            "before them): to train") in err
    assert "0 of 1 public model finished (each trains before its warm cells)" in err
    assert "no estimate yet for 4 cells and 1 public model" in err and "tiny_bert public model" in err
    assert client.search_experiments(filter_string="name != 'Default'") == []  # nothing opened

    # another worker claims it, as the sweep would (the warm cell's target needs it), and is
    # stopped after the first of its two epochs
    cfg = compose(["+sweep=default", *base, *grid])
    (cell,) = [c for c in build_grid(cfg.sweep) if c.name == warm[0]]
    cell_cfg = _cell_cfg(training_overrides([*base, *grid]), cell, PLAN_PARENT, "e")
    table = load_table(cfg.data, 42)
    target = public_target(warm[0], cell_cfg, table, load_public_corpus(cell_cfg, table))
    other = ClaimStore(tracking_uri, ttl_s=60, heartbeat_s=1, worker="other-host-7-abc")
    try:
        assert other.claim(target.key).won
        plan, err = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
        assert plan["public_models"][0]["claimed_by"] == "other-host-7-abc"
        assert "to train; claimed by other-host-7-abc, heartbeat" in err
        model = public_model(cell_cfg, load_public_corpus(cell_cfg, table))
        with pytest.raises(RuntimeError, match="stopped after epoch 1"):
            train(model.cfg, table=model.corpus.table, extra_callbacks=[_StopAtSecondEpoch()])
        (started,) = _training_runs(client)
        plan, err = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
        assert {k: plan["public_models"][0][k] for k in ("status", "run_id", "epochs_done", "claimed_by")} == {
            "status": "started", "run_id": started.info.run_id, "epochs_done": 1, "claimed_by": "other-host-7-abc"}
        assert "1 of 2 epochs in its checkpoint" in err

        # it finishes (resumed) and is marked done: the plan finds it where the sweep will
        assert target.train() == started.info.run_id
        other.done(target.key)
    finally:
        other.close()
    n_runs = len(_training_runs(client))
    plan, err = sweep_json(capsys, [*base, *grid, "sweep.plan_only=true"])
    assert {k: plan["public_models"][0][k] for k in ("status", "run_id", "warm_cells")} == {
        "status": "finished", "run_id": started.info.run_id, "warm_cells": warm}
    assert "claimed_by" not in plan["public_models"][0]
    assert (plan["to_train"], plan["public_models_without_estimate"]) == (4, 0)
    assert "1 of 1 public model finished;" in err and "no estimate yet for 4 cells (" in err
    assert f"seed 42 (the start of 2 warm cells): finished (run {started.info.run_id}, trained in" in err
    assert len(_training_runs(client)) == n_runs


def test_plan_counts_a_public_model_still_to_train_in_what_is_left(caplog):
    from radpriv.sweep.plan import FINISHED, TO_TRAIN, CellState, PublicState, summarize

    name = "radpriv-public-ct_rate18-minilm"
    cells = [CellState(Cell("minilm", "dp_lora_public", 1.0, 43), FINISHED, "a", 100.0),
             CellState(Cell("minilm", "dp_lora_public", 1.0, 42), TO_TRAIN, max_epochs=2)]
    pending = PublicState(name, "minilm", 42, ("minilm-eps1-public-seed42",), TO_TRAIN, max_epochs=2,
                          claim="claimed by w-1, heartbeat 3 s ago", claimed_by="w-1")
    # the public model of another seed, finished: the one still to train costs what it took
    done = PublicState(name, "minilm", 43, ("minilm-eps1-public-seed43",), FINISHED, "p", 40.0)
    with caplog.at_level(logging.INFO, logger="radpriv"):
        out = summarize(cells, [done, pending])
    assert out["estimated_left_s"] == 140.0 and out["public_models_without_estimate"] == 0
    assert out["public_models"][1] == {"public_model": name, "seed": 42, "status": "to train", "run_id": None,
                                       "epochs_done": None, "warm_cells": ["minilm-eps1-public-seed42"],
                                       "claimed_by": "w-1"}
    assert "(the start of 1 warm cell, trained before it): to train; claimed by w-1" in caplog.text
    assert "each public model: the median finished one of its model" in caplog.text
    # without it, the public model still to train has no estimate, and is named
    out = summarize(cells, [pending])
    assert out["estimated_left_s"] is None
    assert (out["cells_without_estimate"], out["public_models_without_estimate"]) == (0, 1)
    assert "0:01:40 for the 1 with an estimate, no estimate yet for 1 public model (nothing finished yet of minilm " \
           "public model)" in caplog.text


# --------------------------------------------------------------------------------------------
# obtain.py: a warm cell's public model obtained under its own claim (two stores, no processes)
# --------------------------------------------------------------------------------------------


def _targets(runs: dict, trained: list, fail: str | None = None):
    """A warm cell target needing a public-model target; `runs` plays MLflow's finished runs."""
    from radpriv.sweep.obtain import Target

    def make(name: str, needs=None) -> Target:
        def train() -> str:
            trained.append(name)
            if name == fail:
                raise RuntimeError(f"{name} failed")
            runs[name] = f"run-{name}"
            return runs[name]

        return Target(name, f"key-{name}", lambda: runs.get(name), train, needs)

    public = make("public")
    return make("cell", public), public


@pytest.fixture
def two_stores(tmp_path):
    from radpriv.sweep.claims import ClaimStore

    db = f"sqlite:///{tmp_path / 'claims.db'}"
    stores = [ClaimStore(db, ttl_s=60, heartbeat_s=1, worker=w) for w in ("a", "b")]
    yield stores
    for store in stores:
        store.close()


def test_a_warm_cell_waits_for_the_public_model_another_worker_holds_without_claiming_itself(two_stores):
    from radpriv.sweep.claims import DONE
    from radpriv.sweep.obtain import Held, obtain

    a, b = two_stores
    runs, trained = {}, []
    cell, public = _targets(runs, trained)
    assert b.claim(public.key).won  # b trains the public model
    held = obtain(cell, a, time.perf_counter())
    assert isinstance(held, Held) and held.target is public and held.claim.worker == "b"
    assert trained == [] and a.get(cell.key) is None  # a holds no cell while it waits

    runs["public"] = "run-public"  # b finished it
    b.done(public.key)
    assert obtain(cell, a, time.perf_counter()) == ("run-cell", False)
    assert trained == ["cell"]  # the public model was found, not trained again
    assert (a.get(cell.key).worker, a.get(cell.key).state) == ("a", DONE)
    assert obtain(cell, b, time.perf_counter()) == ("run-cell", True)


def test_a_free_public_model_is_claimed_and_trained_first_and_a_failure_gives_it_back(two_stores):
    from radpriv.sweep.claims import DONE
    from radpriv.sweep.obtain import obtain

    a, b = two_stores
    trained = []
    cell, public = _targets({}, trained, fail="public")
    with pytest.raises(RuntimeError, match="public failed"):
        obtain(cell, a, time.perf_counter())
    assert trained == ["public"] and a.get(public.key) is None and a.get(cell.key) is None
    trained.clear()
    cell, public = _targets({}, trained)
    assert obtain(cell, b, time.perf_counter()) == ("run-cell", False)  # b takes it up at once
    assert trained == ["public", "cell"]
    assert {(c.worker, c.state) for c in (b.get(public.key), b.get(cell.key))} == {("b", DONE)}


def test_a_dead_workers_claim_on_the_public_model_expires_and_the_next_worker_takes_it_over(tmp_path, caplog):
    from radpriv.sweep.claims import ClaimStore
    from radpriv.sweep.obtain import Held, obtain

    db = f"sqlite:///{tmp_path / 'claims.db'}"
    dead = ClaimStore(db, ttl_s=60, heartbeat_s=1, worker="dead")  # no heartbeat thread: it stopped
    live = ClaimStore(db, ttl_s=0.5, heartbeat_s=0.2, worker="live")
    try:
        trained = []
        cell, public = _targets({}, trained)
        assert dead.claim(public.key).won
        assert isinstance(obtain(cell, live, time.perf_counter()), Held)  # alive for now
        time.sleep(0.8)
        caplog.set_level("INFO", logger="radpriv")
        assert obtain(cell, live, time.perf_counter()) == ("run-cell", False) and trained == ["public", "cell"]
        assert "public: training (elapsed 0:00:00); taken over from dead" in caplog.text
    finally:
        dead.close()
        live.close()


def test_without_a_claim_store_a_target_and_its_need_train_in_order():
    from radpriv.sweep.obtain import obtain

    runs, trained = {}, []
    cell, _ = _targets(runs, trained)
    assert obtain(cell, None, time.perf_counter()) == ("run-cell", False)
    assert trained == ["public", "cell"]
    assert obtain(cell, None, time.perf_counter()) == ("run-cell", True) and trained == ["public", "cell"]
