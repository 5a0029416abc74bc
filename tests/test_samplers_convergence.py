"""Every sampler converges: more steps give a result closer to the same sampler's many-step result.

On the exact denoiser of data ~ N(mu, s^2) (tests/test_samplers.py) every sampler runs on Karras schedules of
8, 32 and 256 steps from the same start. Stochastic samplers all draw their noise from one fixed Brownian tree
(the increments of one path, whatever the steps), so they converge path by path like SDE solvers (strong
order 1/2 or better) instead of only in distribution; the ODE samplers converge at their order. LCM is the
exception: it re-noises with fresh noise at every step by design, so only its distribution converges (checked
in tests/test_samplers.py). dpm_adaptive picks its own steps; it converges as its tolerance shrinks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from nodes.sd import schedules
from nodes.sd.samplers import SAMPLERS
from nodes.sd.samplers.brownian import BrownianTreeNoise
from test_samplers import MU, S, gaussian_denoiser

pytestmark = pytest.mark.filterwarnings("ignore:Should have t[ab]")
MODEL_SIGMAS = schedules.model_sigmas(schedules.scaled_linear_alphas_cumprod())
DISTINCT = [name for k, (name, fn) in enumerate(SAMPLERS.items()) if fn not in list(SAMPLERS.values())[:k]]
"""One name per function (the `_gpu` entries are their CPU twins)."""
COARSE, FINE, REFERENCE = 8, 32, 256
FINE_OVER_COARSE = 0.6
"""The largest error ratio accepted from 8 to 32 steps: strong order 1/2 gives ~0.5, higher orders far less."""


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def start() -> Tensor:
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return MU + math.sqrt(S**2 + float(MODEL_SIGMAS[-1]) ** 2) * noise


def run(name: str, x: Tensor, steps: int, **options: Any) -> Tensor:
    path = BrownianTreeNoise(x, float(MODEL_SIGMAS[0]), float(MODEL_SIGMAS[-1]), seed=11)
    sigmas = schedules.karras(MODEL_SIGMAS, steps)
    return SAMPLERS[name](gaussian_denoiser, x, sigmas, noise_sampler=path, **options)


def rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("name", sorted(set(DISTINCT) - {"lcm", "dpm_adaptive"}))
def test_more_steps_come_closer_to_the_many_step_result(start: Tensor, name: str) -> None:
    reference = run(name, start, REFERENCE)
    coarse, fine = rms(run(name, start, COARSE), reference), rms(run(name, start, FINE), reference)
    assert math.isfinite(coarse) and fine < FINE_OVER_COARSE * coarse, (coarse, fine)


def test_dpm_adaptive_comes_closer_as_its_tolerance_shrinks(start: Tensor) -> None:
    reference = run("dpm_adaptive", start, 12, rtol=1e-5, atol=1e-6)
    coarse = rms(run("dpm_adaptive", start, 12, rtol=0.01, atol=0.001), reference)
    fine = rms(run("dpm_adaptive", start, 12, rtol=0.001, atol=0.0001), reference)
    assert fine < FINE_OVER_COARSE * coarse, (coarse, fine)
