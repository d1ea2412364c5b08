"""Private randomness: fresh OS entropy (never the logged seed), and a CSPRNG in secure mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radpriv.privacy.randomness import ChaCha20Stream, PrivateRandomness

# These draws come from fresh OS entropy, so no test can pin them: every band below is 6 standard
# errors wide, which a correct sampler leaves about once in 10⁸ runs, while a wrong rate or scale
# (a few per cent off) still falls far outside it.
SIGMAS = 6


@pytest.mark.parametrize("secure", [False, True])
def test_noise_and_masks_do_not_follow_the_global_seed(secure):
    """seed_everything(seed) fixes PyTorch's and NumPy's global generators; the private draws must
    differ anyway, or anyone who reads the logged seed could replay them."""
    reference = torch.zeros(1000)
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        r = PrivateRandomness(secure)
        draws.append((r.gaussian_like(reference, 1.0), r.bernoulli(1000, 0.5)))
    assert not torch.equal(draws[0][0], draws[1][0])
    assert not torch.equal(draws[0][1], draws[1][1])


@pytest.mark.parametrize("secure", [False, True])
def test_noise_has_the_requested_std_dtype_and_shape(secure):
    r = PrivateRandomness(secure)
    reference = torch.zeros((400, 500), dtype=torch.float32)
    noise = r.gaussian_like(reference, 2.5)
    assert noise.shape == reference.shape and noise.dtype == torch.float32
    n = noise.numel()
    assert abs(float(noise.mean())) < SIGMAS * 2.5 / math.sqrt(n)
    assert abs(float(noise.std()) / 2.5 - 1) < SIGMAS / math.sqrt(2 * n)
    assert torch.equal(r.gaussian_like(reference, 0.0), torch.zeros_like(reference))
    # Gaussian, not merely the right variance: the fraction beyond 2σ is 4.55 %
    tail = 0.0455
    assert abs(float((noise.abs() > 5.0).float().mean()) - tail) < SIGMAS * math.sqrt(tail * (1 - tail) / n)


@pytest.mark.parametrize("secure", [False, True])
def test_poisson_masks_have_rate_q(secure):
    r = PrivateRandomness(secure)
    q = 0.07
    masks = torch.stack([r.bernoulli(2000, q) for _ in range(50)])
    assert masks.dtype == torch.bool
    assert abs(float(masks.float().mean()) - q) < SIGMAS * math.sqrt(q * (1 - q) / masks.numel())


def test_the_chacha20_stream_is_uniform_with_53_bits_and_never_repeats():
    a, b = ChaCha20Stream(), ChaCha20Stream()
    u = a.uniform(200_000)
    assert 0.0 <= u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert (np.abs(counts - 20_000) < SIGMAS * math.sqrt(200_000 * 0.1 * 0.9)).all()
    assert len(np.unique(u)) == len(u)  # 53-bit values: no collisions expected at this size
    assert not np.array_equal(a.uniform(100), b.uniform(100))  # independent keys
    z = a.standard_normal(100_001)  # an odd count: Box–Muller pairs cut to size
    assert z.shape == (100_001,)
    assert abs(float(z.std()) - 1.0) < SIGMAS / math.sqrt(2 * z.size)


def test_dp_optimizer_noise_comes_from_the_private_randomness():
    """The one place noise is added draws from PrivateRandomness, so two optimizers built after the
    same torch.manual_seed add different noise."""
    from radpriv.privacy.dp_step import NoisyDPOptimizer

    noises = []
    for _ in range(2):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.zeros(300))
        opt = NoisyDPOptimizer(torch.optim.SGD([p], lr=1.0), randomness=PrivateRandomness(False),
                               noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=1)
        p.summed_grad = torch.zeros(300)  # as clip_and_accumulate leaves it: noise alone remains
        opt.add_noise()
        noises.append(p.grad.clone())
    assert not torch.equal(noises[0], noises[1])
    assert abs(float(noises[0].std()) - 1.0) < SIGMAS / math.sqrt(2 * 300)
