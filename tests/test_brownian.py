"""Brownian-tree noise: the same tensors as ComfyUI's BrownianTreeNoiseSampler for the same seed and sigmas.

ComfyUI (comfy/k_diffusion/sampling.py, BatchedBrownianTree with cpu=True) builds one torchsde.BrownianTree on
the CPU over [smallest non-zero sigma, largest sigma] of the run, with w0 = zeros like x and entropy = seed,
queries it with the two sigmas sorted (as float32) and the sign restored, and divides by sqrt|sigma_next -
sigma|. The reference below builds exactly that with torchsde directly.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchsde

from nodes.sd import ksampler
from nodes.sd.samplers.brownian import BrownianTreeNoise
from nodes.sd.schedules import calculate_sigmas, scaled_linear_alphas_cumprod

pytestmark = pytest.mark.filterwarnings("ignore:Should have t[ab]")  # torchsde, at sigma_max itself


def comfyui_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seed: int):  # type: ignore[no-untyped-def]
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    tree = torchsde.BrownianTree(sigma_min.cpu(), torch.zeros_like(x).cpu(), sigma_max.cpu(), entropy=seed)

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1, sign = (sigma, sigma_next, 1) if sigma < sigma_next else (sigma_next, sigma, -1)
        w = tree(t0.cpu().float(), t1.cpu().float()) * sign
        return w / (sigma_next - sigma).abs().sqrt()

    return sample


@pytest.fixture(scope="module")
def sigmas() -> torch.Tensor:
    return calculate_sigmas(scaled_linear_alphas_cumprod(), "karras", 8)


@pytest.mark.parametrize("seed", [0, 1234, 2**63 + 5])
def test_batch_of_one_draws_comfyuis_tensors(sigmas: torch.Tensor, seed: int) -> None:
    x = torch.zeros(1, 4, 8, 8)
    ours = ksampler.BatchNoise(x, seed, [0], brownian=True, sigmas=sigmas)
    theirs = comfyui_noise_sampler(x, sigmas, seed)
    for i in range(len(sigmas) - 2):
        # the step's interval, then a midpoint inside it (dpmpp_sde's first stage) and the step again
        mid = (sigmas[i] * sigmas[i + 1]).sqrt()
        for a, b in ((sigmas[i], sigmas[i + 1]), (sigmas[i], mid), (mid, sigmas[i + 1])):
            torch.testing.assert_close(ours(a, b), theirs(a, b), rtol=0, atol=0)


def test_batch_items_are_their_own_trees_and_index_zero_is_the_seed(sigmas: torch.Tensor) -> None:
    x = torch.zeros(3, 4, 8, 8)
    batch = ksampler.BatchNoise(x, 77, [0, 1, 5], brownian=True, sigmas=sigmas)(sigmas[1], sigmas[2])
    for k, index in enumerate([0, 1, 5]):
        single = ksampler.BatchNoise(x[:1], 77, [index], brownian=True, sigmas=sigmas)(sigmas[1], sigmas[2])
        torch.testing.assert_close(batch[k : k + 1], single, rtol=0, atol=0)
    theirs = comfyui_noise_sampler(x[:1], sigmas, 77)(sigmas[1], sigmas[2])
    torch.testing.assert_close(batch[:1], theirs, rtol=0, atol=0)
    assert not torch.allclose(batch[0], batch[1]) and not torch.allclose(batch[1], batch[2])


def test_increments_are_one_path_with_unit_variance() -> None:
    """Overlapping queries (sigma -> mid, mid -> next, sigma -> next) must add up as one Brownian path."""
    noise = BrownianTreeNoise(torch.zeros(1, 16, 64, 64), 0.03, 14.6, seed=3)
    a, b, c = torch.tensor(9.0), torch.tensor(4.0), torch.tensor(1.0)
    whole = noise(a, c) * math.sqrt(8.0)
    parts = noise(a, b) * math.sqrt(5.0) + noise(b, c) * math.sqrt(3.0)
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-4)
    for draw in (noise(a, b), noise(b, c), noise(c, a)):
        assert abs(float(draw.std()) - 1) < 0.03 and abs(float(draw.mean())) < 0.03


def test_ksampler_gives_the_sde_family_a_tree_and_the_rest_gaussian_noise() -> None:
    """ComfyUI builds a Brownian tree for the dpmpp_*_sde samplers and their _gpu twins only."""
    assert ksampler.BROWNIAN_SAMPLERS == {
        "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
    }
    with pytest.raises(ValueError, match="sigmas"):
        ksampler.BatchNoise(torch.zeros(1, 4, 8, 8), 0, [0], brownian=True)


def test_a_single_nonzero_sigma_needs_no_tree() -> None:
    noise = ksampler.BatchNoise(torch.zeros(1, 4, 8, 8), 0, [0], brownian=True, sigmas=torch.tensor([3.0, 0.0]))
    assert float(noise(torch.tensor(3.0), torch.tensor(3.0)).abs().max()) == 0.0


def test_other_samplers_draw_comfyuis_default_noise_at_batch_one(sigmas: torch.Tensor) -> None:
    """ComfyUI 0.3.64's default_noise_sampler: a generator on x's device seeded with the seed, randn(x.shape)
    per call. On the CPU its first draw repeats the initial noise (ComfyUI issue #9819, fixed after 0.3.64 by
    seeding seed + 1); we keep 0.3.64's stream so a seed gives its picture."""
    x = torch.zeros(1, 4, 8, 8)
    ours = ksampler.BatchNoise(x, 42, [0], brownian=False)
    generator = torch.Generator().manual_seed(42)
    for i in range(3):
        expected = torch.randn(x.size(), dtype=x.dtype, generator=generator)
        torch.testing.assert_close(ours(sigmas[i], sigmas[i + 1]), expected, rtol=0, atol=0)
