"""Where the randomness of every private mechanism comes from: fresh OS entropy, never the seed.

The DP adversary knows the code, the config and everything radpriv publishes — `seed` is an
MLflow param. Noise or Poisson batches derived from it could be replayed by anyone who reads
the run, and the claimed ε would be ∞ for them (and known batch membership alone removes the
amplification by subsampling the accountant counts on). So every draw of a private mechanism
(DP-SGD noise and Poisson sampling, DP thresholds, the DP logistic-regression baseline, PATE's
vote noise and partition key, a random search's proposals and trial count) comes from a
generator seeded here from the operating system's entropy, at every invocation, and the seed is
never logged, checkpointed or returned. `seed` still fixes what is not a privacy mechanism: the
split, the initialisation, dropout and non-private shuffling, so non-private runs stay
reproducible.

Two strengths (`privacy.secure_mode`):

- default: PyTorch's and NumPy's generators seeded with 63/128 bits from ``secrets`` (the OS
  CSPRNG). Unpredictable to anyone without the process's memory, but not cryptographically
  secure: their outputs are not hardened against an adversary who sees many of them, and
  floating-point Gaussian samplers leak through their low bits (Mironov 2012; Jin et al. 2022).
- ``secure_mode=true``: a cryptographically secure stream, ChaCha20 keyed with 256 bits of OS
  entropy, from PyCA's ``cryptography`` (OpenSSL's ChaCha20; maintained, ~0.9 GB/s here).
  Uniforms are 53-bit; Gaussians are Box–Muller in float64; and DP-SGD's noise takes Opacus'
  own floating-point mitigation for secure noise (the sum of four Gaussians of the target std,
  halved; Holohan & Braghin 2021, Opacus' ``_generate_noise``). Opacus' ``secure_mode`` flag on
  its own does not give this: with no generator passed it draws from PyTorch's default
  generator, which ``seed_everything`` had seeded from the logged seed, and its former
  ``torchcsprng`` dependency has no build for current PyTorch.
"""

from __future__ import annotations

import math
import os
import secrets

import numpy as np
import torch


def fresh_seed(bits: int = 63) -> int:
    """A seed from the OS CSPRNG (``secrets``): never derived from config, never logged."""
    return secrets.randbits(bits)


def numpy_generator() -> np.random.Generator:
    """A NumPy generator (PCG64) seeded with 128 bits of OS entropy."""
    return np.random.default_rng(fresh_seed(128))


class ChaCha20Stream:
    """A cryptographically secure stream of uniforms and Gaussians (ChaCha20, OS-entropy key)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        # the keystream of ChaCha20 under a random 256-bit key and 128-bit nonce/counter
        self._encryptor = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None).encryptor()

    def _words(self, n: int) -> np.ndarray:
        return np.frombuffer(self._encryptor.update(bytes(8 * n)), dtype=np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """n uniforms in [0, 1), 53 random bits each (float64)."""
        return (self._words(n) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)

    def standard_normal(self, n: int) -> np.ndarray:
        """n standard Gaussians, Box–Muller in float64 from 53-bit uniforms."""
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 − u ∈ (0, 1]: log is finite
        angle = 2.0 * math.pi * u[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


class PrivateRandomness:
    """The randomness of one private mechanism in one invocation (see the module docstring).

    ``bernoulli(n, p)`` draws Poisson-sampling masks, ``subset(n, k)`` which k of a patient's n
    reports a step uses, ``gaussian_like(reference, std)`` DP noise
    shaped like ``reference`` (on its device, in its dtype; computed in float64 in secure mode).
    """

    def __init__(self, secure: bool = False) -> None:
        self.secure = bool(secure)
        self._stream = ChaCha20Stream() if self.secure else None
        self._generators: dict[str, torch.Generator] = {}

    def _torch_generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(fresh_seed())
        return self._generators[key]

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        """A boolean mask of n independent draws, each True with probability p."""
        if self.secure:
            return torch.from_numpy(self._stream.uniform(n) < p)
        return torch.rand(n, generator=self._torch_generator(torch.device("cpu"))) < p

    def subset(self, n: int, k: int) -> torch.Tensor:
        """k of range(n) uniformly at random without replacement (all of them when k ≥ n)."""
        if k >= n:
            return torch.arange(n)
        if self.secure:
            return torch.from_numpy(np.argsort(self._stream.uniform(n), kind="stable")[:k].copy())
        return torch.randperm(n, generator=self._torch_generator(torch.device("cpu")))[:k]

    def gaussian_like(self, reference: torch.Tensor, std: float) -> torch.Tensor:
        """N(0, std²) noise with `reference`'s shape, dtype and device (zeros when std = 0)."""
        if std == 0:
            return torch.zeros_like(reference)
        if not self.secure:
            from opacus.optimizers.optimizer import _generate_noise

            return _generate_noise(std=std, reference=reference,
                                   generator=self._torch_generator(reference.device), secure_mode=False)
        n = reference.numel()
        # Opacus' floating-point mitigation: four draws of std σ summed and halved (std σ again)
        total = np.zeros(n, dtype=np.float64)
        for _ in range(4):
            total += self._stream.standard_normal(n)
        noise = torch.from_numpy(total * (std / 2.0)).reshape(reference.shape)
        return noise.to(device=reference.device, dtype=reference.dtype)
