"""Schedules: shape and order for every scheduler, and the same sigmas as diffusers where it has the algorithm.

Comparisons with diffusers build our model sigmas from the diffusers scheduler's own (float32)
alphas_cumprod, so any difference is the algorithm's, not the training schedule's precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from nodes.sd import schedules
from nodes.sd.schedules import SCHEDULERS

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


@pytest.fixture(scope="module")
def sigmas() -> torch.Tensor:
    return schedules.model_sigmas(schedules.scaled_linear_alphas_cumprod())


def diffusers_sigmas(scheduler: EulerDiscreteScheduler) -> torch.Tensor:
    return schedules.model_sigmas(scheduler.alphas_cumprod)


def euler(steps: int, **config: object) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler(**SD, **config)
    scheduler.set_timesteps(steps)
    return scheduler


def test_scaled_linear_schedule_matches_diffusers() -> None:
    """Ours is float64; diffusers computes in float32, hence the 1e-5 relative tolerance."""
    ours = schedules.scaled_linear_alphas_cumprod()
    theirs = EulerDiscreteScheduler(**SD).alphas_cumprod
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=0)
    model = schedules.model_sigmas(ours)
    assert float(model[0]) == pytest.approx(0.0292, abs=1e-4) and float(model[-1]) == pytest.approx(14.6146, abs=1e-4)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 50])
def test_every_scheduler_descends_to_zero(sigmas: torch.Tensor, name: str, steps: int) -> None:
    out = SCHEDULERS[name](sigmas, steps)
    assert out.dtype == torch.float32 and out.ndim == 1
    assert float(out[-1]) == 0.0
    assert bool((out[:-1] > out[1:]).all()), f"{name} is not strictly decreasing: {out}"
    assert float(out[0]) <= float(sigmas[-1]) * (1 + 1e-6)
    if name == "ddim_uniform":  # every (1000 // steps)-th training sigma from timestep 1, as ComfyUI
        assert len(out) == len(range(1, 1000, 1000 // steps)) + 1
    else:
        assert len(out) == steps + 1


def test_beta_drops_repeated_timesteps_like_comfyui(sigmas: torch.Tensor) -> None:
    """Beta(0.6, 0.6) quantiles crowd the ends; past ~100 steps two round to one timestep and one is dropped."""
    out = SCHEDULERS["beta"](sigmas, 150)
    assert len(out) < 151 and bool((out[:-1] > out[1:]).all())


@pytest.mark.parametrize("steps", [4, 10, 28])
def test_normal_matches_diffusers_linspace_exactly(steps: int) -> None:
    """At these step counts every timestep of linspace(999, 0, steps) is an integer: the same sigmas."""
    reference = euler(steps, timestep_spacing="linspace")
    ours = schedules.normal(diffusers_sigmas(reference), steps)
    torch.testing.assert_close(ours, reference.sigmas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [20, 25, 33])
def test_normal_matches_diffusers_linspace_between_timesteps(steps: int) -> None:
    """Between integer timesteps ComfyUI (and we) interpolate log-sigma, diffusers sigma: within 1e-4 relative."""
    reference = euler(steps, timestep_spacing="linspace")
    ours = schedules.normal(diffusers_sigmas(reference), steps)
    torch.testing.assert_close(ours, reference.sigmas, rtol=1e-4, atol=0)


@pytest.mark.parametrize("steps", [4, 10, 20, 25, 50])
def test_simple_matches_diffusers_trailing(steps: int) -> None:
    """ComfyUI floors 1000 * i / steps where diffusers rounds: equal when steps divides 1000."""
    reference = euler(steps, timestep_spacing="trailing")
    ours = schedules.simple(diffusers_sigmas(reference), steps)
    torch.testing.assert_close(ours, reference.sigmas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [3, 10, 30])
def test_karras_matches_diffusers(steps: int) -> None:
    reference = euler(steps, use_karras_sigmas=True)
    ours = schedules.karras(diffusers_sigmas(reference), steps)
    torch.testing.assert_close(ours, reference.sigmas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [3, 10, 30])
def test_exponential_matches_diffusers(steps: int) -> None:
    reference = euler(steps, use_exponential_sigmas=True)
    torch.testing.assert_close(
        schedules.exponential(diffusers_sigmas(reference), steps), reference.sigmas, rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("steps", [4, 10, 20, 50])
def test_ddim_uniform_matches_diffusers_leading(steps: int) -> None:
    """DDIM's "leading" spacing with steps_offset 1 (SD's config), plus the final 0."""
    reference = DDIMScheduler(**SD, timestep_spacing="leading", steps_offset=1)
    reference.set_timesteps(steps)
    model = diffusers_sigmas(reference)
    expected = torch.cat([model[reference.timesteps], torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(schedules.ddim_uniform(model, steps), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [3, 10, 40])
def test_sgm_uniform_is_normal_with_one_more_step_minus_its_last(sigmas: torch.Tensor, steps: int) -> None:
    """No diffusers scheduler spaces timesteps this way; the defining relation: linspace(999, 0, n + 1)[:-1]."""
    sgm = schedules.sgm_uniform(sigmas, steps)
    torch.testing.assert_close(sgm[:-1], schedules.normal(sigmas, steps + 1)[:-2], rtol=1e-6, atol=0)


def test_beta_matches_comfyui_formula_with_scipy(sigmas: torch.Tensor) -> None:
    """diffusers' use_beta_sigmas spaces sigma (not timestep) by the quantiles, a different algorithm; so
    the reference is ComfyUI's formula evaluated with scipy's quantile function."""
    stats = pytest.importorskip("scipy.stats")
    for q in np.linspace(0.0, 1.0, 41):
        assert schedules.beta_ppf(float(q), 0.6, 0.6) == pytest.approx(float(stats.beta.ppf(q, 0.6, 0.6)), abs=1e-9)
    for steps in (5, 10, 30, 150):
        timesteps = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999)
        kept = [int(t) for k, t in enumerate(timesteps) if k == 0 or t != timesteps[k - 1]]
        expected = torch.cat([sigmas[kept], torch.zeros(1, dtype=torch.float64)]).float()
        torch.testing.assert_close(schedules.beta(sigmas, steps), expected, rtol=1e-6, atol=0)


def test_sigma_to_timestep_matches_diffusers_and_round_trips(sigmas: torch.Tensor) -> None:
    """Same log-sigma interpolation as diffusers' _sigma_to_t (which rounds through float32: 1e-4 timesteps)."""
    reference = EulerDiscreteScheduler(**SD)
    log_sigmas = np.log(diffusers_sigmas(reference).numpy())
    probe = torch.tensor([0.0292, 0.05, 0.3, 1.0, 2.5, 7.0, 14.6], dtype=torch.float64)
    ours = schedules.sigma_to_timestep(probe, diffusers_sigmas(reference))
    theirs = torch.tensor([float(reference._sigma_to_t(np.array(s), log_sigmas)) for s in probe.numpy()])
    torch.testing.assert_close(ours, theirs.double(), rtol=0, atol=1e-4)
    timesteps = torch.tensor([0.0, 0.5, 17.25, 500.0, 998.9, 999.0], dtype=torch.float64)
    round_trip = schedules.sigma_to_timestep(schedules.timestep_to_sigma(timesteps, sigmas), sigmas)
    torch.testing.assert_close(round_trip, timesteps, rtol=0, atol=1e-9)


def test_calculate_sigmas_rejects_unknown_names_and_bad_steps() -> None:
    alphas = schedules.scaled_linear_alphas_cumprod()
    with pytest.raises(ValueError, match="unknown scheduler 'karass'"):
        schedules.calculate_sigmas(alphas, "karass", 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        schedules.calculate_sigmas(alphas, "karras", 0)
    assert len(schedules.calculate_sigmas(alphas, "karras", 10)) == 11


def test_schedulers_are_comfyuis_in_its_order() -> None:
    assert list(SCHEDULERS) == [
        "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
        "kl_optimal",
    ]


def linear_quadratic_reference(steps: int, sigma_max: float, threshold: float = 0.025) -> list[float]:
    """Mochi's schedule written from its definition: noise fraction 1 - f(i/steps) where f is linear with slope
    threshold / (steps // 2) up to step steps // 2, then the quadratic through (steps // 2, threshold) with the
    same slope there that reaches 1 at i = steps."""
    half = steps // 2
    values = []
    for i in range(steps):
        if i < half:
            fraction = i * threshold / half
        else:
            # a quadratic q(i) with q(half) = threshold, q'(half) = threshold / half, q(steps) = 1
            slope, span = threshold / half, steps - half
            curvature = (1 - threshold - slope * span) / span**2
            fraction = threshold + slope * (i - half) + curvature * (i - half) ** 2
        values.append((1 - fraction) * sigma_max)
    return [*values, 0.0]


@pytest.mark.parametrize("steps", [2, 3, 4, 9, 20])
def test_linear_quadratic_follows_mochis_definition(sigmas: torch.Tensor, steps: int) -> None:
    expected = torch.tensor(linear_quadratic_reference(steps, float(sigmas[-1])), dtype=torch.float32)
    torch.testing.assert_close(SCHEDULERS["linear_quadratic"](sigmas, steps), expected, rtol=1e-5, atol=1e-5)
    one = SCHEDULERS["linear_quadratic"](sigmas, 1)
    assert one.tolist() == pytest.approx([float(sigmas[-1]), 0.0])


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_kl_optimal_is_uniform_in_arctan_sigma(sigmas: torch.Tensor, steps: int) -> None:
    out = SCHEDULERS["kl_optimal"](sigmas, steps)
    assert float(out[0]) == pytest.approx(float(sigmas[-1]), rel=1e-6)
    if steps > 1:
        assert float(out[-2]) == pytest.approx(float(sigmas[0]), rel=1e-5)
        angles = torch.atan(out[:-1].double())
        gaps = angles[:-1] - angles[1:]
        torch.testing.assert_close(gaps, gaps.mean().expand_as(gaps), rtol=1e-5, atol=1e-6)
