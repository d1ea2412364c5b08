"""PATE: k teachers on disjoint partitions of the expert-labelled reports, a noisy vote per label.

`radpriv pate pate.k=<k> pate.sigma=<σ> pate.input=<reports> pate.output=<csv> [<train overrides>]`
(or `radpriv label teacher.mode=pate …`, the same arguments). Papernot et al., "Scalable Private
Learning with PATE", ICLR 2018, with Gaussian noise (their GNMax) on each label's vote count.

1. The expert data (`data=…`, any radpriv dataset) are read once. Their *training* reports are
   split into k disjoint partitions by patient: partition = HMAC-SHA256(key, patient) mod k, the
   key 256 bits of fresh OS entropy drawn at every invocation and never written. The partition
   of a report depends on its patient alone (a rank-based deal, such as data.train_shard's,
   would move other patients between shards when one report changes).
2. Teacher i is an ordinary non-private `radpriv train` run (nested under one parent MLflow run)
   on partition i, with `trainer.thresholds=fixed` (0.5): thresholds fitted on the shared
   validation split would make every teacher depend on the same validation reports.
3. For each unlabelled report and label, n₁ = number of teachers voting 1; the released label is
   1 iff n₁ + N(0, σ²) > k/2 (`noisy_vote`), the noise from a generator seeded with fresh OS
   entropy. The noisy vote share (n₁ + noise)/k, clipped to [0, 1], is written as prob_<label>:
   it is the mechanism's own output, so it costs nothing more.
4. Privacy of the expert training data (`pate_epsilon`), under replace-one adjacency, per unit
   (`expert_units`): `privacy.unit` resolved on the expert table as `radpriv train` does
   (radpriv/data/patients.py; auto is `patient` when the format names patients). At the patient
   unit the guarantee is per expert training patient, with all their reports, and the number
   of expert training patients is public (the default δ = 1/N^1.1 counts them; the number of
   reports is not published); at the report unit, per report, with the number of reports
   public. Either way replacing one unit changes at most two teachers: the partition is a
   function of the patient alone, so replacing patient A (every report of A) by patient B
   changes only A's teacher and B's; replacing one report changes only the teacher of its
   patient and that of the new report's patient. Each changed teacher moves each of the L
   counts of a query by at most 1 (a vote is 0 or 1 however many reports are behind it), so
   the L2 sensitivity of a query is Δ = 2√L (`vote_sensitivity`) at either unit, and so is ε.
   The expert validation/test reports do not influence the labels (fixed thresholds), so a
   patient's reports there cost nothing. A query is a Gaussian mechanism with noise
   multiplier σ/Δ; Q answered queries compose to
   SelfComposed(Gaussian(σ/Δ), Q), a plain Gaussian pair at distance 1 in units of the noise,
   accounted with dp-accounting's PLD and RDP accountants (ADD_OR_REMOVE_ONE semantics, which
   for a Gaussian event is exactly that pair) and the exact Gaussian-DP profile (μ = Δ·√Q/σ;
   Dong, Roth & Su 2019). The reported ε is the larger of PLD and exact — never below the true
   ε of this mechanism. This is the data-independent bound; PATE's data-dependent bound
   (smaller when teachers agree) is not computed here.

`pate.seed` (tests only) makes the partition and the noise reproducible from a number: anyone
who knows it can subtract the noise, so such a run claims no ε anywhere (NOT PROTECTED).

What is NOT covered: the teachers themselves, their MLflow runs (models, validation and test
metrics, training-set sizes) are non-private functions of the expert reports — keep that
tracking store private. Only the labelled CSV, the published part of its provenance
(`provenance.public_view`) and students trained on it carry the PATE guarantee.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from radpriv import cli_args, labelling
from radpriv.data.patients import Unit, resolve_unit, training_units
from radpriv.errors import ConfigError, DataError, PrivacyError
from radpriv.privacy import randomness

log = logging.getLogger(__name__)

KEYS = ("k", "sigma", "input", "output", "delta", "seed", "text_column", "id_column", "batch_size",
        "num_threads", "progress_bar")
FORCED = ("privacy.epsilon=null", "trainer.thresholds=fixed", "tracking.log_model=true")
#: The neighbouring relation of the guarantee (radpriv.privacy.accounting.GUARANTEE_RELATION).
RELATION = "replace_one"
#: the neighbouring datasets, per privacy unit
NEIGHBOURS = {"report": "replace one expert training report (their number is public)",
              "patient": "replace one expert training patient, with all their reports (the number of "
                         "patients is public)"}
KEY_BYTES = 32  # 256-bit partition key
EPSILON_KEYS = ("epsilon", "epsilon_pld", "epsilon_rdp", "epsilon_exact")


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


def vote_sensitivity(n_labels: int) -> float:
    """L2 sensitivity of one query's L vote counts under replace-one adjacency: 2√L, per report
    and per patient alike.

    A teacher's training set is the reports of the patients hashed to it. Replacing one expert
    training patient (all their reports) by another changes the removed patient's teacher and
    the added patient's teacher, and no other; replacing one report changes its patient's
    teacher and the new report's patient's teacher. Either way at most two teachers change, each
    moving each count by at most 1 (a vote is 0 or 1, whatever the number of reports behind
    it), so each count moves by at most 2 and ‖Δcounts‖₂ ≤ 2√L, reached when both teachers flip
    every label in the same direction.
    """
    return 2.0 * math.sqrt(n_labels)


def pate_epsilon(sigma: float, n_labels: int, n_queries: int, delta: float, unit: str = "report") -> dict:
    """ε at δ for Q answered PATE queries of L labels each, Gaussian vote noise σ, under
    replace-one adjacency of `unit` (patient | report; the same ε: see vote_sensitivity).

    Returns {"epsilon", "epsilon_pld", "epsilon_rdp", "epsilon_exact", "sensitivity",
    "noise_multiplier", "mu", "unit", …}; "epsilon" = max(epsilon_pld, epsilon_exact).
    """
    import dp_accounting
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

    if not sigma > 0 or n_labels < 1 or n_queries < 0 or not 0 < delta < 1:
        raise PrivacyError(f"PATE accounting needs σ > 0, L ≥ 1, Q ≥ 0 and 0 < δ < 1 "
                           f"(got σ={sigma}, L={n_labels}, Q={n_queries}, δ={delta})")
    sensitivity = vote_sensitivity(n_labels)
    z = float(sigma) / sensitivity  # noise multiplier of one query
    if unit not in NEIGHBOURS:
        raise PrivacyError(f"PATE accounting: unit {unit!r} is not one of {', '.join(NEIGHBOURS)}")
    out = {"noise_multiplier": z, "sensitivity": sensitivity, "sigma": float(sigma), "n_labels": int(n_labels),
           "n_queries": int(n_queries), "delta": float(delta), "relation": RELATION, "unit": unit,
           "neighbouring": NEIGHBOURS[unit], "bound": "data-independent"}
    if n_queries == 0:
        return {**out, "epsilon": 0.0, "epsilon_pld": 0.0, "epsilon_rdp": 0.0, "epsilon_exact": 0.0, "mu": 0.0}
    # Gaussian(z) under ADD_OR_REMOVE_ONE is the plain pair N(0, z²) vs N(1, z²): the query's
    # pair once the sensitivity is folded into z. (dp-accounting's REPLACE_ONE would double it
    # again in the PLD accountant, and its RDP accountant ignores the relation for this event.)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), int(n_queries))
    pld = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE)
    pld.compose(event)
    rdp = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    rdp.compose(event)
    mu = sensitivity * math.sqrt(n_queries) / float(sigma)
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


def partition_key(seed: int | None = None) -> bytes:
    """The secret key of one invocation's partition: 256 bits of fresh OS entropy, never written.

    The ε bound holds for any partition that is a function of the patient alone; the key is
    fresh and secret so that which teacher saw which patient cannot be recomputed from anything
    published (the rule for every private mechanism's randomness: radpriv/privacy/randomness.py).
    `seed` (pate.seed, tests only) derives the key from that number instead; such a run claims
    no ε.
    """
    if seed is None:
        return randomness.fresh_seed(8 * KEY_BYTES).to_bytes(KEY_BYTES, "big")
    return hashlib.sha256(f"radpriv-pate-partition\x1f{int(seed)}".encode()).digest()


def partition_of(patients: Sequence[str], key: bytes, k: int) -> list[int]:
    """Teacher index of each patient: HMAC-SHA256(key, patient) mod k — a function of the patient
    alone within one invocation, so one report replaced changes at most two partitions."""
    return [int.from_bytes(hmac.new(key, str(p).encode(), hashlib.sha256).digest(), "big") % k for p in patients]


def expert_units(setting, table) -> tuple[Unit, int]:
    """(unit, N): the unit of PATE's guarantee — `privacy.unit` resolved on the expert table as
    `radpriv train` resolves it — and N, the expert training units (patients, counted as the
    partition counts them, or reports): the default δ and its check count these."""
    unit = resolve_unit(setting, table)
    return unit, training_units(table, unit)


def teacher_tables(table, k: int, key: bytes):
    """(k tables, each with one partition of the training reports (validation and test kept),
    number of expert training reports). Partition sizes are checked, never returned: they are
    exact functions of the expert reports."""
    patients = table.patient_ids or table.ids
    train_rows = [i for i, s in enumerate(table.split) if s == "train"]
    n_patients = len({patients[i] for i in train_rows})
    if k < 2:
        raise ConfigError(f"pate.k={k}: PATE needs at least 2 teachers")
    if k > n_patients:
        raise DataError(f"pate.k={k}: the expert data have {n_patients} training patients "
                        f"({len(train_rows)} reports); k teachers need at least k, use pate.k ≤ {n_patients}")
    train_patients = [patients[i] for i in train_rows]
    part = dict(zip(train_patients, partition_of(train_patients, key, k)))
    sizes = [sum(1 for i in train_rows if part[patients[i]] == t) for t in range(k)]
    if min(sizes) == 0:
        raise DataError(f"pate.k={k}: the random partition of the {n_patients} expert training patients "
                        "left a teacher without data; use a smaller pate.k")
    tables = []
    for t in range(k):
        idx = [i for i, s in enumerate(table.split) if s != "train" or part[patients[i]] == t]
        # the teacher's data summary counts the reports it left out: kept private, like the teacher runs
        tables.append(replace(
            table, ids=tuple(table.ids[i] for i in idx), texts=tuple(table.texts[i] for i in idx),
            labels=table.labels[idx], split=tuple(table.split[i] for i in idx),
            patient_ids=None if table.patient_ids is None else tuple(table.patient_ids[i] for i in idx),
            excluded={**table.excluded, f"training reports outside PATE partition {t}/{k}": len(train_rows) - sizes[t]},
        ))
    return tables, len(train_rows)


# --------------------------------------------------------------------------- command

@dataclass
class PateOptions:
    k: int
    sigma: float
    input: Path
    output: Path
    delta: float | None = None
    seed: int | None = None  # tests only: reproducible partition and noise, and then no ε is claimed
    text_columns: list[str] | None = None
    id_column: str | None = None
    batch_size: int = 32
    num_threads: int | None = None
    progress_bar: bool = True


def parse_args(args: Sequence[str]) -> tuple[PateOptions, list[str]]:
    """`pate.<key>=<value>` are PATE's; everything else is a Hydra override for the teachers."""
    parsed = cli_args.parse(args, command="pate", keys=KEYS, required=("k", "sigma", "input", "output"),
                            example="radpriv pate data=ct_rate_text pate.k=5 pate.sigma=20 "
                                    "pate.input=unlabelled.csv pate.output=labels.csv",
                            prefix="pate.", aliases={}, rest_allowed=True)
    overrides = parsed.rest
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "privacy.epsilon" and value.strip().lower() not in ("null", "none", "inf"):
            raise ConfigError("pate: the teachers train without DP (privacy.epsilon=null); the privacy "
                              "of the expert reports comes from the noisy vote: set pate.sigma")
        if key == "trainer.thresholds" and value.strip() != "fixed":
            raise PrivacyError("pate: teachers use trainer.thresholds=fixed; thresholds fitted on the shared "
                               "validation split would make every teacher depend on the same reports")

    sigma = cli_args.real_number(parsed, "sigma", None)
    if sigma <= 0:
        raise ConfigError(f"pate.sigma={parsed['sigma']!r}: must be > 0 (σ = 0 is no privacy at all)")
    delta = cli_args.real_number(parsed, "delta", None)
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"pate.delta={parsed['delta']!r}: must be in (0, 1)")
    return PateOptions(
        k=cli_args.whole_number(parsed, "k", None, low=2), sigma=sigma,
        input=Path(parsed["input"]).expanduser(), output=Path(parsed["output"]).expanduser(), delta=delta,
        seed=cli_args.whole_number(parsed, "seed", None, low=0),
        text_columns=cli_args.comma_list(parsed.get("text_column")), id_column=parsed.get("id_column"),
        batch_size=cli_args.whole_number(parsed, "batch_size", 32),
        num_threads=cli_args.whole_number(parsed, "num_threads", None),
        progress_bar=cli_args.boolean(parsed, "progress_bar", True),
    ), [o for o in overrides if o not in FORCED]


def _teacher_votes(run_id: str, tracking_uri: str, texts: list[str], batch_size: int) -> np.ndarray:
    """One teacher's 0/1 votes (reports × labels) at its stored (fixed 0.5) thresholds."""
    from radpriv.model.bundle import load_bundle
    from radpriv.tracking.model_ref import local_bundle

    with tempfile.TemporaryDirectory() as tmp:
        model = load_bundle(local_bundle(run_id, tracking_uri, Path(tmp), f"teacher run {run_id}").folder)
    probs = labelling.predict_reports(model, texts, batch_size, progress=False)
    return (probs >= torch.as_tensor(model.thresholds, dtype=probs.dtype)).numpy().astype(np.int64)


#: what one protected unit is, in the guarantee's words: (who, what comes with them)
PROTECTED = {"report": ("each expert-labelled training report", ""),
             "patient": ("each expert training patient", ", with all their expert-labelled reports")}


def pate_guarantee(cost: dict, options: PateOptions, data_name: str) -> dict:
    """The labels' teacher guarantee: PATE's (ε, δ) per unit (cost["unit"]), or NOT PROTECTED when
    pate.seed fixed the randomness (whoever knows the seed can subtract the noise: no ε holds)."""
    from radpriv.teacher.provenance import NOT_PROTECTED

    unit = cost.get("unit", "report")
    who, with_them = PROTECTED[unit]
    mechanism = f"PATE, Gaussian noisy vote (σ={options.sigma:g}) of {options.k} non-private teachers"
    if options.seed is not None:
        return {"protected": False, "epsilon": None, "delta": None, "unit": unit,
                "mechanism": f"{mechanism}, seeded noise",
                "statement": (f"{NOT_PROTECTED}: pate.seed={options.seed} fixed the vote noise and the partition, "
                              "so anyone who knows the seed can remove the noise; these labels claim no ε for the "
                              f"expert reports of {data_name} (pate.seed is for tests only)")}
    return {
        "protected": True, "epsilon": cost["epsilon"], "delta": cost["delta"], "unit": unit, "mechanism": mechanism,
        "statement": (f"({cost['epsilon']:.4g}, {cost['delta']:.3g})-DP for {who} of {data_name}{with_them} "
                      f"({NEIGHBOURS[unit]}; PATE with {options.k} teachers, Gaussian vote noise "
                      f"σ={options.sigma:g}, {cost['n_queries']} queries of {cost['n_labels']} labels, "
                      "data-independent bound); the teachers use fixed thresholds, so the expert validation/test "
                      "reports do not influence the labels. The teachers and their MLflow runs are NOT "
                      "protected and must stay private"),
    }


def accounting_record(cost: dict, options: PateOptions) -> dict:
    """The provenance's `pate` block: data-independent numbers only, and no privacy claim (ε, μ)
    when pate.seed fixed the noise."""
    block = {**cost, "k": options.k, "noise_seeded": options.seed is not None,
             "prob_columns": "noisy vote share (n1 + N(0, σ²)) / k, clipped to [0, 1]"}
    if options.seed is not None:
        for key in (*EPSILON_KEYS, "mu"):
            block.pop(key, None)
    return block


def run_pate(options: PateOptions, overrides: list[str]) -> dict:
    """Check everything, train k teachers, vote, write the labelled CSV and its provenance."""
    from mlflow.entities import Param
    from omegaconf import open_dict
    from tqdm.auto import tqdm

    from radpriv.config import compose
    from radpriv.data.sources import load_table
    from radpriv.privacy import accounting
    from radpriv.teacher import provenance
    from radpriv.tracking import mlflow_run
    from radpriv.tracking.mlflow_run import tracking_uri as resolve_uri
    from radpriv.tracking.parent_run import open_parent_run
    from radpriv.train import train

    seeded = options.seed is not None
    cfg = compose([*overrides, *FORCED])
    labelling.check_writable(options.output)
    reports = labelling.read_input(options.input, options.text_columns, options.id_column)
    table = load_table(cfg.data, int(cfg.seed))
    labelling.check_columns(reports.extra_columns, table.label_names, options.input)
    # the teachers train without DP, so privacy.unit only names what the vote protects
    unit, n_expert = expert_units(cfg.privacy.unit, table)
    # the partition key is never written, logged or returned (partition_key)
    tables, _ = teacher_tables(table, options.k, partition_key(options.seed))
    delta = options.delta if options.delta is not None else accounting.default_delta(n_expert)
    accounting.check_delta(delta, n_expert)
    keep = [i for i, t in enumerate(reports.texts) if t.strip()]
    n_labels = len(table.label_names)
    cost = pate_epsilon(options.sigma, n_labels, len(keep), delta, unit.name)
    guarantee = pate_guarantee(cost, options, cfg.data.name)
    if seeded:
        log.warning("pate.seed=%d: the partition and the vote noise are reproducible from the seed; these labels "
                    "claim NO ε for the expert reports (%s). Use pate.seed for tests only", options.seed,
                    provenance.NOT_PROTECTED)
    else:
        log.info("PATE plan: k=%d teachers on %d expert training %ss, σ=%g on each of %d vote counts, "
                 "%d queries → ε=%.4g at δ=%.3g per %s (PLD %.4g, RDP %.4g, exact %.4g; replace-one, "
                 "data-independent)", options.k, n_expert, unit.name, options.sigma, n_labels, len(keep),
                 cost["epsilon"], delta, unit.name, cost["epsilon_pld"], cost["epsilon_rdp"], cost["epsilon_exact"])
        log.info("PATE unit: %s", unit.why)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    uri = resolve_uri(cfg.tracking.uri)
    texts = [reports.texts[i] for i in keep]
    counts = np.zeros((len(keep), n_labels), dtype=np.int64)
    teacher_runs: list[str] = []
    client = mlflow_run.client(cfg)
    with open_parent_run(client, mlflow_run.experiment_name(cfg), f"pate-k{options.k}-sigma{options.sigma:g}",
                         {"radpriv.pate": "true"}) as parent_run:
        parent = parent_run.run_id
        # public, data-independent facts only: no count or size of the expert data
        client.log_batch(parent, params=[Param(f"pate.{k}", str(v)) for k, v in (
            ("k", options.k), ("sigma", options.sigma), ("delta", delta), ("n_queries", len(keep)),
            ("relation", RELATION), ("unit", unit.name), ("noise_seeded", str(seeded).lower()),
            ("data", cfg.data.name), ("model", cfg.model.name))])
        client.set_tag(parent, "radpriv.pate.protected", str(guarantee["protected"]).lower())
        for t in tqdm(range(options.k), desc="PATE teachers", unit="teacher", disable=not options.progress_bar):
            tcfg = compose([*overrides, *FORCED, f"tracking.parent_run_id={parent}",
                            f"run_name=pate-teacher-{t}of{options.k}"])
            with open_dict(tcfg):
                tcfg.tracking.tags = {**(tcfg.tracking.tags or {}),
                                      "radpriv.pate.teacher": f"{t}/{options.k}", "radpriv.pate.parent": parent}
            run_id = train(tcfg, table=tables[t])["run_id"]
            teacher_runs.append(run_id)
            counts += _teacher_votes(run_id, uri, texts, options.batch_size)
            log.info("PATE teacher %d/%d: run %s voted", t + 1, options.k, run_id)
        rng = np.random.default_rng(options.seed) if seeded else randomness.numpy_generator()
        labels, noisy = noisy_vote(counts, options.k, options.sigma, rng)
        del counts  # the exact vote counts are never written anywhere
        probs = torch.full((len(reports.texts), n_labels), math.nan, dtype=torch.float64)
        probs[keep] = torch.as_tensor(np.clip(noisy / options.k, 0.0, 1.0))
        empty = [not t.strip() for t in reports.texts]
        labelling.write_labelled(options.output, reports, probs, [0.5] * n_labels, table.label_names, empty)
        record = provenance.build(
            mode="pate", teacher={"kind": "pate", "k": options.k, "teacher_runs": teacher_runs,
                                  "parent_run_id": parent, "teacher_model": cfg.model.name,
                                  "expert_data": cfg.data.name},
            labels=table.label_names, guarantee=guarantee, output=options.output,
            n_reports=len(reports.ids), n_labelled=len(keep), pate=accounting_record(cost, options),
        )
        prov = provenance.write(record, options.output)
        if guarantee["protected"]:
            for key in EPSILON_KEYS:
                client.log_metric(parent, f"pate/{key}", float(cost[key]))
            client.log_metric(parent, "pate/delta", float(delta))
        with tempfile.TemporaryDirectory() as tmp:  # the published part only; the CSV holds report text
            public = Path(tmp) / provenance.ARTIFACT
            public.write_text(json.dumps(provenance.public_view(record), indent=2, default=float))
            client.log_artifact(parent, str(public))
    claimed = {k: (None if seeded else cost[k]) for k in (*EPSILON_KEYS, "delta")}
    log.info("PATE: %d reports labelled -> %s (+ %s); expert reports: %s", len(keep), options.output, prov.name,
             provenance.NOT_PROTECTED + " (seeded)" if seeded else f"ε={cost['epsilon']:.4g} at δ={delta:.3g}")
    return {"output": str(options.output), "provenance": str(prov), "run_id": parent, "teacher_runs": teacher_runs,
            "n_reports": len(reports.ids), "n_labelled": len(keep), "labels": list(table.label_names),
            "pate": {**claimed, "protected": guarantee["protected"], "relation": RELATION, "unit": unit.name,
                     **{k: cost[k] for k in ("sigma", "sensitivity", "noise_multiplier", "n_queries")}},
            "student": f"radpriv train data=csv data.path={options.output} data.id_column=id"}


def pate_command(args: Sequence[str]) -> dict:
    return run_pate(*parse_args(args))
