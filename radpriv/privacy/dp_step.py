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
"""

from __future__ import annotations

import torch
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from radpriv.privacy.randomness import PrivateRandomness


class NoisyDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer whose Gaussian noise comes from a `PrivateRandomness`."""

    def __init__(self, optimizer, *, randomness: PrivateRandomness, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.randomness = randomness

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
