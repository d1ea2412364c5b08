"""radpriv/privacy/plan.py: the privacy decisions of a run, on stand-ins for the DataModule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from radpriv.config import compose
from radpriv.data.patients import Unit
from radpriv.errors import ConfigError
from radpriv.privacy import plan

REPORT = Unit("report", "each training report")
PATIENT = Unit("patient", "each patient, with all their reports")


def _dm(**kw):
    """What the plan reads of a ReportDataModule."""
    base = dict(num_units=400, sample_rate=0.08, steps_per_epoch=13, max_reports_per_patient=3,
                batch_size=32, num_train=400)
    return SimpleNamespace(**{**base, **kw})


def test_poisson_batches_and_their_unit_only_under_dp():
    private, public = compose(["privacy.epsilon=3"]), compose(["privacy.epsilon=null"])
    assert plan.is_private(private) and not plan.is_private(public)
    assert plan.sampling_unit(private, PATIENT) == "patient"
    assert plan.sampling_unit(public, PATIENT) == "report"  # no guarantee to hold per patient


def test_steps_per_epoch_honours_limit_train_batches():
    dm = _dm(steps_per_epoch=13)
    assert plan.steps_per_epoch(compose([]), dm) == 13
    assert plan.steps_per_epoch(compose(["+trainer.limit_train_batches=0.5"]), dm) == 6
    assert plan.steps_per_epoch(compose(["+trainer.limit_train_batches=4"]), dm) == 4
    assert plan.steps_per_epoch(compose(["+trainer.limit_train_batches=40"]), dm) == 13


def test_the_plan_spends_the_target_on_exactly_the_planned_steps():
    cfg = compose(["privacy.epsilon=3", "trainer.max_epochs=2"])
    p = plan.plan_privacy(cfg, _dm(), 2, PATIENT)
    assert p.target_epsilon == 3 and p.planned_steps == 26 and p.sample_rate == 0.08
    assert p.unit == "patient" and p.max_reports_per_patient == 3 and p.noise_multiplier > 0
    assert plan.secure_sampling(p) == bool(cfg.privacy.get("secure_mode", False))
    assert plan.plan_privacy(compose(["privacy.epsilon=null"]), _dm(), 2, REPORT) is None
    assert plan.secure_sampling(None) is False
    # a DP run keeps its calibrated batch; without DP the batch may shrink
    assert plan.logical_batch_size(cfg, _dm(batch_size=256), p) == 256
    public = compose(["privacy.epsilon=null", "privacy.nonprivate_min_steps_per_epoch=10"])
    assert plan.logical_batch_size(public, _dm(batch_size=256), None) == 32


def test_batch_sizes_are_checked_for_every_run():
    plan.check_batch_sizes(compose([]))
    with pytest.raises(ConfigError, match="max_physical_batch_size"):
        plan.check_batch_sizes(compose(["privacy.max_physical_batch_size=0"]))
    with pytest.raises(ConfigError, match="finetune.nonprivate_batch_size"):
        plan.check_batch_sizes(compose(["+finetune.nonprivate_batch_size=0"]))


def test_dp_thresholds_need_a_private_run():
    assert plan.plan_dp_thresholds(compose(["trainer.thresholds=validation"]), _dm(), None) is None
    with pytest.raises(ConfigError, match="trainer.thresholds=dp protects"):
        plan.plan_dp_thresholds(compose(["trainer.thresholds=dp", "privacy.epsilon=null"]), _dm(), None)
