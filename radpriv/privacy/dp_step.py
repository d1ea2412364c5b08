"""One DP-SGD step over a logical batch — the one place where noise is added.

For a Poisson-sampled logical batch B (expected size b, clipping norm C, noise multiplier σ):

    g = ( Σ_{i∈B} clip_C(∇ℓ_i) + N(0, σ²C² I) ) / b

computed by Opacus: per-sample gradients ∇ℓ_i from its hooks (`GradSampleHooks`,
loss_reduction="sum", so each ∇ℓ_i is the gradient of report i's own loss), clipping and
summing in `DPOptimizer.clip_and_accumulate`, noise in `DPOptimizer.add_noise` (once per
logical batch, never per chunk), division by the public expected batch size b in
`scale_grad`. Physical chunks use Opacus' skip-step protocol (the one BatchMemoryManager
uses): every chunk but the last only clips and accumulates.

An empty Poisson draw is still a step: the update is pure noise and the accountant counts it,
exactly as the analysis assumes.
"""

from __future__ import annotations

import torch


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
