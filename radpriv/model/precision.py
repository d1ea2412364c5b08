"""Numeric precision of training and inference: fp32, or bf16 mixed precision where it is native.

`trainer.precision` takes Lightning's names: ``32-true`` (everything in fp32) or ``bf16-mixed``
(matrix products in bfloat16 under ``torch.autocast``, weights, optimiser state and every
privacy computation in fp32), and ``auto``: ``bf16-mixed`` where the hardware computes bf16
natively (a GPU that supports it; a CPU with AVX512-BF16 or AMX), else ``32-true``. Without
native support bf16 is emulated and slower than fp32, so it is never chosen for you there.

What DP-SGD needs of the precision is in radpriv/privacy/fp32_grad_sample.py: per-sample
gradients, their norms, clipping and noise stay fp32 whatever this says.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

from radpriv.errors import ConfigError

FP32 = "32-true"
BF16 = "bf16-mixed"
CHOICES = (FP32, BF16)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 (x86), or the BF16 extension (Arm), from the kernel's CPU flags.

    PyTorch's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) answers True for any
    AVX512 CPU, where bf16 is emulated and slower than fp32: the flags are what matters.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no reliable flag to read here
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def device_has_native_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return cpu_has_native_bf16()
    return False


def accelerator_device_type(accelerator: str | None) -> str:
    """The torch device type Lightning's `accelerator` setting will train on."""
    accelerator = str(accelerator or "auto")
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


def resolve_precision(value, device_type: str, name: str = "trainer.precision") -> str:
    """`auto` → bf16-mixed where bf16 is native on `device_type`, else 32-true; a named choice is
    kept (bf16-mixed where it is not native runs, slowly, and says so in the log)."""
    value = "auto" if value is None else str(value)
    if value == "auto":
        return BF16 if device_has_native_bf16(device_type) else FP32
    if value not in CHOICES:
        raise ConfigError(f"{name}={value!r}: choose auto, {FP32} or {BF16}")
    return value


def why(precision: str, device_type: str) -> str:
    """One line for the log: what was chosen and on what grounds."""
    native = device_has_native_bf16(device_type)
    where = f"{device_type} ({platform.machine()})" if device_type == "cpu" else device_type
    if precision == BF16:
        return f"bf16 mixed precision on {where}" + ("" if native else ": bf16 is NOT native here (emulated, slower)")
    return f"fp32 on {where}" + (" (bf16 is native here: trainer.precision=auto or bf16-mixed is faster)"
                                 if native else " (no native bf16 here)")


def autocast(precision: str, device_type: str = "cpu"):
    """The forward-pass context of `precision`: bf16 autocast, or nothing."""
    if precision == BF16:
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


FEATURE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def feature_dtype(choice) -> torch.dtype:
    """What cached frozen-layer features are stored in (`finetune.prefix_cache_dtype`). float32
    keeps them as computed, also under bf16-mixed (the frozen layers end in an fp32 layer norm),
    so the cached forward equals the whole encoder's; bfloat16 halves their memory and rounds
    the residual stream the top layers start from."""
    choice = "float32" if choice is None else str(choice)
    if choice not in FEATURE_DTYPES:
        raise ConfigError(f"finetune.prefix_cache_dtype={choice!r}: choose float32 or bfloat16")
    return FEATURE_DTYPES[choice]


def of_trainer(trainer_cfg) -> tuple[str, str]:
    """(precision, device type) of a `trainer` config section (composed configs are resolved
    already; this also covers configs built by hand)."""
    device_type = accelerator_device_type(trainer_cfg["accelerator"])
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={trainer_cfg['accelerator']}: no CUDA GPU is visible here "
                          "(torch.cuda.is_available() is False); use trainer.accelerator=cpu or auto")
    return resolve_precision(trainer_cfg["precision"], device_type), device_type


def loader_settings(trainer_cfg, device_type: str) -> tuple[int, bool]:
    """(DataLoader workers, pin_memory): `auto` is 4 and true on a GPU, where the host must keep
    it fed, and 0 and false on CPU, where workers would compete with training for the cores."""
    on_gpu = device_type == "cuda"
    workers = trainer_cfg["num_workers"]
    pin = trainer_cfg["pin_memory"]
    workers = (4 if on_gpu else 0) if workers in (None, "auto") else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"trainer.num_workers={workers!r}: an integer ≥ 0, or auto")
    if pin in (None, "auto"):
        pin = on_gpu
    if not isinstance(pin, bool):
        raise ConfigError(f"trainer.pin_memory={pin!r}: true, false or auto")
    return workers, pin
