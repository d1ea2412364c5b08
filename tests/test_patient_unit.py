"""Patient-level DP-SGD: sampling patients, one clipped gradient per patient, accounting per patient.

Fabricated patients holding 1–6 reports each (tests/synthetic.py); tiny random encoders, CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleHooks

from radpriv.cli import run
from radpriv.config import compose
from radpriv.data.datamodule import LogicalBatchCollator
from radpriv.data.patients import PatientIndex, resolve_unit
from radpriv.data.sampling import PoissonBatchSampler
from radpriv.data.sources import load_table
from radpriv.data.tokens import tokenize_texts
from radpriv.errors import ConfigError
from radpriv.model.classifier import build_classifier
from radpriv.model.encoder import load_encoder, resolve_spec
from radpriv.model.module import per_sample_loss
from radpriv.privacy.dp_step import DPStep, NoisyDPOptimizer
from radpriv.privacy.randomness import PrivateRandomness
from tests.helpers.dp import LORA
from tests.synthetic import PATIENT_CSV, synthetic_table, write_patient_csv

TINY = ["model=tiny_bert", "data.max_length=32", "trainer.max_epochs=2", "trainer.progress_bar=false",
        "privacy.expected_batch_size=4", "privacy.max_physical_batch_size=8", "privacy.max_reports_per_patient=6",
        "trainer.eval_batch_size=32", "tracking.log_model=false"]


@pytest.fixture
def patient_csv(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    path = tmp_path_factory.mktemp("patients") / "patients.csv"
    return path, write_patient_csv(path)


def patient_table(path: Path):
    cfg = compose([*PATIENT_CSV, f"data.path={path}"])
    return load_table(cfg.data, 42)


# --- which unit, and the patients of a split ------------------------------------------------------

def test_the_unit_follows_the_format_never_the_data(patient_csv):
    table = patient_table(patient_csv[0])
    assert resolve_unit("auto", table).name == "patient"
    assert "data.patient_column" in resolve_unit("auto", table).why
    assert resolve_unit("report", table).name == "report" and "group privacy" in resolve_unit("report", table).why
    # a table whose format names no patient: each report is its own, and the run says why
    plain = synthetic_table(12)
    assert plain.patient_source is None
    unit = resolve_unit(None, plain)
    assert unit.name == "report" and "names no patient" in unit.why
    with pytest.raises(ConfigError, match="privacy.unit"):
        resolve_unit("family", table)


def test_a_patients_reports_never_straddle_the_splits(patient_csv):
    table = patient_table(patient_csv[0])
    splits_of: dict[str, set] = {}
    for p, s in zip(table.patient_ids, table.split):
        splits_of.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in splits_of.values())
    assert {s for v in splits_of.values() for s in v} == {"train", "val", "test"}
    index = PatientIndex.of(table.subset("train"))
    train = table.subset("train")
    assert sum(len(m) for m in index.members) == len(train)
    for members in index.members:  # one patient per group, and every report of it
        assert len({train.patient_ids[i] for i in members}) == 1
    assert index.sizes().min() >= 1 and index.sizes().max() <= 6 and index.sizes().max() > 1


def test_patient_batches_bring_whole_capped_patients_into_one_chunk(patient_csv):
    table = patient_table(patient_csv[0]).subset("train")
    index = PatientIndex.of(table)
    q, cap = 0.3, 3
    sampler = PoissonBatchSampler(len(index), q, 400, PrivateRandomness(), groups=index.members, cap=cap)
    drawn = np.zeros(len(index))
    collate = LogicalBatchCollator(0, 5, patient_of=index.patient_of)
    ids = [np.array([1, 2, 3]) for _ in range(len(table))]
    for rows in sampler:
        patients = index.patient_of[rows]
        for p in set(patients.tolist()):
            mine = [r for r in rows if index.patient_of[r] == p]
            assert len(mine) == min(cap, len(index.members[p])) and set(mine) <= set(index.members[p].tolist())
            drawn[p] += 1
        batch = collate([(r, ids[r], table.labels[r]) for r in rows])
        seen = set()
        for chunk in batch.chunks:
            assert len(chunk["index"]) <= 5
            owners = index.patient_of[chunk["index"].numpy()]
            for local in chunk["patient"].unique().tolist():  # a chunk-local patient is one real patient
                assert len(set(owners[chunk["patient"].numpy() == local].tolist())) == 1
            assert not seen & set(owners.tolist())  # and never spans two chunks
            seen |= set(owners.tolist())
    # every patient joins each batch with probability q, however many reports it has
    assert np.all(np.abs(drawn / 400 - q) < 4.5 * math.sqrt(q * (1 - q) / 400))


# --- the step -------------------------------------------------------------------------------------

def _net_and_ids(table):
    encoder, tok = load_encoder(resolve_spec("tiny_bert"), seed=0)
    torch.manual_seed(0)
    net = build_classifier(encoder, table.num_labels, LORA)
    for n, p in net.named_parameters():  # non-zero lora_B: every trainable tensor has a gradient
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(1))
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    net.train()
    return net, tokenize_texts(table.texts, tok, 32)


def _dp_step(shims, net, batch, sigma: float, clip: float, b: int) -> torch.Tensor:
    params = [p for p in net.parameters() if p.requires_grad]
    hooks = GradSampleHooks(net, batch_first=True, loss_reduction="sum")
    opt = NoisyDPOptimizer(torch.optim.SGD(params, lr=1.0), randomness=PrivateRandomness(), noise_multiplier=sigma,
                           max_grad_norm=clip, expected_batch_size=b)

    module, wrapped = shims(net, opt)
    before = torch.cat([p.detach().flatten().clone() for p in params])
    DPStep()(module, wrapped, batch)
    hooks.cleanup()
    return before - torch.cat([p.detach().flatten() for p in params])


def test_a_patient_unit_step_clips_each_patients_summed_gradient(patient_csv, lightning_shims):
    """σ = 0, SGD lr 1: the update is Σ_patients clip_C(Σ_{i∈patient} ∇ℓ_i) / b, computed here by
    hand with plain autograd — and it differs from clipping each report on its own."""
    table = patient_table(patient_csv[0]).subset("train")
    index = PatientIndex.of(table)
    chosen = [p for p in range(len(index)) if len(index.members[p]) in (1, 3, 4)][:3]
    rows = [int(i) for p in chosen for i in index.members[p]]
    net, ids = _net_and_ids(table)
    params = [p for p in net.parameters() if p.requires_grad]

    def grad_of(i: int) -> torch.Tensor:
        net.zero_grad()
        item = LogicalBatchCollator(0, 1)([(i, ids[i], table.labels[i])]).chunks[0]
        per_sample_loss(net(item["input_ids"], item["attention_mask"]), item["labels"]).sum().backward()
        return torch.cat([p.grad.flatten().clone() for p in params])

    grads = {i: grad_of(i) for i in rows}
    norms = [float(sum(grads[int(i)] for i in index.members[p]).norm()) for p in chosen]
    clip, b = float(np.median(norms)), 2  # clipping binds for some patients, not all
    expected = sum(sum(grads[int(i)] for i in index.members[p]) * min(1.0, clip / n)
                   for p, n in zip(chosen, norms)) / b
    per_report = sum(g * min(1.0, clip / float(g.norm())) for g in grads.values()) / b
    assert not torch.allclose(expected, per_report, rtol=1e-3, atol=1e-7)

    net.zero_grad()
    batch = LogicalBatchCollator(0, 4, patient_of=index.patient_of)([(i, ids[i], table.labels[i]) for i in rows])
    assert len(batch.chunks) > 1  # several physical chunks, each with whole patients
    update = _dp_step(lightning_shims, net, batch, sigma=0.0, clip=clip, b=b)
    torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-7)


def test_patient_unit_noise_has_std_sigma_c_over_b(patient_csv, lightning_shims):
    """Zero-gradient reports (every label masked): each update is the noise alone, N(0, (σC/b)²)."""
    table = patient_table(patient_csv[0]).subset("train")
    table.labels[:] = -1.0
    index = PatientIndex.of(table)
    net, ids = _net_and_ids(table)
    sigma, clip, b = 2.0, 1e-2, 3
    rows = [int(i) for p in range(4) for i in index.members[p]]
    collate = LogicalBatchCollator(0, 8, patient_of=index.patient_of)
    d = torch.stack([_dp_step(lightning_shims, net, collate([(i, ids[i], table.labels[i]) for i in rows]),
                              sigma, clip, b)
                     for _ in range(15)])
    assert abs(float(d.std()) / (sigma * clip / b) - 1) < 0.05


# --- a whole run: N, q, δ and ε count patients ------------------------------------------------------

@pytest.mark.integration
def test_a_patient_unit_run_accounts_patients_and_publishes_no_report_count(patient_csv, tracking_uri, capsys):
    import dp_accounting
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import PLDAccountant

    path, reports = patient_csv
    assert run(["train", *TINY, *PATIENT_CSV, f"data.path={path}", "privacy.epsilon=2"]) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    client = mlflow.MlflowClient(tracking_uri)
    r = client.get_run(run_id)
    table = patient_table(path)
    train = table.subset("train")
    n_patients = len(set(train.patient_ids))
    assert n_patients < len(train)
    m = r.data.metrics
    q = 4 / n_patients
    steps = 2 * math.ceil(n_patients / 4)
    assert m["privacy/sample_rate"] == pytest.approx(q) and m["privacy/steps"] == steps
    assert m["privacy/delta"] == pytest.approx(1 / n_patients**1.1)
    accountant = PLDAccountant(NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-4)
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(m["privacy/noise_multiplier"])), steps))
    assert m["privacy/epsilon"] == pytest.approx(accountant.get_epsilon(m["privacy/delta"]), rel=0.01)
    assert r.data.params["privacy.unit_resolved"] == "patient" and r.data.tags["radpriv.unit"] == "patient"
    privacy = json.loads(Path(client.download_artifacts(run_id, "privacy.json")).read_text())
    assert privacy["unit"] == "patient" and privacy["n_train_patients"] == n_patients
    assert "n_train" not in privacy  # replacing a patient may change the number of reports: not published
    assert "for each patient" in privacy["guarantee"]


def test_the_cap_must_fit_a_physical_chunk(patient_csv, tracking_uri, capsys):
    from radpriv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, *PATIENT_CSV, f"data.path={patient_csv[0]}", "privacy.epsilon=2",
              "privacy.max_reports_per_patient=9"])
    assert exit_info.value.code == 2
    assert "max_reports_per_patient" in capsys.readouterr().err
