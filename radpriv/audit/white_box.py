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
import math

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from radpriv.audit.one_run_bound import epsilon_lower_bound, guesses
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


def white_box_audit(cfg: DictConfig, table, canaries, s) -> dict:
    """Run the mechanism with the member canaries added, score every canary, bound ε.

    `canaries` are radpriv.audit.canaries.Canaries (only their coins and report counts are
    used: a canary's "report" is its gradient); `s` the audit Settings.
    """
    from opacus.grad_sample import GradSampleHooks

    from radpriv.data.datamodule import LogicalBatch, LogicalBatchCollator
    from radpriv.data.sampling import PoissonBatchSampler
    from radpriv.privacy import accounting
    from radpriv.privacy.dp_step import DPStep, NoisyDPOptimizer, without_lightning
    from radpriv.privacy.randomness import PrivateRandomness

    p = cfg.privacy
    epsilon = accounting.resolve_epsilon(p.epsilon)
    if epsilon is None:
        raise ConfigError("audit.mode=white_box audits a DP-SGD claim: set privacy.epsilon")
    if p.get("max_grad_norm") is None or float(p.max_grad_norm) <= 0:
        raise ConfigError(f"privacy.max_grad_norm={p.get('max_grad_norm')}: must be > 0")
    unit, cap = privacy_unit(p, table)
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

    b = int(p.expected_batch_size)
    q = min(1.0, b / n_units)
    per_epoch = math.ceil(n_units / b)
    steps = int(cfg.trainer.max_epochs) * per_epoch
    delta = float(p.delta) if p.get("delta") is not None else accounting.default_delta(n_units)
    if s.delta is not None:
        delta = max(delta, float(s.delta))
    sigma = float(accounting.calibrate_noise_multiplier(epsilon, delta, q, steps, accountant=p.accountant,
                                                        relation=accounting.GUARANTEE_RELATION))
    claimed = accounting.epsilon_spent(p.accountant, (sigma, q, steps), delta, "add_remove")
    clip = float(p.max_grad_norm)
    log.info("audit (white box): %d gradient canaries (%s unit, %d report(s) each), %d in; N %d %ss, q=%.4g, "
             "%d steps, σ=%.4g, C=%g", m, unit.name, k, len(members), n_units, unit.name, q, steps, sigma, clip)

    layer = torch.nn.Linear(m, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    hooks = GradSampleHooks(layer, batch_first=True, loss_reduction="sum")
    randomness = PrivateRandomness(bool(p.get("secure_mode", False)))
    opt = NoisyDPOptimizer(torch.optim.SGD(layer.parameters(), lr=1.0), randomness=randomness,
                           noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=b)
    module, wrapped = without_lightning(_dirac_losses(layer, canary_of_row, m, clip), opt)
    collate = LogicalBatchCollator(0, int(p.max_physical_batch_size), None, patient_of)
    item = (np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.float32))
    step = DPStep()
    with tqdm(total=steps, desc="audit: white-box steps", unit="step", leave=False, disable=None) as bar:
        for _ in range(int(cfg.trainer.max_epochs)):
            sampler = PoissonBatchSampler(n_units, q, per_epoch, randomness, groups, cap if groups else None)
            for rows in sampler:
                batch = collate([(i, *item) for i in rows]) if len(rows) else LogicalBatch(chunks=[], size=0)
                step(module, wrapped, batch)
                bar.update(1)
    hooks.cleanup()

    scores = -layer.weight.detach().squeeze(0).numpy().astype(np.float64)  # Σ of the noisy updates
    r, v = guesses(scores, canaries.member, s.k_plus, s.k_minus)
    lower = epsilon_lower_bound(m, r, v, delta, s.confidence)
    from radpriv.audit.mia import loss_threshold_auc

    canary_auc = (loss_threshold_auc(-scores[canaries.member], -scores[~canaries.member])
                  if 0 < canaries.member.sum() < m else None)
    return {"mode": "white_box", "canaries": m, "canaries_in_training": int(len(members)), "unit": unit.name,
            "reports_per_canary": k, "k_plus": s.k_plus, "k_minus": s.k_minus, "guesses": r, "correct_guesses": v,
            "confidence": s.confidence, "delta": delta, "epsilon_lower_bound": lower, "claimed_epsilon": claimed,
            "claimed_epsilon_replace_one": epsilon, "noise_multiplier": sigma, "sample_rate": q, "steps": steps,
            "canary_auc": canary_auc, "method": METHOD,
            "verdict": "PRIVACY BUG" if lower > claimed else "consistent with the claimed ε"}
