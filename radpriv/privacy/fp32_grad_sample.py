"""Opacus' per-sample-gradient hooks, computing in fp32 whatever precision the forward pass used.

Under bf16 mixed precision (radpriv/model/precision.py) a Linear layer's output, and so the
gradient flowing back into it, is bf16. Opacus' samplers cast the activations to the backprops'
dtype (`compute_linear_grad_sample`), so without this every per-sample gradient would be bf16,
and then so would its norm, the clipping factor, the clipped sum and — since the noise is drawn
shaped and typed like that sum — the Gaussian noise itself (Opacus #377, PR #764). A bf16 norm
is off by up to ~0.4%, which lets a clipped contribution exceed C; bf16 noise has 8 significant
bits. Both break the analysis the accountant assumes.

Here the captured activations and backprops are cast to fp32 and the sampler runs with autocast
off, so `grad_sample`, the norms, the clipping factors, the sums and the noise are all fp32 (the
trainable parameters are fp32 under mixed precision; tested in tests/test_precision.py). The
forward and backward of the frozen encoder stay in bf16, where the time goes. The cast costs
little: with LoRA the sampled layers are rank-r projections and the head.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleHooks


def no_autocast():
    """A region where autocast is off on every device this process can use."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", enabled=False))
    if torch.cuda.is_available():
        stack.enter_context(torch.autocast("cuda", enabled=False))
    return stack


def _fp32(t):
    return t.float() if torch.is_tensor(t) and t.is_floating_point() else t


class Fp32GradSampleHooks(GradSampleHooks):
    def capture_backprops_hook(self, module, _forward_input, forward_output, loss_reduction, batch_first):
        with no_autocast():
            super().capture_backprops_hook(module, _forward_input, tuple(_fp32(t) for t in forward_output),
                                           loss_reduction, batch_first)

    def rearrange_grad_samples(self, *, module, backprops, loss_reduction, batch_first):
        activations, backprops = super().rearrange_grad_samples(
            module=module, backprops=backprops, loss_reduction=loss_reduction, batch_first=batch_first)
        return [_fp32(a) for a in activations], _fp32(backprops)
