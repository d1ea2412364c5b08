"""The DP callback: wires Opacus into a Lightning fit without wrapping the LightningModule.

At fit start it attaches Opacus' per-sample-gradient hooks to the classifier (no wrapper
module, so parameter names and checkpoints stay those of the plain model), replaces the
optimizer with a `NoisyDPOptimizer` (Opacus' DPOptimizer drawing its noise from this
invocation's fresh `PrivateRandomness`), and swaps the module's step runner for `DPStep`.
The accountant is stepped by the optimizer's step hook, i.e. exactly once per noisy update,
after the noise is drawn and before the update reaches the weights — never for a skipped
chunk, never twice — and, when the run has a checkpoint folder, the step is written to its
`StepJournal` at the same moment.

Its state (the accountant history and the privacy plan) goes into every Lightning checkpoint;
on resume the journal's history replaces it, so the steps of a killed partial epoch stay
counted (radpriv/privacy/step_journal.py). Resuming under a different plan (σ, q, δ, C,
adjacency) is refused.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import lightning as L

from radpriv.errors import PrivacyError
from radpriv.privacy.accounting import PrivacyAccountant
from radpriv.privacy.dp_step import DPStep, NoisyDPOptimizer
from radpriv.privacy.fp32_grad_sample import Fp32GradSampleHooks
from radpriv.privacy.randomness import PrivateRandomness
from radpriv.privacy.step_journal import StepJournal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivacyPlan:
    """Everything the guarantee depends on, fixed before training starts."""

    target_epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    expected_batch_size: int
    planned_steps: int
    accountant: str
    secure_mode: bool = False
    # the neighbouring relation σ was calibrated and ε is reported under (accounting.RELATIONS)
    adjacency: str = "replace_one"
    # what one record is: a report, or a patient with all its training reports (data/patients.py)
    unit: str = "report"
    unit_why: str = ""
    max_reports_per_patient: int | None = None  # patient unit: reports of a patient per step


class DPCallback(L.Callback):
    """`journal`: where every noisy step is recorded durably (None: no checkpoints, no resume)."""

    def __init__(self, plan: PrivacyPlan, journal: StepJournal | None = None):
        self.plan = plan
        self.accountant = PrivacyAccountant(plan.accountant, plan.delta, plan.adjacency)
        self.journal = journal
        self._writes_journal = False
        self._hooks: Fp32GradSampleHooks | None = None

    @property
    def steps(self) -> int:
        return self.accountant.steps

    def epsilon(self) -> float:
        if self.steps == 0:
            return 0.0
        if self.plan.noise_multiplier == 0:
            return math.inf  # no noise: no guarantee (used only by tests of the mechanics)
        return self.accountant.epsilon()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val:
            raise PrivacyError("under DP, Lightning's accumulate_grad_batches and gradient_clip_val "
                               "must stay unset: use privacy.expected_batch_size and privacy.max_grad_norm")
        if len(trainer.strategy.optimizers) != 1:
            raise PrivacyError("DP training supports exactly one optimizer")
        # fp32 per-sample gradients, norms, clipping and noise under any trainer.precision
        self._hooks = Fp32GradSampleHooks(pl_module.net, batch_first=True, loss_reduction="sum")
        original = trainer.strategy.optimizers[0]
        # fresh for this invocation: a resumed run never replays an earlier invocation's noise
        randomness = PrivateRandomness(self.plan.secure_mode)
        if trainer.world_size > 1:  # DDP: noise once on rank 0, clipped sums all-reduced
            from radpriv.privacy.distributed import distributed_dp_optimizer

            dp_optimizer = distributed_dp_optimizer(original, self.plan, trainer.strategy.model, randomness)
        else:
            dp_optimizer = NoisyDPOptimizer(
                original,
                randomness=randomness,
                noise_multiplier=self.plan.noise_multiplier,
                max_grad_norm=self.plan.max_grad_norm,
                expected_batch_size=self.plan.expected_batch_size,
                loss_reduction="mean",
            )
        self._writes_journal = self.journal is not None and trainer.is_global_zero
        dp_optimizer.attach_step_hook(self._account_step)
        trainer.strategy.optimizers = [dp_optimizer]
        pl_module.step_runner = DPStep()

    def _account_step(self, _optimizer) -> None:
        if self._writes_journal:  # on disk before the update is applied (Opacus' pre_step order)
            self.journal.append(self.plan.noise_multiplier, self.plan.sample_rate)
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier,
                             sample_rate=self.plan.sample_rate)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a checkpoint was restored: every step any invocation of this run took counts
        if self.journal is None:
            return
        journal = self.journal.history((self.plan.noise_multiplier, self.plan.sample_rate))
        steps = sum(n for _, _, n in journal)
        if steps > self.accountant.steps:
            log.info("privacy: %d noisy steps of earlier invocations after their last checkpoint "
                     "are counted (%d in all so far)", steps - self.accountant.steps, steps)
            self.accountant.history = journal
        elif steps < self.accountant.steps:
            raise PrivacyError(f"the step journal {self.journal.path} holds {steps} steps, the checkpoint "
                               f"{self.accountant.steps}: it was edited or lost; start a new run")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log_dict({"privacy/epsilon": self.epsilon(), "privacy/steps": float(self.steps)})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hooks is not None:
            self._hooks.cleanup()
            self._hooks = None
        if self.journal is not None:
            self.journal.close()
        if self.steps != self.plan.planned_steps:
            log.warning("DP training took %d noisy steps, %d planned (a killed invocation's steps count): "
                        "ε spent is %.4g (target %.4g)",
                        self.steps, self.plan.planned_steps, self.epsilon(), self.plan.target_epsilon)

    # -- checkpoint state --
    def state_dict(self) -> dict:
        return {"plan": asdict(self.plan), "accountant": self.accountant.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = PrivacyPlan(**state_dict["plan"])
        if saved != self.plan:
            raise PrivacyError(
                "cannot resume: the checkpoint was trained under another privacy plan "
                f"({saved}) than this run's ({self.plan}); start a new run instead"
            )
        self.accountant.load_state_dict(state_dict["accountant"])
