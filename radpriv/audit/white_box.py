"""White-box audit of the DP-SGD step: gradient canaries through radpriv's own sampling, batching,
per-patient summing, clipping and noise (`radpriv audit audit.mode=white_box`).

The black-box audit (radpriv/audit/run.py) scores canaries by the final model's loss: the noise
a claim requires keeps that signal weak, and at the patient unit it could not turn a k-fold
sensitivity bug into a bound above the claim (docs/RESULTS.md, "Patients"). Here the auditor is
the adversary of the DP-SGD analysis, who sees every noisy update, and the canaries are *Dirac
gradient canaries* (Nasr et al. 2023; the white-box setting of Steinke, Nasr & Jagielski 2023):
canary i's reports each have the gradient C·e_i on a coordinate of their own, a coordinate no
other report touches, so the sum of the noisy updates on e_i is exactly what the mechanism let
through about canary i.

What runs is the private run's mechanism on the real data's shape: N training units (patients
with their report counts, or reports) plus the canaries the coins keep, q = b/N, the planned
steps, σ calibrated for the claim as `radpriv train` calibrates it, and radpriv's own
PoissonBatchSampler (with the reports-per-patient cap), LogicalBatchCollator (a patient's
reports in one chunk), DPStep with `per_patient`, Opacus' per-sample gradients and clipping,
and NoisyDPOptimizer's noise. Real reports are rows with zero gradient: no report text is read
into the model, and nothing is logged to MLflow. The model is one linear map with a loss linear
in its weights, so with SGD at lr 1 its final weights are minus the sum of the noisy updates.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from radpriv.data.patients import PatientIndex, privacy_unit
from radpriv.errors import ConfigError

log = logging.getLogger(__name__)

METHOD = ("one-run ε lower bound of Steinke, Nasr & Jagielski (NeurIPS 2023), white-box: Dirac gradient "
          "canaries (one coordinate each) through radpriv's sampler, collator, per-patient sum, clipping and "
          "noise; canary score = minus the sum of the noisy updates on its coordinate")


def _dirac_losses(layer: torch.nn.Linear, canary_of_row: torch.Tensor, m: int, clip: float):
    """Per-report losses whose gradients are C·e_i for canary i's reports and 0 for the others."""

    def losses(chunk):
        rows = canary_of_row[chunk["index"]]
        x = torch.zeros((len(rows), m))
        hit = rows >= 0
        x[hit.nonzero().squeeze(1), rows[hit]] = clip
        return layer(x).squeeze(1)

    return losses


def noisy_update_sums(cfg: DictConfig, table, canaries) -> tuple[np.ndarray, object, int]:
    """Run the mechanism with the member canaries added; returns (each canary's sum of the noisy
    updates on its coordinate, the run's PrivacyPlan, N training units).

    `canaries` are radpriv.audit.canaries.Canaries: only their coins and report counts are used
    (a canary's "report" is its gradient). N, q, the steps, δ and σ come from
    radpriv.privacy.plan.plan_privacy, on the units the audited run would have.
    """
    from opacus.grad_sample import GradSampleHooks

    from radpriv.data.datamodule import LogicalBatchCollator
    from radpriv.data.sampling import PoissonBatchSampler, poisson_rate_and_steps
    from radpriv.privacy.dp_step import DPStep, NoisyDPOptimizer, without_lightning
    from radpriv.privacy.plan import plan_privacy
    from radpriv.privacy.randomness import PrivateRandomness

    unit, cap = privacy_unit(cfg.privacy, table)
    train = table.subset("train")
    real = PatientIndex.of(train) if unit.name == "patient" else None
    n_real_rows = len(train)
    m, k = len(canaries), canaries.reports_per_canary

    # rows: the real training reports (zero gradient), then each member canary's k reports
    members = np.flatnonzero(canaries.member)
    canary_of_row = torch.full((n_real_rows + len(members) * k,), -1, dtype=torch.long)
    canary_of_row[n_real_rows:] = torch.from_numpy(np.repeat(members, k))
    if real is not None:  # units: the real patients, then one patient per member canary
        groups = real.members + tuple(n_real_rows + j * k + np.arange(k) for j in range(len(members)))
        patient_of = np.concatenate([real.patient_of, len(real) + np.repeat(np.arange(len(members)), k)])
    else:
        groups, patient_of = None, None
    n_units = len(groups) if groups is not None else len(canary_of_row)

    max_epochs = int(cfg.trainer.max_epochs)
    q, per_epoch = poisson_rate_and_steps(n_units, int(cfg.privacy.expected_batch_size))
    shape = SimpleNamespace(num_units=n_units, sample_rate=q, steps_per_epoch=per_epoch,
                            max_reports_per_patient=cap)  # what plan_privacy reads of a DataModule
    plan = plan_privacy(cfg, shape, max_epochs, unit)
    if plan is None:
        raise ConfigError("audit.mode=white_box audits a DP-SGD claim: set privacy.epsilon")
    log.info("audit (white box): %d gradient canaries (%s unit, %d report(s) each), %d in; N %d %ss",
             m, unit.name, k, len(members), n_units, unit.name)

    layer = torch.nn.Linear(m, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    hooks = GradSampleHooks(layer, batch_first=True, loss_reduction="sum")
    randomness = PrivateRandomness(plan.secure_mode)
    opt = NoisyDPOptimizer(torch.optim.SGD(layer.parameters(), lr=1.0), randomness=randomness,
                           noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                           expected_batch_size=plan.expected_batch_size)
    module, wrapped = without_lightning(_dirac_losses(layer, canary_of_row, m, plan.max_grad_norm), opt)
    collate = LogicalBatchCollator(0, int(cfg.privacy.max_physical_batch_size), None, patient_of)
    item = (np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.float32))
    step = DPStep()
    steps_per_epoch = plan.planned_steps // max_epochs
    with tqdm(total=plan.planned_steps, desc="audit: white-box steps", unit="step", leave=False,
              disable=None) as bar:
        for _ in range(max_epochs):
            sampler = PoissonBatchSampler(n_units, plan.sample_rate, steps_per_epoch, randomness, groups,
                                          cap if groups is not None else None)
            for rows in sampler:
                step(module, wrapped, collate([(i, *item) for i in rows]))  # an empty draw is still a step
                bar.update(1)
    hooks.cleanup()
    return -layer.weight.detach().squeeze(0).numpy().astype(np.float64), plan, n_units
