"""Samplers: a common sweep over every entry of SAMPLERS on an exact denoiser, and agreement with diffusers.

The sweep (diffusers' SchedulerCommonTest spirit) uses data ~ N(mu, s^2) per element, whose denoiser is
exact: D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu). Starting from the exact marginal at sigma_max,
a good sampler ends near N(mu, s^2), and an ODE sampler near the exact ODE solution mu + s * noise.

The agreement tests drive a tiny seeded UNet2DConditionModel through our EpsDenoiser and through the
matching diffusers scheduler with the same sigmas, timesteps and noise, and compare the final latents.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    SchedulerMixin,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from torch import Tensor

from nodes.sd import schedules
from nodes.sd.denoisers import EpsDenoiser, VDenoiser
from nodes.sd.samplers import SAMPLERS, STOCHASTIC_SAMPLERS
from nodes.sd.samplers_multistep import BrownianNoise

UNet = UNet2DConditionModel
MU, S = 0.5, 0.5
STEPS = 50
AGREEMENT_TOLERANCE = 1e-4
"""Max abs difference of final fp32 latents vs diffusers; trajectories reach |x| of 45-75 (~2e-6 relative)."""

# (relative std tolerance, max per-sample error vs the exact ODE solution or None for stochastic samplers)
# at 50 Karras steps. First-order methods carry O(1/steps) error; second order and up are within 1%. Heun++,
# gradient estimation and dpm_adaptive (at its default rtol 0.05) behave like first-order methods here.
SWEEP_TOLERANCES: dict[str, tuple[float, float | None]] = {
    "euler": (0.05, 0.1),
    "euler_cfg_pp": (0.05, 0.1),
    "euler_ancestral": (0.10, None),
    "euler_ancestral_cfg_pp": (0.10, None),
    "heun": (0.01, 0.01),
    "heunpp2": (0.05, 0.1),
    "dpm_2": (0.01, 0.01),
    "dpm_2_ancestral": (0.02, None),
    "lms": (0.01, 0.01),
    "dpm_fast": (0.01, 0.01),
    "dpm_adaptive": (0.05, 0.1),
    "dpmpp_2s_ancestral": (0.02, None),
    "dpmpp_2s_ancestral_cfg_pp": (0.02, None),
    "dpmpp_sde": (0.02, None),
    "dpmpp_sde_gpu": (0.02, None),
    "dpmpp_2m": (0.01, 0.01),
    "dpmpp_2m_cfg_pp": (0.01, 0.01),
    "dpmpp_2m_sde": (0.02, None),
    "dpmpp_2m_sde_gpu": (0.02, None),
    "dpmpp_2m_sde_heun": (0.02, None),
    "dpmpp_2m_sde_heun_gpu": (0.02, None),
    "dpmpp_3m_sde": (0.02, None),
    "dpmpp_3m_sde_gpu": (0.02, None),
    "ddpm": (0.10, None),
    "lcm": (0.02, None),
    "ipndm": (0.01, 0.01),
    "ipndm_v": (0.01, 0.01),
    "deis": (0.01, 0.01),
    "res_multistep": (0.01, 0.01),
    "res_multistep_cfg_pp": (0.01, 0.01),
    "res_multistep_ancestral": (0.02, None),
    "res_multistep_ancestral_cfg_pp": (0.02, None),
    "gradient_estimation": (0.05, 0.1),
    "gradient_estimation_cfg_pp": (0.05, 0.1),
    "er_sde": (0.02, None),
    "seeds_2": (0.02, None),
    "seeds_3": (0.02, None),
    "sa_solver": (0.02, None),
    "sa_solver_pece": (0.02, None),
    "ddim": (0.05, 0.1),
    "uni_pc": (0.01, 0.01),
    "uni_pc_bh2": (0.01, 0.01),
}
OWN_STEP_PLACEMENT = frozenset({"dpm_fast", "dpm_adaptive"})
"""Samplers that take only the schedule's range and place their own steps (callbacks follow those steps)."""


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The test machine's 2 cores are shared; more threads than free cores makes tiny convolutions crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_denoiser(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
    """The exact posterior mean E[x0 | x] for x0 ~ N(MU, S^2), x = x0 + sigma * noise."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


@pytest.fixture(scope="module")
def karras_sigmas() -> Tensor:
    return schedules.karras(schedules.model_sigmas(schedules.scaled_linear_alphas_cumprod()), STEPS)


def lcm_expected_std(sigmas: Tensor) -> float:
    """LCM re-noises the posterior *mean*, which has less variance than the data; with an exact denoiser
    the variance follows v' = a^2 v + sigma_next^2, a = s^2 / (s^2 + sigma^2), so it ends below S."""
    sig = [float(s) for s in sigmas]
    variance = S**2 + sig[0] ** 2
    for i in range(len(sig) - 1):
        shrink = S**2 / (S**2 + sig[i] ** 2)
        variance = shrink**2 * variance + sig[i + 1] ** 2
    return math.sqrt(variance)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
class TestEverySampler:
    def run(
        self, name: str, sigmas: Tensor, seed: int = 1, shape: tuple[int, ...] = (256, 4, 8, 8), **kw: Any
    ) -> tuple[Tensor, Tensor]:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        x = MU + math.sqrt(S**2 + float(sigmas[0]) ** 2) * noise
        out = SAMPLERS[name](gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(seed), **kw)
        return noise, out

    def test_converges_to_the_data_distribution(self, name: str, karras_sigmas: Tensor) -> None:
        noise, out = self.run(name, karras_sigmas)
        std_tolerance, ode_tolerance = SWEEP_TOLERANCES[name]
        expected_std = lcm_expected_std(karras_sigmas) if name == "lcm" else S
        assert abs(float(out.mean()) - MU) < 0.01
        assert abs(float(out.std()) / expected_std - 1) < std_tolerance, float(out.std())
        if ode_tolerance is not None:
            assert float((out - (MU + S * noise)).abs().max()) < ode_tolerance

    def test_same_generator_seed_same_result(self, name: str) -> None:
        sigmas = schedules.karras(schedules.model_sigmas(schedules.scaled_linear_alphas_cumprod()), 10)
        _, first = self.run(name, sigmas, seed=3, shape=(2, 4, 8, 8))
        _, again = self.run(name, sigmas, seed=3, shape=(2, 4, 8, 8))
        _, other = self.run(name, sigmas, seed=4, shape=(2, 4, 8, 8))
        assert torch.equal(first, again)
        assert torch.equal(first, other) == (name not in STOCHASTIC_SAMPLERS)

    def test_callback_once_per_step_with_the_step_state(self, name: str, karras_sigmas: Tensor) -> None:
        if name in OWN_STEP_PLACEMENT:
            pytest.skip("places its own steps; tests/test_samplers_comfyui.py checks its callbacks")
        sigmas = karras_sigmas[-8:]
        seen: list[dict[str, Any]] = []
        self.run(name, sigmas, shape=(1, 4, 8, 8), callback=seen.append)
        assert [info["i"] for info in seen] == list(range(len(sigmas) - 1))
        for info in seen:
            assert {"i", "x", "sigma", "denoised"} <= set(info)
            assert info["sigma"] == pytest.approx(float(sigmas[info["i"]]))
            assert info["x"].shape == info["denoised"].shape == (1, 4, 8, 8)

    def test_extra_args_reach_the_denoiser(self, name: str, karras_sigmas: Tensor) -> None:
        received: list[Any] = []

        def denoiser(x: Tensor, sigma: Tensor, *, tag: str, **hooks: Any) -> Tensor:
            # the CFG++ samplers add their `on_uncond` hook; anything else would be a leak into the model call
            assert set(hooks) <= {"on_uncond"}
            received.append(tag)
            return gaussian_denoiser(x, sigma)

        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * float(karras_sigmas[-6])
        SAMPLERS[name](denoiser, x, karras_sigmas[-6:], extra_args={"tag": "t"}, generator=torch.Generator())
        assert received and set(received) == {"t"}


@pytest.mark.parametrize("name, std_tolerance", [("euler", 0.10), ("heun", 0.01), ("dpm_2", 0.01)])
def test_churn_adds_noise_and_still_converges(karras_sigmas: Tensor, name: str, std_tolerance: float) -> None:
    """Karras et al. 2022's stochastic sampler (Algorithm 2 with S_churn): raise sigma, add matching noise.
    (diffusers applies churn after evaluating the model, a different scheme, so there is no reference.)"""
    noise = torch.randn(256, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x = MU + math.sqrt(S**2 + float(karras_sigmas[0]) ** 2) * noise
    plain = SAMPLERS[name](gaussian_denoiser, x, karras_sigmas)
    generator = torch.Generator().manual_seed(1)
    churned = SAMPLERS[name](gaussian_denoiser, x, karras_sigmas, s_churn=10.0, generator=generator)
    assert not torch.allclose(plain, churned, atol=0.01)
    assert abs(float(churned.mean()) - MU) < 0.01 and abs(float(churned.std()) / S - 1) < std_tolerance


def test_brownian_noise_increments_add_up_over_overlapping_intervals() -> None:
    """dpmpp_sde asks for (sigma, sigma_mid) then (sigma, sigma_next): both must come from one path."""
    x = torch.zeros(4096)
    noise = BrownianNoise(x, torch.Generator().manual_seed(0))
    a, b, c = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(0.5)
    whole = noise(a, c) * math.sqrt(2.5)
    parts = noise(a, b) * math.sqrt(1.0) + noise(b, c) * math.sqrt(1.5)
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-5)
    assert abs(float(noise(a, b).std()) - 1) < 0.05 and abs(float(noise(b, c).std()) - 1) < 0.05


# -- agreement with diffusers -------------------------------------------------------------------------

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
STEPS_VS_DIFFUSERS = 10  # linspace(0, 999, 10) has integer timesteps, so both sides feed the UNet the same t


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        sample_size=8,
        norm_num_groups=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


@pytest.fixture(scope="module")
def context() -> Tensor:
    return torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def noise() -> Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(42))


class Replay:
    """Hands out pre-drawn noise in call order, whatever the interval (same noise for both sides)."""

    def __init__(self, draws: list[Tensor]) -> None:
        self.draws, self.calls = draws, 0

    def __call__(self, *_: Any) -> Tensor:
        self.calls += 1
        return self.draws[self.calls - 1]


def run_diffusers(
    unet: UNet, context: Tensor, scheduler: Any, x: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    options = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=context).sample
            x = scheduler.step(eps, t, x, **options).prev_sample
    return x


def run_ours(
    name: str,
    unet: UNet,
    context: Tensor,
    scheduler: Any,
    x: Tensor,
    sigmas: Tensor,
    prediction: str = "epsilon",
    **kw: Any,
) -> Tensor:
    kind = EpsDenoiser if prediction == "epsilon" else VDenoiser
    denoiser = kind(unet, scheduler.alphas_cumprod.double())
    return SAMPLERS[name](denoiser, x, sigmas, extra_args={"encoder_hidden_states": context}, **kw)


def sigmas_at(scheduler: Any, timesteps: Tensor) -> Tensor:
    """VE sigmas of a VP scheduler's integer timesteps, then 0 (DDIM and LCM keep no sigma table)."""
    model = schedules.model_sigmas(scheduler.alphas_cumprod)
    return torch.cat([model[torch.as_tensor(timesteps).long()], torch.zeros(1, dtype=torch.float64)]).float()


def assert_agrees(ours: Tensor, theirs: Tensor) -> None:
    assert torch.isfinite(theirs).all()
    difference = float((ours - theirs).abs().max())
    assert difference < AGREEMENT_TOLERANCE, f"max abs diff {difference:.2e}"


def made(cls: type[SchedulerMixin], **config: Any) -> Any:
    scheduler = cls(**SD, **config)
    scheduler.set_timesteps(STEPS_VS_DIFFUSERS)
    return scheduler


@pytest.mark.parametrize(
    "config",
    [{"timestep_spacing": "linspace"}, {"timestep_spacing": "trailing"}, {"use_karras_sigmas": True}],
    ids=["linspace", "trailing", "karras"],
)
def test_euler_agrees_with_diffusers(unet: UNet, context: Tensor, noise: Tensor, config: dict[str, Any]) -> None:
    scheduler = made(EulerDiscreteScheduler, **config)
    x = noise * scheduler.init_noise_sigma
    theirs = run_diffusers(unet, context, scheduler, x)
    assert_agrees(run_ours("euler", unet, context, scheduler, x, scheduler.sigmas), theirs)


def test_euler_v_prediction_agrees_with_diffusers(unet: UNet, context: Tensor, noise: Tensor) -> None:
    scheduler = made(EulerDiscreteScheduler, prediction_type="v_prediction")
    x = noise * scheduler.init_noise_sigma
    theirs = run_diffusers(unet, context, scheduler, x)
    assert_agrees(run_ours("euler", unet, context, scheduler, x, scheduler.sigmas, "v_prediction"), theirs)


def test_euler_ancestral_agrees_with_diffusers_given_the_same_generator(
    unet: UNet, context: Tensor, noise: Tensor
) -> None:
    """Both draw randn(x.shape) per step from the generator (diffusers' last draw is multiplied by 0)."""
    scheduler = made(EulerAncestralDiscreteScheduler)
    x = noise * scheduler.init_noise_sigma
    theirs = run_diffusers(unet, context, scheduler, x, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    ours = run_ours("euler_ancestral", unet, context, scheduler, x, scheduler.sigmas, generator=generator)
    assert_agrees(ours, theirs)


@pytest.mark.parametrize("name, cls", [("heun", HeunDiscreteScheduler), ("dpm_2", KDPM2DiscreteScheduler)])
def test_second_order_karras_samplers_agree_with_diffusers(
    unet: UNet, context: Tensor, noise: Tensor, name: str, cls: type[SchedulerMixin]
) -> None:
    """diffusers interleaves each step's two evaluations in one sigma table; every other entry is ours."""
    scheduler = made(cls)
    sigmas = torch.cat([scheduler.sigmas[0::2][: STEPS_VS_DIFFUSERS], torch.zeros(1)])
    x = noise * scheduler.init_noise_sigma
    theirs = run_diffusers(unet, context, scheduler, x)
    assert_agrees(run_ours(name, unet, context, scheduler, x, sigmas), theirs)


def test_lms_agrees_with_diffusers(unet: UNet, context: Tensor, noise: Tensor) -> None:
    """Up to the last step: there ComfyUI's lms (and ours) lands on the prediction, diffusers extrapolates."""
    scheduler = made(LMSDiscreteScheduler)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        theirs = x
        for t in scheduler.timesteps[:-1]:
            eps = unet(scheduler.scale_model_input(theirs, t), t, encoder_hidden_states=context).sample
            theirs = scheduler.step(eps, t, theirs).prev_sample
    assert_agrees(run_ours("lms", unet, context, scheduler, x, scheduler.sigmas[:-1]), theirs)


def test_dpmpp_2m_agrees_with_diffusers(unet: UNet, context: Tensor, noise: Tensor) -> None:
    """diffusers works on VP samples x / sqrt(1 + sigma^2); at sigma 0 both are the same latent."""
    scheduler = made(DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2)
    x = noise * (1 + scheduler.sigmas[0] ** 2) ** 0.5
    ours = run_ours("dpmpp_2m", unet, context, scheduler, x, scheduler.sigmas)
    assert_agrees(ours, run_diffusers(unet, context, scheduler, noise))


def test_dpmpp_2m_sde_agrees_with_diffusers_given_the_same_generator(
    unet: UNet, context: Tensor, noise: Tensor
) -> None:
    scheduler = made(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++", solver_order=2)
    theirs = run_diffusers(unet, context, scheduler, noise, torch.Generator().manual_seed(9))
    x = noise * (1 + scheduler.sigmas[0] ** 2) ** 0.5
    generator = torch.Generator().manual_seed(9)
    ours = run_ours("dpmpp_2m_sde", unet, context, scheduler, x, scheduler.sigmas, generator=generator)
    assert_agrees(ours, theirs)


def test_dpmpp_sde_agrees_with_diffusers_step_code_given_the_same_noise(
    unet: UNet, context: Tensor, noise: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers' DPMSolverSDEScheduler imports torchsde (not installed, not our dependency) only to build its
    Brownian tree. We stub the module for the import, hand both sides the same replayed noise, and so
    compare the step algorithm itself; the noise source is checked by the Brownian-path test above."""
    monkeypatch.setitem(sys.modules, "torchsde", sys.modules.get("torchsde") or types.ModuleType("torchsde"))
    cls = importlib.import_module("diffusers.schedulers.scheduling_dpmsolver_sde").DPMSolverSDEScheduler
    scheduler = made(cls)
    draws = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(100 + i)) for i in range(20)]
    scheduler.noise_sampler = Replay(draws)
    x = noise * scheduler.init_noise_sigma
    theirs = run_diffusers(unet, context, scheduler, x)
    sigmas = torch.cat([scheduler.sigmas[0::2], torch.zeros(1)])
    ours = run_ours("dpmpp_sde", unet, context, scheduler, x, sigmas, noise_sampler=Replay(draws))
    assert_agrees(ours, theirs)


def test_ddim_agrees_with_diffusers(unet: UNet, context: Tensor, noise: Tensor) -> None:
    """SD's DDIM config (leading spacing, steps_offset 1) is our ddim_uniform; set_alpha_to_one ends at sigma 0."""
    config = {"clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": "leading"}
    scheduler = made(DDIMScheduler, **config)
    sigmas = sigmas_at(scheduler, scheduler.timesteps)
    ours = run_ours("ddim", unet, context, scheduler, noise * (1 + sigmas[0] ** 2) ** 0.5, sigmas)
    assert_agrees(ours, run_diffusers(unet, context, scheduler, noise))


def test_uni_pc_bh2_agrees_with_diffusers(unet: UNet, context: Tensor, noise: Tensor) -> None:
    scheduler = made(UniPCMultistepScheduler, solver_order=3, solver_type="bh2")
    x = noise * (1 + scheduler.sigmas[0] ** 2) ** 0.5
    ours = run_ours("uni_pc_bh2", unet, context, scheduler, x, scheduler.sigmas)
    assert_agrees(ours, run_diffusers(unet, context, scheduler, noise))


def test_uni_pc_bh1_agrees_with_diffusers_ending_at_sigma_min(
    unet: UNet, context: Tensor, noise: Tensor
) -> None:
    """diffusers' bh1 with a final sigma of 0 returns NaN (its first-order predictor multiplies B(h) = -inf by
    0), so this compares on its "sigma_min" ending, where its VP latent is ours / sqrt(1 + sigma_min^2)."""
    scheduler = made(UniPCMultistepScheduler, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min")
    x = noise * (1 + scheduler.sigmas[0] ** 2) ** 0.5
    ours = run_ours("uni_pc", unet, context, scheduler, x, scheduler.sigmas)
    ours = ours / (1 + scheduler.sigmas[-1] ** 2) ** 0.5
    assert_agrees(ours, run_diffusers(unet, context, scheduler, noise))


def test_lcm_agrees_with_diffusers_given_the_same_generator(
    unet: UNet, context: Tensor, noise: Tensor
) -> None:
    """diffusers also applies LCM's consistency boundary condition c_skip/c_out (a property of LCM models,
    which we leave to the model side); at these timesteps (>= 259) it changes x0 by < 1e-7 relative."""
    scheduler = LCMScheduler(**SD)
    scheduler.set_timesteps(4)
    sigmas = sigmas_at(scheduler, scheduler.timesteps)
    theirs = run_diffusers(unet, context, scheduler, noise, torch.Generator().manual_seed(11))
    x = noise * (1 + sigmas[0] ** 2) ** 0.5
    ours = run_ours("lcm", unet, context, scheduler, x, sigmas, generator=torch.Generator().manual_seed(11))
    assert_agrees(ours, theirs)
