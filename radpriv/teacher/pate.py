"""PATE: k teachers on disjoint partitions of the expert-labelled reports, a noisy vote per label.

`radpriv pate pate.k=<k> pate.sigma=<σ> pate.input=<reports> pate.output=<csv> [<train overrides>]`
(or `radpriv label teacher.mode=pate …`, the same arguments). Papernot et al., "Scalable Private
Learning with PATE", ICLR 2018, with Gaussian noise (their GNMax) on each label's vote count.

1. The expert data (`data=…`, any radpriv dataset) are read once. Their *training* reports are
   split into k disjoint partitions by patient: partition = sha256(seed, patient) mod k. The
   partition of a patient depends on that patient alone, so adding or removing one expert report
   changes exactly one teacher's training set (a rank-based deal, such as data.train_shard's,
   would move other patients between shards and void that argument).
2. Teacher i is an ordinary non-private `radpriv train` run (nested under one parent MLflow run)
   on partition i, with `trainer.thresholds=fixed` (0.5): thresholds fitted on the shared
   validation split would make every teacher depend on the same validation reports.
3. For each unlabelled report and label, n₁ = number of teachers voting 1; the released label is
   1 iff n₁ + N(0, σ²) > k/2 (`noisy_vote`). The noisy vote share (n₁ + noise)/k, clipped to
   [0, 1], is written as prob_<label>: it is the mechanism's own output, so it costs nothing more.
4. Privacy of the expert reports (`pate_epsilon`): one expert report changes one teacher, i.e.
   each of the L counts of a query by at most 1; a query (all L labels of one report) is a
   Gaussian mechanism with L2 sensitivity √L and noise σ, i.e. noise multiplier σ/√L. Q answered
   queries compose to SelfComposed(Gaussian(σ/√L), Q), accounted with dp-accounting's PLD and RDP
   accountants (add/remove one report) and the exact Gaussian-DP profile (μ = √(Q·L)/σ; Dong,
   Roth & Su 2019). The reported ε is the largest of PLD and exact — never below the true ε of
   this mechanism. This is the data-independent bound; PATE's data-dependent bound (smaller when
   teachers agree) is not computed here.

What is NOT covered: the teachers themselves, their MLflow runs (models, validation and test
metrics) are non-private functions of the expert reports — keep that tracking store private.
Only the labelled CSV, its provenance and students trained on it carry the PATE guarantee.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from radpriv.errors import ConfigError, DataError, PrivacyError
from radpriv.tracking.mlflow_run import without_env

log = logging.getLogger(__name__)

KEYS = ("k", "sigma", "input", "output", "delta", "seed", "text_column", "id_column", "batch_size",
        "num_threads", "progress_bar")
FORCED = ("privacy.epsilon=null", "trainer.thresholds=fixed", "tracking.log_model=true")


# --------------------------------------------------------------------------- accounting

def gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """Exact ε(δ) of a μ-GDP mechanism: δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (Balle & Wang 2018;
    Dong, Roth & Su 2019), solved for ε. Log-space to stay finite at large ε."""
    from scipy.optimize import brentq
    from scipy.special import log_ndtr, ndtr

    def excess(eps: float) -> float:
        return float(ndtr(-eps / mu + mu / 2) - math.exp(eps + log_ndtr(-eps / mu - mu / 2)) - delta)

    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2
    return float(brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-12))


def pate_epsilon(sigma: float, n_labels: int, n_queries: int, delta: float) -> dict:
    """ε at δ for Q answered PATE queries of L labels each, Gaussian vote noise σ (see module doc).

    Returns {"epsilon", "epsilon_pld", "epsilon_rdp", "epsilon_exact", "noise_multiplier", "mu", …};
    "epsilon" = max(epsilon_pld, epsilon_exact).
    """
    import dp_accounting
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

    if not sigma > 0 or n_labels < 1 or n_queries < 0 or not 0 < delta < 1:
        raise PrivacyError(f"PATE accounting needs σ > 0, L ≥ 1, Q ≥ 0 and 0 < δ < 1 "
                           f"(got σ={sigma}, L={n_labels}, Q={n_queries}, δ={delta})")
    z = float(sigma) / math.sqrt(n_labels)  # noise multiplier of one query (L2 sensitivity √L)
    out = {"noise_multiplier": z, "sigma": float(sigma), "n_labels": int(n_labels),
           "n_queries": int(n_queries), "delta": float(delta), "neighbouring": "add/remove one expert report",
           "bound": "data-independent"}
    if n_queries == 0:
        return {**out, "epsilon": 0.0, "epsilon_pld": 0.0, "epsilon_rdp": 0.0, "epsilon_exact": 0.0, "mu": 0.0}
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), int(n_queries))
    pld = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE)
    pld.compose(event)
    rdp = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    rdp.compose(event)
    mu = math.sqrt(n_queries) / z
    exact = gaussian_dp_epsilon(mu, delta)
    eps_pld = float(pld.get_epsilon(delta))
    return {**out, "epsilon": max(eps_pld, exact), "epsilon_pld": eps_pld,
            "epsilon_rdp": float(rdp.get_epsilon(delta)), "epsilon_exact": exact, "mu": mu}


# --------------------------------------------------------------------------- vote and partition

def noisy_vote(counts: np.ndarray, k: int, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labels 0/1, noisy counts) for vote counts `counts` (reports × labels, teachers voting 1):
    N(0, σ²) added to every count independently, label 1 iff the noisy count exceeds k/2."""
    counts = np.asarray(counts, dtype=np.float64)
    noisy = counts + rng.normal(0.0, float(sigma), size=counts.shape)
    return (noisy > k / 2).astype(np.int64), noisy


def partition_of(patients: Sequence[str], seed: int, k: int) -> list[int]:
    """Teacher index of each patient: sha256(seed, patient) mod k — a function of the patient
    alone, so one report added or removed changes one partition only."""
    return [int(hashlib.sha256(f"pate\x1f{seed}\x1f{p}".encode()).hexdigest(), 16) % k for p in patients]


def teacher_tables(table, k: int, seed: int):
    """k tables, each with one partition of the training reports (validation and test kept)."""
    patients = table.patient_ids or table.ids
    train_rows = [i for i, s in enumerate(table.split) if s == "train"]
    n_patients = len({patients[i] for i in train_rows})
    if k < 2:
        raise ConfigError(f"pate.k={k}: PATE needs at least 2 teachers")
    if k > n_patients:
        raise DataError(f"pate.k={k}: the expert data have {n_patients} training patients "
                        f"({len(train_rows)} reports); k teachers need at least k, use pate.k ≤ {n_patients}")
    part = dict(zip([patients[i] for i in train_rows], partition_of([patients[i] for i in train_rows], seed, k)))
    sizes = [sum(1 for i in train_rows if part[patients[i]] == t) for t in range(k)]
    if min(sizes) == 0:
        raise DataError(f"pate.k={k}: partition sizes {sizes} of {len(train_rows)} expert training reports "
                        "leave a teacher without data; use a smaller pate.k")
    tables = []
    for t in range(k):
        idx = [i for i, s in enumerate(table.split) if s != "train" or part[patients[i]] == t]
        tables.append(replace(
            table, ids=tuple(table.ids[i] for i in idx), texts=tuple(table.texts[i] for i in idx),
            labels=table.labels[idx], split=tuple(table.split[i] for i in idx),
            patient_ids=None if table.patient_ids is None else tuple(table.patient_ids[i] for i in idx),
            excluded={**table.excluded, f"training reports outside PATE partition {t}/{k}": len(train_rows) - sizes[t]},
        ))
    return tables, sizes, len(train_rows)


# --------------------------------------------------------------------------- command

@dataclass
class PateOptions:
    k: int
    sigma: float
    input: Path
    output: Path
    delta: float | None = None
    seed: int | None = None
    text_columns: list[str] | None = None
    id_column: str | None = None
    batch_size: int = 32
    num_threads: int | None = None
    progress_bar: bool = True


def parse_args(args: Sequence[str]) -> tuple[PateOptions, list[str]]:
    """`pate.<key>=<value>` are PATE's; everything else is a Hydra override for the teachers."""
    values: dict[str, str] = {}
    overrides: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not key.startswith("pate."):
            overrides.append(arg)
            continue
        name = key.removeprefix("pate.")
        if not sep or name not in KEYS:
            raise ConfigError(f"pate: unexpected argument {arg!r}; PATE keys are pate.{', pate.'.join(KEYS)}")
        if value.strip():
            values[name] = value.strip()
    missing = [k for k in ("k", "sigma", "input", "output") if k not in values]
    if missing:
        raise ConfigError(f"pate needs {' '.join(f'pate.{k}=<…>' for k in missing)}, e.g. radpriv pate "
                          "data=ct_rate_text pate.k=5 pate.sigma=20 pate.input=unlabelled.csv pate.output=labels.csv")
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "privacy.epsilon" and value.strip().lower() not in ("null", "none", "inf"):
            raise ConfigError("pate: the teachers train without DP (privacy.epsilon=null); the privacy "
                              "of the expert reports comes from the noisy vote: set pate.sigma")
        if key == "trainer.thresholds" and value.strip() != "fixed":
            raise PrivacyError("pate: teachers use trainer.thresholds=fixed; thresholds fitted on the shared "
                               "validation split would make every teacher depend on the same reports")

    def number(key: str, cast, low: float):
        try:
            v = cast(values[key])
        except ValueError:
            v = None
        if v is None or not v >= low or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"pate.{key}={values[key]!r}: expected a {cast.__name__} ≥ {low:g}")
        return v

    sigma = number("sigma", float, 0.0)
    if sigma <= 0:
        raise ConfigError(f"pate.sigma={values['sigma']!r}: must be > 0 (σ = 0 is no privacy at all)")
    delta = number("delta", float, 0.0) if "delta" in values else None
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"pate.delta={values['delta']!r}: must be in (0, 1)")
    progress = values.get("progress_bar", "true").lower()
    return PateOptions(
        k=number("k", int, 2), sigma=sigma, input=Path(values["input"]).expanduser(),
        output=Path(values["output"]).expanduser(), delta=delta,
        seed=number("seed", int, 0) if "seed" in values else None,
        text_columns=[c.strip() for c in values["text_column"].split(",")] if "text_column" in values else None,
        id_column=values.get("id_column"), batch_size=number("batch_size", int, 1) if "batch_size" in values else 32,
        num_threads=number("num_threads", int, 1) if "num_threads" in values else None,
        progress_bar=progress in ("true", "1"),
    ), [o for o in overrides if o not in FORCED]


def _open_parent(cfg, k: int, sigma: float, mlflow_run_id: str | None) -> tuple[object, str]:
    from radpriv.tracking import mlflow_run

    client = mlflow_run.client(cfg)
    if mlflow_run_id:
        return client, mlflow_run_id
    name = mlflow_run.experiment_name(cfg)
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run = client.create_run(exp_id, run_name=f"pate-k{k}-sigma{sigma:g}", tags={"radpriv.pate": "true"})
    return client, run.info.run_id


def _teacher_votes(run_id: str, tracking_uri: str, texts: list[str], batch_size: int) -> np.ndarray:
    """One teacher's 0/1 votes (reports × labels) at its stored (fixed 0.5) thresholds."""
    from radpriv.model.bundle import load_bundle
    from radpriv.predict import fetch_model, predict_reports

    with tempfile.TemporaryDirectory() as tmp:
        model = load_bundle(fetch_model(run_id, tracking_uri, Path(tmp)).bundle_dir)
    probs = predict_reports(model, texts, batch_size, progress=False)
    return (probs >= torch.as_tensor(model.thresholds, dtype=probs.dtype)).numpy().astype(np.int64)


def run_pate(options: PateOptions, overrides: list[str]) -> dict:
    """Check everything, train k teachers, vote, write the labelled CSV and its provenance."""
    from mlflow.entities import Param
    from omegaconf import open_dict
    from tqdm.auto import tqdm

    from radpriv.config import compose
    from radpriv.data.sources import load_table
    from radpriv.predict import check_writable
    from radpriv.privacy import accounting
    from radpriv.teacher import provenance
    from radpriv.teacher.label import check_columns, read_input, write_labelled
    from radpriv.tracking.mlflow_run import tracking_uri as resolve_uri
    from radpriv.train import train

    cfg = compose([*overrides, *FORCED])
    check_writable(options.output)
    reports = read_input(options.input, options.text_columns, options.id_column)
    seed = int(cfg.seed)
    table = load_table(cfg.data, seed)
    check_columns(reports.extra_columns, table.label_names, options.input)
    tables, sizes, n_expert = teacher_tables(table, options.k, seed)
    delta = options.delta if options.delta is not None else accounting.default_delta(n_expert)
    accounting.check_delta(delta, n_expert)
    keep = [i for i, t in enumerate(reports.texts) if t.strip()]
    cost = pate_epsilon(options.sigma, len(table.label_names), len(keep), delta)
    log.info("PATE plan: k=%d teachers (partition sizes %s of %d expert training reports), σ=%g on each of "
             "%d vote counts, %d queries → ε=%.4g at δ=%.3g (PLD %.4g, RDP %.4g, exact %.4g; data-independent)",
             options.k, sizes, n_expert, options.sigma, len(table.label_names), len(keep), cost["epsilon"],
             delta, cost["epsilon_pld"], cost["epsilon_rdp"], cost["epsilon_exact"])
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    uri = resolve_uri(cfg.tracking.get("uri"))
    texts = [reports.texts[i] for i in keep]
    counts = np.zeros((len(keep), len(table.label_names)), dtype=np.int64)
    teacher_runs: list[str] = []
    with without_env("MLFLOW_RUN_ID") as outer:
        client, parent = _open_parent(cfg, options.k, options.sigma, outer)
        try:
            client.log_batch(parent, params=[Param(f"pate.{k}", str(v)) for k, v in (
                ("k", options.k), ("sigma", options.sigma), ("delta", delta), ("n_queries", len(keep)),
                ("n_expert", n_expert), ("data", cfg.data.name), ("model", cfg.model.name))])
            for t in tqdm(range(options.k), desc="PATE teachers", unit="teacher", disable=not options.progress_bar):
                tcfg = compose([*overrides, *FORCED, f"tracking.parent_run_id={parent}",
                                f"run_name=pate-teacher-{t}of{options.k}"])
                with open_dict(tcfg):
                    tcfg.tracking.tags = {**(tcfg.tracking.get("tags") or {}),
                                          "radpriv.pate.teacher": f"{t}/{options.k}", "radpriv.pate.parent": parent}
                run_id = train(tcfg, table=tables[t])["run_id"]
                teacher_runs.append(run_id)
                counts += _teacher_votes(run_id, uri, texts, options.batch_size)
                log.info("PATE teacher %d/%d: run %s (%d training reports) voted", t + 1, options.k, run_id, sizes[t])
            noise_seed = options.seed if options.seed is not None else secrets.randbits(128)
            labels, noisy = noisy_vote(counts, options.k, options.sigma, np.random.default_rng(noise_seed))
            del counts  # the exact vote counts are never written anywhere
            probs = torch.full((len(reports.texts), len(table.label_names)), math.nan, dtype=torch.float64)
            probs[keep] = torch.as_tensor(np.clip(noisy / options.k, 0.0, 1.0))
            empty = [not t.strip() for t in reports.texts]
            write_labelled(options.output, reports, probs, [0.5] * len(table.label_names), table.label_names, empty)
            guarantee = {
                "protected": True, "epsilon": cost["epsilon"], "delta": delta,
                "mechanism": f"PATE, Gaussian noisy vote (σ={options.sigma:g}) of {options.k} non-private teachers",
                "statement": (f"({cost['epsilon']:.4g}, {delta:.3g})-DP for each expert-labelled training report "
                              f"of {cfg.data.name} (add/remove one report; PATE with {options.k} teachers, Gaussian "
                              f"vote noise σ={options.sigma:g}, {len(keep)} queries of {len(table.label_names)} "
                              "labels, data-independent bound); the teachers use fixed thresholds, so the expert "
                              "validation/test reports do not influence the labels. The teachers and their MLflow "
                              "runs are NOT protected and must stay private"),
            }
            record = provenance.build(
                mode="pate", teacher={"k": options.k, "teacher_runs": teacher_runs, "parent_run_id": parent,
                                      "teacher_model": cfg.model.name, "expert_data": cfg.data.name,
                                      "n_expert_train_reports": n_expert, "partition_sizes": sizes},
                labels=table.label_names, guarantee=guarantee, output=options.output,
                n_reports=len(reports.ids), n_labelled=len(keep),
                pate={**cost, "noise_seeded": options.seed is not None,
                      "prob_columns": "noisy vote share (n1 + N(0, σ²)) / k, clipped to [0, 1]"},
            )
            prov = provenance.write(record, options.output)
            for key in ("epsilon", "epsilon_pld", "epsilon_rdp", "epsilon_exact"):
                client.log_metric(parent, f"pate/{key}", float(cost[key]))
            client.log_metric(parent, "pate/delta", float(delta))
            client.log_artifact(parent, str(prov))  # provenance only: the CSV holds report text
            if not outer:
                client.set_terminated(parent, "FINISHED")
        except BaseException:
            if not outer:
                client.set_terminated(parent, "FAILED")
            raise
    log.info("PATE: %d reports labelled -> %s (+ %s); ε=%.4g at δ=%.3g for the expert reports", len(keep),
             options.output, prov.name, cost["epsilon"], delta)
    return {"output": str(options.output), "provenance": str(prov), "run_id": parent, "teacher_runs": teacher_runs,
            "n_reports": len(reports.ids), "n_labelled": len(keep), "labels": list(table.label_names),
            "pate": {k: cost[k] for k in ("epsilon", "epsilon_pld", "epsilon_rdp", "epsilon_exact", "delta",
                                          "sigma", "noise_multiplier", "n_queries")},
            "student": f"radpriv train data=csv data.path={options.output} data.id_column=id"}


def pate_command(args: Sequence[str]) -> dict:
    return run_pate(*parse_args(args))
