"""One DP-SGD step over a logical batch — the one place where noise is added.

For a Poisson-sampled logical batch B (expected size b, clipping norm C, noise multiplier σ):

    g = ( Σ_{i∈B} clip_C(∇ℓ_i) + N(0, σ²C² I) ) / b

computed by Opacus: per-sample gradients ∇ℓ_i from its hooks (`GradSampleHooks`,
loss_reduction="sum", so each ∇ℓ_i is the gradient of report i's own loss), clipping and
summing in `DPOptimizer.clip_and_accumulate`, noise in `add_noise` (once per logical batch,
never per chunk), division by the public expected batch size b in `scale_grad`. Physical
chunks use Opacus' skip-step protocol (the one BatchMemoryManager uses): every chunk but the
last only clips and accumulates.

The noise N(0, σ²C² I) is drawn by :class:`NoisyDPOptimizer` from the run's
`PrivateRandomness` (radpriv/privacy/randomness.py): fresh OS entropy at every invocation, or a
CSPRNG with Opacus' floating-point mitigation under `privacy.secure_mode`; never PyTorch's
default generator, which `seed_everything` seeds from the logged seed.

An empty Poisson draw is still a step: the update is pure noise and the accountant counts it,
exactly as the analysis assumes.

At the patient unit (radpriv/data/patients.py) the sampled units are patients and

    g = ( Σ_{patients P in B} clip_C( Σ_{i∈P} ∇ℓ_i ) + N(0, σ²C² I) ) / b

with b the expected number of patients: each chunk carries `patient` (the chunk-local patient
of every row; a patient's reports never span two chunks), and :func:`per_patient` sums the
per-report gradients of each patient before Opacus clips them — one clipped contribution per
patient, so one patient moves the sum by at most C (2C when replaced), whatever its number of
reports. The sum, not the mean: a patient's loss is the sum of its reports' losses, so every
report weighs the same in what is optimised until clipping binds.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from radpriv.privacy.fp32_grad_sample import no_autocast
from radpriv.privacy.randomness import PrivateRandomness


class NoisyDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer whose Gaussian noise comes from a `PrivateRandomness`."""

    def __init__(self, optimizer, *, randomness: PrivateRandomness, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.randomness = randomness

    def pre_step(self, closure=None):
        # Lightning calls the step inside the training step's autocast: under bf16-mixed, the
        # clipped sum (an einsum) would run in bf16, and the noise is drawn in the sum's dtype.
        # Clipping, summing, noise and scaling stay fp32 (radpriv/privacy/fp32_grad_sample.py).
        with no_autocast():
            return super().pre_step(closure)

    def add_noise(self) -> None:
        # DPOptimizer.add_noise with the noise source replaced; nothing else differs
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = self.randomness.gaussian_like(p.summed_grad, std)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class NoisyDistributedDPOptimizer(DistributedDPOptimizer, NoisyDPOptimizer):
    """Opacus' DistributedDPOptimizer (noise on rank 0 only) with NoisyDPOptimizer's noise.

    Method order: DistributedDPOptimizer.add_noise → (rank 0) NoisyDPOptimizer.add_noise.
    """


def per_patient(params, patient: torch.Tensor) -> None:
    """Replace each parameter's per-report `grad_sample` rows by per-patient sums (in place)."""
    n = int(patient.max()) + 1 if len(patient) else 0
    for p in params:
        rows = p.grad_sample
        if isinstance(rows, list):  # Opacus keeps a list after several backward calls
            rows = torch.cat(rows, dim=0)
        summed = torch.zeros((n, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        p.grad_sample = summed.index_add_(0, patient.to(rows.device), rows)


class DPStep:
    def __call__(self, module, optimizer, batch) -> float:
        dp_optimizer = optimizer.optimizer  # the raw DPOptimizer under Lightning's wrapper
        total = 0.0
        if batch.size == 0:
            for p in dp_optimizer.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        last = len(batch.chunks) - 1
        for k, chunk in enumerate(batch.chunks):
            losses = module.chunk_losses(chunk)
            module.manual_backward(losses.sum())
            total += float(losses.detach().sum())
            if "patient" in chunk:  # patient unit: one gradient per patient before clipping
                per_patient(dp_optimizer.params, chunk["patient"])
            if k < last:
                # clip and accumulate this chunk's per-sample gradients; no noise, no update
                dp_optimizer.signal_skip_step(do_skip=True)
                dp_optimizer.step()
                dp_optimizer.zero_grad()
        # the last chunk (or an empty batch): clip, add noise once, scale, update; Lightning's
        # wrapper counts it as one optimisation step
        optimizer.step()
        optimizer.zero_grad()
        return total


def without_lightning(chunk_losses, optimizer):
    """(module, wrapped): what DPStep needs of a LightningModule (`chunk_losses`, a backward)
    and of Lightning's optimizer wrapper, for running the step without Lightning (the
    white-box audit, tests)."""

    class Module:
        manual_backward = staticmethod(lambda loss: loss.backward())

    Module.chunk_losses = staticmethod(chunk_losses)

    class Wrapped:
        param_groups = optimizer.param_groups
        step = staticmethod(optimizer.step)
        zero_grad = staticmethod(optimizer.zero_grad)

    Wrapped.optimizer = optimizer
    return Module, Wrapped
