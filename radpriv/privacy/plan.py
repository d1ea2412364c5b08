"""Every privacy decision of a training run, made before any private data is touched.

`radpriv train` (radpriv/train.py) builds the data and the model and asks this module what the
run may do with them:

- whether the run is private at all (`is_private`), and so whether its batches are Poisson
  samples of privacy units (the sampled-Gaussian guarantee needs them) or plain shuffled batches
  of reports (`sampling_unit`), drawn from OS entropy under secure mode (`secure_sampling`);
- the batch sizes: the configured logical (expected) and physical batch (`check_batch_sizes`),
  the steps an epoch takes (`steps_per_epoch`), and the smaller logical batch a non-private run
  may use (`nonprivate_batch_size`, `logical_batch_size`);
- the privacy plan itself (`plan_privacy`): σ calibrated so that exactly the planned steps spend
  the target ε, cross-checked by the independent accountant;
- the DP release of the decision thresholds (`plan_dp_thresholds` before training,
  `choose_dp_thresholds` after it).

Nothing here talks to MLflow or reads data; the DataModule is only read for its counts
(units, sample rate, steps), so the audit can plan on a stand-in with the same attributes.
"""

from __future__ import annotations

import logging
import math

from omegaconf import DictConfig

from radpriv.data.patients import Unit
from radpriv.errors import ConfigError
from radpriv.privacy import accounting, independent_check
from radpriv.privacy.callback import DPCallback, PrivacyPlan

log = logging.getLogger(__name__)


def is_private(cfg: DictConfig) -> bool:
    """A DP run (privacy.epsilon set): its batches are Poisson samples of privacy units."""
    return accounting.resolve_epsilon(cfg.privacy.epsilon) is not None


def sampling_unit(cfg: DictConfig, unit: Unit) -> str:
    """The unit a run's batches sample: the privacy unit under DP (patients, with all their
    reports, at the patient unit); reports without DP, where no guarantee holds per patient."""
    return unit.name if is_private(cfg) else "report"


def secure_sampling(plan: PrivacyPlan | None) -> bool:
    """Batches drawn from OS entropy: only for a DP run with privacy.secure_mode."""
    return plan is not None and plan.secure_mode


def check_batch_sizes(cfg: DictConfig) -> None:
    """The configured logical (expected) and physical batch sizes, and the non-private batch a
    finetune mode may set; checked for every run, so a bad value is a one-line error either way."""
    if int(cfg.privacy.expected_batch_size) < 1 or int(cfg.privacy.max_physical_batch_size) < 1:
        raise ConfigError("privacy.expected_batch_size and privacy.max_physical_batch_size must be ≥ 1")
    own = cfg.finetune.get("nonprivate_batch_size")
    if own is not None and (isinstance(own, bool) or not isinstance(own, int) or own < 1):
        raise ConfigError(f"finetune.nonprivate_batch_size={own!r}: must be an integer ≥ 1 or null")


def steps_per_epoch(cfg: DictConfig, dm) -> int:
    """Optimisation steps per epoch, honouring trainer.limit_train_batches (smoke runs): the
    privacy plan counts exactly the steps the trainer will take."""
    limit = cfg.trainer.limit_train_batches
    if limit is None:
        return dm.steps_per_epoch
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(dm.steps_per_epoch * limit))
    return min(int(limit), dm.steps_per_epoch)


def nonprivate_batch_size(n_train: int, batch_size: int, min_steps_per_epoch) -> int:
    """Non-private logical batch: halved from `batch_size` until an epoch has ≥ min_steps steps.

    A DP batch is large because it divides the noise; with no noise, a few hundred reports in
    batches of 256 give too few optimisation steps (docs/RESULTS.md, "The CT probe").
    """
    if min_steps_per_epoch is None:
        return batch_size
    if int(min_steps_per_epoch) < 1:
        raise ConfigError(f"privacy.nonprivate_min_steps_per_epoch={min_steps_per_epoch}: must be ≥ 1 or null")
    while batch_size > 1 and math.ceil(n_train / batch_size) < int(min_steps_per_epoch):
        batch_size //= 2
    return batch_size


def logical_batch_size(cfg: DictConfig, dm, plan: PrivacyPlan | None) -> int:
    """The logical batch the run trains with: a DP run keeps the configured one (its q and σ were
    calibrated for it); a non-private run uses its mode's own non-private batch
    (finetune.nonprivate_batch_size, e.g. full fine-tuning's 32) or the configured one, halved
    until an epoch has privacy.nonprivate_min_steps_per_epoch steps."""
    if plan is not None:
        return dm.batch_size
    own = cfg.finetune.get("nonprivate_batch_size")
    return nonprivate_batch_size(dm.num_train, dm.batch_size if own is None else int(own),
                                 cfg.privacy.nonprivate_min_steps_per_epoch)


def plan_privacy(cfg: DictConfig, dm, max_epochs: int, unit: Unit) -> PrivacyPlan | None:
    """Calibrate σ so that exactly the planned steps spend the target ε (None: non-private).

    N, q and the steps count units: patients at the patient unit, else reports. `dm` is read for
    num_units, sample_rate, steps_per_epoch and max_reports_per_patient only."""
    p = cfg.privacy
    epsilon = accounting.resolve_epsilon(p.epsilon)
    if epsilon is None:
        return None
    n = dm.num_units
    delta = float(p.delta) if p.delta is not None else accounting.default_delta(n)
    accounting.check_delta(delta, n)
    if p.max_grad_norm is None or float(p.max_grad_norm) <= 0:
        raise ConfigError(f"privacy.max_grad_norm={p.max_grad_norm}: must be > 0 (null needs a "
                          "privacy.recipe_by_epsilon row that sets it)")
    steps = max_epochs * steps_per_epoch(cfg, dm)
    relation = accounting.GUARANTEE_RELATION  # N is published: replace-one (privacy/replace_one.py)
    calibration = accounting.calibrate_noise_multiplier(
        epsilon, delta, dm.sample_rate, steps, accountant=p.accountant, relation=relation)
    # the independent accountant must agree before any private data is touched, not after
    independent_check.cross_check(calibration.epsilon, str(p.accountant), calibration.noise_multiplier,
                                  dm.sample_rate, steps, delta, relation=relation)
    log.info("privacy plan: ε=%g δ=%.3g (%s, per %s) σ=%.4g q=%.4g steps=%d C=%g", epsilon, delta,
             relation.replace("_", "-"), unit.name, calibration.noise_multiplier, dm.sample_rate, steps,
             float(p.max_grad_norm))
    log.info("privacy unit: %s", unit.why)
    return PrivacyPlan(
        target_epsilon=epsilon, delta=delta, noise_multiplier=float(calibration.noise_multiplier),
        max_grad_norm=float(p.max_grad_norm), sample_rate=dm.sample_rate,
        expected_batch_size=int(p.expected_batch_size), planned_steps=steps,
        accountant=str(p.accountant), secure_mode=bool(p.secure_mode), adjacency=relation,
        unit=unit.name, unit_why=unit.why,
        max_reports_per_patient=dm.max_reports_per_patient if unit.name == "patient" else None,
    )


def plan_dp_thresholds(cfg: DictConfig, dm, plan: PrivacyPlan | None) -> float | None:
    """`trainer.thresholds=dp`: the noise std of the threshold release (radpriv/privacy/dp_thresholds.py),
    calibrated to `trainer.threshold_epsilon` (default: privacy.epsilon) at the run's δ; else None."""
    if cfg.trainer.thresholds != "dp":
        return None
    from radpriv.privacy import dp_thresholds

    if plan is None:
        raise ConfigError("trainer.thresholds=dp protects the validation reports of a private run: set "
                          "privacy.epsilon, or use trainer.thresholds=validation|fixed without DP")
    n_val = len(dm.splits["val"])
    if n_val < 2:
        raise ConfigError(f"trainer.thresholds=dp needs a validation split ({n_val} reports): set data.val_fraction")
    given = cfg.trainer.threshold_epsilon
    epsilon = plan.target_epsilon if given is None else accounting.resolve_epsilon(given)
    if epsilon is None:
        raise ConfigError(f"trainer.threshold_epsilon={given!r}: must be a positive number (null: privacy.epsilon)")
    accounting.check_delta(plan.delta, n_val)  # δ < 1/N for the validation reports too
    noise = dp_thresholds.calibrate_threshold_noise(epsilon, plan.delta, dm.table.num_labels)
    log.info("DP thresholds: ε=%g δ=%.3g on %d validation reports (noise std %.4g on every count)",
             epsilon, plan.delta, n_val, noise)
    return noise


def choose_dp_thresholds(module, dp: DPCallback) -> None:
    """Thresholds by the DP mechanism on `module` (a ReportClassifierModule after its validation
    pass), and what privacy.json says of it (ε, and the total composed with the training's steps,
    PLD under replace-one)."""
    from radpriv.privacy import dp_thresholds
    from radpriv.privacy.randomness import PrivateRandomness

    noise, plan, n_labels = module.threshold_noise, dp.plan, len(module.label_names)
    randomness = PrivateRandomness(plan.secure_mode)
    module.set_thresholds_from_validation(
        lambda probs, labels: dp_thresholds.dp_fit_thresholds(probs, labels, noise, randomness))
    module.threshold_privacy = {
        **dp_thresholds.release_record(noise, n_labels, plan.delta),
        "epsilon_total": dp_thresholds.composed_epsilon(dp.accountant.history, noise, n_labels, plan.delta)}
