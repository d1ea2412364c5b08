"""PATE: the noisy vote, the partition, the privacy accounting, bad input, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
import math

import mlflow
import numpy as np
import pytest
from scipy import stats

from radpriv.cli import run
from radpriv.errors import ConfigError, DataError, PrivacyError
from radpriv.teacher import pate
from radpriv.teacher.provenance import add_teacher_guarantee
from tests.synthetic import PATIENT_CSV, synthetic_table, write_patient_csv, write_unlabelled_csv

TINY = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=48", "trainer.max_epochs=1",
        "trainer.progress_bar=false", "trainer.eval_batch_size=16", "privacy.expected_batch_size=8"]


# --------------------------------------------------------------------------- noisy vote

def test_vote_noise_has_the_configured_standard_deviation():
    """Fixed votes, many queries: noisy − true counts are N(0, σ²) (mean, sd, and a KS test)."""
    k, sigma = 7, 3.0
    counts = np.tile(np.arange(k + 1), (2500, 1))  # 2500 reports × 8 labels, every count 0..k
    labels, noisy = pate.noisy_vote(counts, k, sigma, np.random.default_rng(1))
    noise = (noisy - counts).ravel()
    n = noise.size
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(n)
    # sd of the sample sd ≈ σ/√(2n): 5 of them is a generous, still sharp, band
    assert abs(noise.std(ddof=1) - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert stats.kstest(noise / sigma, "norm").pvalue > 1e-3
    assert np.array_equal(labels, (noisy > k / 2).astype(int))
    # a vote count far above k/2 is almost always 1, far below almost always 0, k/2 a coin
    assert labels[:, k].mean() > 0.85 and labels[:, 0].mean() < 0.15
    # P(label 1 | count c) = Φ((c − k/2)/σ), for every count
    for c in range(k + 1):
        p = stats.norm.cdf((c - k / 2) / sigma)
        assert abs(labels[:, c].mean() - p) < 4 * math.sqrt(p * (1 - p) / 2500) + 1e-9


def test_vote_without_meaningful_noise_is_the_majority():
    counts = np.array([[0, 1, 2, 3, 4, 5]])
    labels, _ = pate.noisy_vote(counts, 5, 1e-9, np.random.default_rng(0))
    assert labels.tolist() == [[0, 0, 0, 1, 1, 1]]


# --------------------------------------------------------------------------- accounting

def _direct_dp_accounting(sigma, L, Q, delta, sensitivity):
    """The same bound computed straight from dp-accounting's PLD library, written independently:
    the Gaussian mechanism with the vote noise σ and the query's L2 sensitivity (no noise
    multiplier), self-composed Q times."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    one = pld.from_gaussian_mechanism(standard_deviation=sigma, sensitivity=sensitivity)
    return one.self_compose(Q).get_epsilon_for_delta(delta)


def _gdp_epsilon(mu, delta):
    """ε of μ-GDP at δ by bisection on the privacy profile (scipy.stats, not pate's solver)."""
    def profile(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)

    lo, hi = 0.0, 1.0
    while profile(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if profile(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("sigma, L, Q, delta", [(40.0, 18, 50, 1e-5), (8.0, 1, 20, 1e-4), (100.0, 18, 280, 280 ** -1.1),
                                                (300.0, 14, 1000, 1e-6)])
def test_replace_one_epsilon_equals_an_independent_computation(sigma, L, Q, delta):
    """One report replaced moves two teachers: each count by ≤ 2, L2 sensitivity 2√L."""
    cost = pate.pate_epsilon(sigma, L, Q, delta)
    assert cost["sensitivity"] == pytest.approx(2 * math.sqrt(L))
    assert cost["noise_multiplier"] == pytest.approx(sigma / (2 * math.sqrt(L)))
    assert cost["mu"] == pytest.approx(2 * math.sqrt(Q * L) / sigma)
    assert cost["epsilon_pld"] == pytest.approx(_direct_dp_accounting(sigma, L, Q, delta, 2 * math.sqrt(L)), rel=2e-3)
    assert cost["epsilon_exact"] == pytest.approx(_gdp_epsilon(2 * math.sqrt(Q * L) / sigma, delta), rel=1e-6)
    # the exact Gaussian-DP value is a lower envelope the PLD upper bound must not undercut
    assert cost["epsilon_exact"] <= cost["epsilon_pld"] * (1 + 1e-3)
    assert cost["epsilon_exact"] == pytest.approx(cost["epsilon_pld"], rel=0.02)
    assert cost["epsilon_rdp"] >= cost["epsilon_pld"] * 0.999  # RDP is the looser bound
    assert cost["epsilon"] == max(cost["epsilon_pld"], cost["epsilon_exact"])
    assert cost["relation"] == "replace_one" and "replace one" in cost["neighbouring"]


def test_the_relation_is_the_projects_guarantee_relation():
    from radpriv.privacy import accounting

    assert pate.RELATION == accounting.GUARANTEE_RELATION


@pytest.mark.parametrize("sigma, L, Q, delta", [(4000.0, 18, 280, 1e-5), (2000.0, 18, 50, 1e-5), (200.0, 1, 20, 1e-4)])
def test_replace_one_costs_about_twice_add_remove_at_small_epsilon(sigma, L, Q, delta):
    """Twice the sensitivity is half the noise: ε(σ) under replace-one is add/remove's ε(σ/2),
    2–2.5× add/remove's ε(σ) where ε is small (ε grows slightly faster than μ)."""
    cost = pate.pate_epsilon(sigma, L, Q, delta)
    add_remove = _direct_dp_accounting(sigma, L, Q, delta, math.sqrt(L))
    assert cost["epsilon"] < 0.2
    assert 2.0 <= cost["epsilon"] / add_remove <= 2.5
    assert cost["epsilon_pld"] == pytest.approx(_direct_dp_accounting(sigma / 2, L, Q, delta, math.sqrt(L)), rel=2e-3)


def test_exact_gaussian_epsilon_matches_the_closed_form_privacy_profile():
    """δ(ε) of μ-GDP at the returned ε is the δ asked for (Balle & Wang 2018)."""
    mu, delta = 1.3, 1e-5
    eps = pate.gaussian_dp_epsilon(mu, delta)
    profile = stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
    assert profile == pytest.approx(delta, rel=1e-6)


def test_more_labels_queries_or_less_noise_cost_more():
    base = pate.pate_epsilon(50, 18, 20, 1e-5)["epsilon"]
    assert pate.pate_epsilon(50, 18, 40, 1e-5)["epsilon"] > base
    assert pate.pate_epsilon(50, 36, 20, 1e-5)["epsilon"] > base
    assert pate.pate_epsilon(25, 18, 20, 1e-5)["epsilon"] > base
    assert pate.pate_epsilon(50, 18, 0, 1e-5)["epsilon"] == 0.0
    with pytest.raises(PrivacyError):
        pate.pate_epsilon(0, 18, 10, 1e-5)


# --------------------------------------------------------------------------- partition

def test_partition_depends_on_the_patient_alone_within_one_invocation():
    patients = [f"p{i}" for i in range(300)]
    key = pate.partition_key()
    parts = pate.partition_of(patients, key, 5)
    assert set(parts) == set(range(5)) and min(np.bincount(parts)) > 30
    assert pate.partition_of(patients, key, 5) == parts  # the same key: the same assignment
    # replacing one patient's report by a new patient's changes no other patient's teacher
    replaced = [*patients[:150], "new", *patients[151:]]
    assert pate.partition_of(replaced, key, 5) == [*parts[:150], *pate.partition_of(["new"], key, 5), *parts[151:]]
    # and the assignment does not depend on the order of the reports
    assert pate.partition_of(patients[::-1], key, 5) == parts[::-1]


def _neighbour_without(table, patient: str, new_reports: int):
    """`table` with every report of `patient` replaced by `new_reports` training reports of a new
    patient: neighbouring under replace-one-patient adjacency (same number of patients)."""
    import dataclasses

    keep = [i for i, p in enumerate(table.patient_ids) if p != patient]
    return dataclasses.replace(
        table, ids=tuple([table.ids[i] for i in keep] + [f"NEW-r{j}" for j in range(new_reports)]),
        texts=tuple([table.texts[i] for i in keep] + ["new"] * new_reports),
        labels=np.concatenate([table.labels[keep], np.ones((new_reports, table.num_labels), np.float32)]),
        split=tuple([table.split[i] for i in keep] + ["train"] * new_reports),
        patient_ids=tuple([table.patient_ids[i] for i in keep] + ["NEW"] * new_reports))


def test_replacing_one_patient_with_all_their_reports_changes_at_most_two_teachers():
    """The sensitivity argument at the patient unit, on the partition itself: whatever the number
    of reports of the patient removed and of the one added, at most two teachers' training sets
    differ, so each vote count moves by at most 2 (a teacher votes 0 or 1)."""
    table = _patient_table(n=120, max_reports=5)
    train_patients = sorted({p for p, s in zip(table.patient_ids, table.split) if s == "train"})
    key = pate.partition_key()
    before, _ = pate.teacher_tables(table, 5, key)
    for patient, added in [(train_patients[0], 1), (train_patients[7], 9), (train_patients[-1], 3)]:
        after, _ = pate.teacher_tables(_neighbour_without(table, patient, added), 5, key)
        changed = [t for t in range(5) if _train_ids(before[t]) != _train_ids(after[t])]
        assert 1 <= len(changed) <= 2
        removed_from = pate.partition_of([patient], key, 5)[0]
        assert set(changed) <= {removed_from, pate.partition_of(["NEW"], key, 5)[0]}
    assert pate.vote_sensitivity(3) == pytest.approx(math.sqrt(sum(2 ** 2 for _ in range(3))))


def _train_ids(table) -> frozenset:
    return frozenset(i for i, s in zip(table.ids, table.split) if s == "train")


def _patient_table(n: int = 40, max_reports: int = 6, seed: int = 0):
    """A ReportTable of fabricated patients with several reports each (a patient in one split)."""
    import dataclasses

    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_reports + 1, size=n)
    patients = [f"P{k}" for k, c in enumerate(counts) for _ in range(c)]
    base = synthetic_table(len(patients), seed=seed)
    split = tuple("test" if int(p[1:]) % 5 == 0 else "val" if int(p[1:]) % 5 == 1 else "train" for p in patients)
    return dataclasses.replace(base, split=split, patient_ids=tuple(patients), patient_source="test patients")


def test_two_invocations_draw_different_secret_partitions():
    """A fresh 256-bit key per invocation: two assignments of 300 patients to 5 teachers agree
    by chance with probability 5^-300."""
    patients = [f"p{i}" for i in range(300)]
    key_a, key_b = pate.partition_key(), pate.partition_key()
    assert len(key_a) == 32 and key_a != key_b
    assert pate.partition_of(patients, key_a, 5) != pate.partition_of(patients, key_b, 5)
    # pate.seed (tests only) makes the key a function of the seed
    assert pate.partition_key(3) == pate.partition_key(3) != pate.partition_key(4)


def test_teacher_tables_are_disjoint_and_keep_validation_and_test():
    table = synthetic_table(n=60)
    tables, n_train = pate.teacher_tables(table, 3, pate.partition_key())
    trains = [{i for i, s in zip(t.ids, t.split) if s == "train"} for t in tables]
    assert n_train == table.split.count("train") == sum(len(t) for t in trains)
    assert all(not (a & b) for i, a in enumerate(trains) for b in trains[i + 1:])
    held = {i for i, s in zip(table.ids, table.split) if s != "train"}
    assert all(held <= set(t.ids) for t in tables)


def test_k_larger_than_the_expert_reports_allow_is_one_line():
    table = synthetic_table(n=20)
    n_train = table.split.count("train")
    with pytest.raises(DataError, match="pate.k"):
        pate.teacher_tables(table, n_train + 1, pate.partition_key())
    with pytest.raises(ConfigError):
        pate.teacher_tables(table, 1, pate.partition_key())


@pytest.mark.parametrize("args, match", [
    (["pate.k=5", "pate.input=a.csv", "pate.output=b.csv"], "pate.sigma"),
    (["pate.k=5", "pate.sigma=0", "pate.input=a.csv", "pate.output=b.csv"], "sigma"),
    (["pate.k=1", "pate.sigma=3", "pate.input=a.csv", "pate.output=b.csv"], "pate.k"),
    (["pate.k=3", "pate.sigma=3", "pate.input=a.csv", "pate.output=b.csv", "privacy.epsilon=1"], "without DP"),
    (["pate.k=3", "pate.sigma=3", "pate.input=a.csv", "pate.output=b.csv", "trainer.thresholds=validation"],
     "fixed"),
    (["pate.bogus=1"], "unexpected"),
])
def test_bad_arguments_are_one_line_errors(args, match):
    with pytest.raises((ConfigError, PrivacyError), match=match):
        pate.parse_args(args)


# --------------------------------------------------------------------------- a run, teachers faked

FORBIDDEN_KEYS = ("partition_sizes", "n_expert", "output_sha256", "n_reports", "n_labelled", "thresholds")
INTEGER_KEYS = {"version", "k", "n_labels", "n_queries"}  # the only counts a published record may hold


class FakeTeachers:
    """Stands in for `train` and `_teacher_votes`: records each teacher's training ids and votes
    1 on a label when its training set's size and the label index have the same parity (so the
    votes depend on the partition)."""

    def __init__(self, n_labels: int = 18):
        self.train_ids: list[frozenset] = []
        self.n_labels = n_labels

    def train(self, cfg, table):
        self.train_ids.append(frozenset(i for i, s in zip(table.ids, table.split) if s == "train"))
        return {"run_id": f"teacher{len(self.train_ids)}"}

    def votes(self, run_id, uri, texts, batch_size):
        n = len(self.train_ids[int(run_id.removeprefix("teacher")) - 1])
        return np.tile([(n + j) % 2 for j in range(self.n_labels)], (len(texts), 1)).astype(np.int64)


@pytest.fixture
def fake_pate(tracking_uri, reports_csv, tmp_path, monkeypatch):
    """run(extra args) → (summary, teachers, output path): `radpriv pate` with faked teachers."""
    import radpriv.train

    csv_path, texts = reports_csv
    unlabelled = write_unlabelled_csv(tmp_path / "unlabelled.csv", texts, 23)

    def run_once(*extra, name="pate.csv"):
        teachers = FakeTeachers()
        monkeypatch.setattr(radpriv.train, "train", teachers.train)
        monkeypatch.setattr(pate, "_teacher_votes", teachers.votes)
        out = tmp_path / name
        summary = pate.pate_command([*TINY, f"data.path={csv_path}", "pate.k=3", "pate.sigma=30",
                                     f"pate.input={unlabelled}", f"pate.output={out}", "pate.progress_bar=false",
                                     *extra])
        return summary, teachers, out

    return run_once


def _published(tracking_uri, run_id, tmp_path) -> tuple[dict, dict, dict, dict]:
    """(params, tags, metrics, public provenance artifact) of a PATE parent run."""
    from radpriv.teacher.provenance import ARTIFACT

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert [a.path for a in client.list_artifacts(run_id)] == [ARTIFACT]
    artifact = json.loads(open(client.download_artifacts(run_id, ARTIFACT, str(tmp_path))).read())
    return run.data.params, run.data.tags, run.data.metrics, artifact


def _leaves(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, key)
    else:
        yield key, value


def _n_expert_train(csv_path) -> int:
    from radpriv.config import compose
    from radpriv.data.sources import load_table

    cfg = compose([*TINY, f"data.path={csv_path}"])
    return load_table(cfg.data, int(cfg.seed)).split.count("train")


@pytest.mark.integration
def test_a_pate_run_publishes_its_epsilon_and_no_count_of_the_expert_data(fake_pate, tracking_uri, reports_csv,
                                                                          tmp_path):
    from radpriv.teacher.provenance import file_sha256, public_view

    summary, teachers, out = fake_pate()
    n_expert = sum(len(t) for t in teachers.train_ids)
    assert n_expert == _n_expert_train(reports_csv[0])
    sizes = sorted(len(t) for t in teachers.train_ids)
    expected = pate.pate_epsilon(30, 18, 23, 1 / n_expert ** 1.1)
    params, tags, metrics, artifact = _published(tracking_uri, summary["run_id"], tmp_path)

    assert metrics["pate/epsilon"] == pytest.approx(expected["epsilon"])
    assert artifact["teacher_guarantee"]["protected"] is True
    assert artifact["teacher_guarantee"]["epsilon"] == pytest.approx(expected["epsilon"])
    assert "replace one" in artifact["teacher_guarantee"]["statement"]
    assert artifact["pate"]["n_queries"] == 23 and artifact["pate"]["relation"] == "replace_one"
    assert tags["radpriv.pate.protected"] == "true"
    local = json.loads(out.with_name(out.name + ".provenance.json").read_text())
    assert artifact == json.loads(json.dumps(public_view(local)))

    # scan everything published: no count or size of the expert data, no hash of the CSV
    sha = file_sha256(out)
    published = json.dumps([params, {k: v for k, v in tags.items() if not k.startswith("mlflow.")}, metrics, artifact])
    assert sha not in published and not any(f'"{key}"' in published for key in FORBIDDEN_KEYS)
    assert str(n_expert) not in params.values() and not any(str(n) in params.values() for n in sizes)
    assert {k for k, v in _leaves(artifact) if isinstance(v, int) and not isinstance(v, bool)} <= INTEGER_KEYS
    assert set(params) == {f"pate.{k}" for k in ("k", "sigma", "delta", "n_queries", "relation", "unit",
                                                  "noise_seeded", "data", "model")}
    # ct_rate_text names no patient: the guarantee is per report, as before
    assert params["pate.unit"] == "report" and artifact["pate"]["unit"] == "report"
    assert artifact["teacher_guarantee"]["unit"] == "report"
    assert "each expert-labelled training report" in artifact["teacher_guarantee"]["statement"]
    # the local file beside the CSV keeps its counts but never the partition sizes
    assert local["n_labelled"] == 23 and '"partition_sizes"' not in json.dumps(local)


@pytest.mark.integration
def test_two_invocations_partition_and_vote_differently(fake_pate):
    _, first, out_a = fake_pate(name="a.csv")
    _, second, out_b = fake_pate(name="b.csv")
    assert sum(map(len, first.train_ids)) == sum(map(len, second.train_ids))
    assert set(first.train_ids) != set(second.train_ids)  # a fresh secret key each time
    assert out_a.read_text() != out_b.read_text()  # and fresh noise


@pytest.mark.integration
def test_a_seeded_run_claims_no_epsilon(fake_pate, tracking_uri, tmp_path, caplog):
    summary, teachers, out = fake_pate("pate.seed=3")
    assert any(r.levelname == "WARNING" and "pate.seed" in r.getMessage() and "NO ε" in r.getMessage()
               for r in caplog.records)
    params, tags, metrics, artifact = _published(tracking_uri, summary["run_id"], tmp_path)
    g = artifact["teacher_guarantee"]
    assert g["protected"] is False and g["epsilon"] is None and g["delta"] is None
    assert g["statement"].startswith("NOT PROTECTED") and "seed" in g["statement"]
    assert not any(k.startswith("pate/epsilon") for k in metrics)
    assert not any(k.startswith("epsilon") or k == "mu" for k in artifact["pate"])
    assert artifact["pate"]["noise_seeded"] is True and params["pate.noise_seeded"] == "true"
    assert tags["radpriv.pate.protected"] == "false"
    local = json.loads(out.with_name(out.name + ".provenance.json").read_text())
    assert local["teacher_guarantee"]["epsilon"] is None and not any(k.startswith("epsilon") for k in local["pate"])
    assert summary["pate"]["epsilon"] is None and summary["pate"]["protected"] is False
    # the seed reproduces partition and noise: the same labels again
    _, again, out_again = fake_pate("pate.seed=3", name="again.csv")
    assert again.train_ids == teachers.train_ids and out_again.read_text() == out.read_text()


@pytest.mark.integration
@pytest.mark.parametrize("unit", ["auto", "report"])
def test_a_pate_run_on_patients_protects_each_patient(tracking_uri, tmp_path, monkeypatch, unit):
    """Expert data that name patients: the guarantee is per expert training patient (δ from their
    number; the same ε, sensitivity 2√L); privacy.unit=report asks for the report guarantee."""
    import radpriv.train
    from radpriv.config import compose
    from radpriv.data.sources import load_table

    path = tmp_path / "patients.csv"
    reports = write_patient_csv(path, n_patients=40, seed=2)
    data = [*PATIENT_CSV, f"data.path={path}", f"privacy.unit={unit}"]
    table = load_table(compose(data).data, 42)
    rows = [i for i, s in enumerate(table.split) if s == "train"]
    n_patients, n_reports = len({table.patient_ids[i] for i in rows}), len(rows)
    assert n_patients < n_reports
    unlabelled = write_unlabelled_csv(tmp_path / "u.csv", [f"invented query {i}." for i in range(9)], 9)
    teachers = FakeTeachers(n_labels=3)
    monkeypatch.setattr(radpriv.train, "train", teachers.train)
    monkeypatch.setattr(pate, "_teacher_votes", teachers.votes)
    out = tmp_path / "labels.csv"
    summary = pate.pate_command([*TINY[:1], "data.max_length=48", *data, "pate.k=3", "pate.sigma=30",
                                 f"pate.input={unlabelled}", f"pate.output={out}", "pate.progress_bar=false"])
    # every patient's training reports went to one teacher, whatever the unit
    for ids in reports.values():
        train_ids = {r for r in ids if r in {table.ids[i] for i in rows}}
        assert sum(bool(train_ids & t) for t in teachers.train_ids) <= 1

    by_patient = unit == "auto"
    n = n_patients if by_patient else n_reports
    expected = pate.pate_epsilon(30, 3, 9, 1 / n ** 1.1, "patient" if by_patient else "report")
    assert expected["sensitivity"] == pytest.approx(2 * math.sqrt(3))  # per patient as per report
    params, _, metrics, artifact = _published(tracking_uri, summary["run_id"], tmp_path)
    g = artifact["teacher_guarantee"]
    assert metrics["pate/delta"] == pytest.approx(1 / n ** 1.1) and g["epsilon"] == pytest.approx(expected["epsilon"])
    assert summary["pate"]["unit"] == params["pate.unit"] == artifact["pate"]["unit"] == g["unit"]
    if by_patient:
        assert g["unit"] == "patient" and "each expert training patient of csv, with all their" in g["statement"]
        assert "replace one expert training patient" in g["statement"]
        assert "replace one expert training patient" in artifact["pate"]["neighbouring"]
    else:
        assert g["unit"] == "report" and "each expert-labelled training report" in g["statement"]
    # neither count of the expert data is published (δ is a function of the unit's N, declared public)
    published = json.dumps([params, metrics, artifact])
    assert f'"{n_reports}"' not in published and f'"{n_patients}"' not in published
    assert {k for k, v in _leaves(artifact) if isinstance(v, int) and not isinstance(v, bool)} <= INTEGER_KEYS
    # a student trained on these labels states the teacher's unit beside its own
    privacy = {"private": True, "guarantee": "student"}
    add_teacher_guarantee(privacy, {"name": "csv", "path": str(out), "provenance": None})
    assert privacy["teacher"]["unit"] == g["unit"]
    assert privacy["guarantees"]["teacher_training_reports"] == g["statement"]


def test_a_dp_teacher_at_the_patient_unit_says_patient():
    from radpriv.teacher.provenance import single_teacher_guarantee

    g = single_teacher_guarantee({"private": True, "epsilon": 1.0, "delta": 1e-5, "unit": "patient"})
    assert g["unit"] == "patient" and "for each patient (with all their reports)" in g["statement"]
    old = single_teacher_guarantee({"private": True, "epsilon": 1.0, "delta": 1e-5})  # facts with no unit
    assert old["unit"] == "report" and "for each report of" in old["statement"]


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_pate_labels_with_two_tiny_teachers(tracking_uri, reports_csv, tmp_path, capsys):
    csv_path, texts = reports_csv
    unlabelled = write_unlabelled_csv(tmp_path / "unlabelled.csv", texts, 12)
    out = tmp_path / "pate.csv"
    assert run(["label", "teacher.mode=pate", *TINY, f"data.path={csv_path}", "pate.k=2", "pate.sigma=30",
                f"pate.input={unlabelled}", f"pate.output={out}", "pate.progress_bar=false"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["teacher_runs"]) == 2
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and rows[-1]["Cardiomegaly"] == ""
    assert {r["Cardiomegaly"] for r in rows[:-1]} <= {"0", "1"}
    prov = json.loads((tmp_path / "pate.csv.provenance.json").read_text())
    assert prov["mode"] == "pate" and prov["teacher_guarantee"]["protected"] is True
    expected = pate.pate_epsilon(30, 18, 12, 1 / _n_expert_train(csv_path) ** 1.1)
    assert prov["teacher_guarantee"]["epsilon"] == pytest.approx(expected["epsilon"])
    assert prov["pate"]["n_queries"] == 12
    assert not any(t in json.dumps(prov) for t in texts)
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(summary["run_id"])
    assert parent.data.metrics["pate/epsilon"] == pytest.approx(expected["epsilon"])
    assert "pate.n_expert" not in parent.data.params
    for rid in summary["teacher_runs"]:
        child = client.get_run(rid)
        assert child.data.tags["mlflow.parentRunId"] == summary["run_id"]
        assert child.data.params["privacy.epsilon"] == "None"
        assert child.data.params["trainer.thresholds"] == "fixed"
