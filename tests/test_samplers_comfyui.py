"""The samplers ComfyUI added after k-diffusion's classics: references, identities and formulas.

Where diffusers has the same algorithm (DPM-Solver++(3M) with and without noise, DDPM) we drive the tiny
seeded UNet through both with the same sigmas and noise, as tests/test_samplers.py does. Where a sampler is
another one in disguise (DDPM is ancestral Euler; SEEDS-2 without noise is DPM-Solver++(2S) at r = 1/2;
DEIS "rhoab" is LMS; iPNDM-v on equal steps is iPNDM; SA-Solver at order 1 without noise is DDIM; every
CFG++ sampler without CFG is its plain twin) the test holds the identity. CFG++ steps and the CFGDenoiser
hook are checked against the paper's formulas with two different known predictions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

from nodes.sd import ksampler, schedules
from nodes.sd.denoisers import CFGDenoiser, EpsDenoiser
from nodes.sd.samplers import SAMPLERS, sample_dpm_adaptive, sample_dpm_fast
from nodes.sd.samplers.adams import deis_tab_coefficients, sa_coefficients
from nodes.sd.types import CondItem, Latent, ModelHandle
from test_samplers import (
    MU,
    S,
    UNet,
    assert_agrees,
    context,  # noqa: F401  (fixture)
    gaussian_denoiser,
    made,
    noise,  # noqa: F401  (fixture)
    run_diffusers,
    run_ours,
    sigmas_at,
    unet,  # noqa: F401  (fixture)
)

COMFYUI_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
"""comfy/samplers.py's KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"] (ComfyUI 0.3.64)."""
SD_ALPHAS = schedules.scaled_linear_alphas_cumprod()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def karras_sigmas() -> Tensor:
    return schedules.karras(schedules.model_sigmas(schedules.scaled_linear_alphas_cumprod()), 12)


def start(sigmas: Tensor, batch: int = 4) -> Tensor:
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return MU + math.sqrt(S**2 + float(sigmas[0]) ** 2) * noise


def test_samplers_are_comfyuis_in_its_order() -> None:
    assert list(SAMPLERS) == COMFYUI_SAMPLERS


# -- diffusers references -----------------------------------------------------------------------------------


def test_dpmpp_3m_sde_warm_up_agrees_with_diffusers_given_the_same_generator(
    unet: UNet, context: Tensor, noise: Tensor
) -> None:
    """The first two steps (first order, then ComfyUI's Heun-type 2M SDE correction) with noise, against
    diffusers' SDE-DPM-Solver++. Its third-order SDE update cannot serve as a reference: its D2 weight
    (1 - e^-2h - 2h) / (2h)^2 - 0.5 tends to -1 as h -> 0 where the exponential integrator's tends to 0 (its
    ODE update has the right sign, and agrees with ours below)."""
    config = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "lower_order_final": False}
    config["solver_type"] = "heun"
    scheduler = made(DPMSolverMultistepScheduler, **config)
    generator = torch.Generator().manual_seed(9)
    theirs = noise
    with torch.no_grad():
        for t in scheduler.timesteps[:2]:
            eps = unet(scheduler.scale_model_input(theirs, t), t, encoder_hidden_states=context).sample
            theirs = scheduler.step(eps, t, theirs, generator=generator).prev_sample
    x = noise * (1 + scheduler.sigmas[0] ** 2) ** 0.5
    generator = torch.Generator().manual_seed(9)
    ours = run_ours("dpmpp_3m_sde", unet, context, scheduler, x, scheduler.sigmas[:3], generator=generator)
    assert_agrees(ours / (1 + scheduler.sigmas[2] ** 2) ** 0.5, theirs)


def test_dpmpp_3m_sde_without_noise_is_diffusers_dpmpp_3m(unet: UNet, context: Tensor, noise: Tensor) -> None:
    config = {"algorithm_type": "dpmsolver++", "solver_order": 3, "lower_order_final": False}
    config["solver_type"] = "heun"
    scheduler = made(DPMSolverMultistepScheduler, **config)
    x = noise * (1 + scheduler.sigmas[0] ** 2) ** 0.5
    ours = run_ours("dpmpp_3m_sde", unet, context, scheduler, x, scheduler.sigmas, eta=0.0)
    assert_agrees(ours, run_diffusers(unet, context, scheduler, noise))


def test_ddpm_agrees_with_diffusers_given_the_same_generator(unet: UNet, context: Tensor, noise: Tensor) -> None:
    """DDPM's posterior step (Ho et al. 2020) between diffusers' leading timesteps, ending at x0."""
    scheduler = made(DDPMScheduler, clip_sample=False)
    sigmas = sigmas_at(scheduler, scheduler.timesteps)
    theirs = run_diffusers(unet, context, scheduler, noise, torch.Generator().manual_seed(5))
    x = noise * (1 + sigmas[0] ** 2) ** 0.5
    ours = run_ours("ddpm", unet, context, scheduler, x, sigmas, generator=torch.Generator().manual_seed(5))
    assert_agrees(ours, theirs)


# -- identities ---------------------------------------------------------------------------------------------


def run(name: str, sigmas: Tensor, seed: int = 3, denoiser: Any = gaussian_denoiser, **options: Any) -> Tensor:
    return SAMPLERS[name](denoiser, start(sigmas), sigmas, generator=torch.Generator().manual_seed(seed), **options)


def test_ddpm_is_ancestral_euler(karras_sigmas: Tensor) -> None:
    """The DDPM posterior is DDIM with eta = 1, which in sigma form is Euler ancestral."""
    torch.testing.assert_close(run("ddpm", karras_sigmas), run("euler_ancestral", karras_sigmas), rtol=1e-5, atol=1e-5)


def test_seeds_2_without_noise_is_dpmpp_2s_at_the_midpoint(karras_sigmas: Tensor) -> None:
    torch.testing.assert_close(
        run("seeds_2", karras_sigmas, eta=0.0), run("dpmpp_sde", karras_sigmas, eta=0.0), rtol=1e-5, atol=1e-5
    )


def test_deis_rhoab_is_linear_multistep_in_sigma(karras_sigmas: Tensor) -> None:
    torch.testing.assert_close(
        run("deis", karras_sigmas, deis_mode="rhoab", max_order=3), run("lms", karras_sigmas, order=3)
    )


def test_ipndm_v_on_equal_steps_is_ipndm_up_to_third_order() -> None:
    """(ComfyUI's fourth-order iPNDM-v weights, from the diff-sampler code, reduce to (57, -65, 43, -11) / 24 on
    equal steps rather than Adams-Bashforth's (55, -59, 37, -9) / 24; we keep ComfyUI's.)"""
    sigmas = torch.cat([torch.linspace(8.0, 0.5, 9), torch.zeros(1)])
    torch.testing.assert_close(
        run("ipndm_v", sigmas, max_order=3), run("ipndm", sigmas, max_order=3), rtol=1e-5, atol=1e-5
    )


def test_sa_solver_at_first_order_without_noise_is_ddim(karras_sigmas: Tensor) -> None:
    options = {"tau_func": lambda sigma: 0.0, "predictor_order": 1, "corrector_order": 0}
    ours = run("sa_solver", karras_sigmas, **options)
    torch.testing.assert_close(ours, run("ddim", karras_sigmas), rtol=1e-5, atol=1e-5)


def test_deis_tab_coefficients_integrate_dsigma_over_each_step(karras_sigmas: Tensor) -> None:
    """The Lagrange basis sums to 1, so a step's coefficients sum to its sigma increment."""
    sig = [float(s) for s in karras_sigmas]
    for i, coefficients in enumerate(deis_tab_coefficients(sig, max_order=3)):
        if coefficients:
            assert sum(coefficients) == pytest.approx(sig[i + 1] - sig[i], rel=2e-3)


@pytest.mark.parametrize(
    "name, plain",
    [("euler_cfg_pp", "euler"), ("euler_ancestral_cfg_pp", "euler_ancestral"), ("dpmpp_2m_cfg_pp", "dpmpp_2m"),
     ("dpmpp_2s_ancestral_cfg_pp", "dpmpp_2s_ancestral"), ("res_multistep_cfg_pp", "res_multistep"),
     ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral"),
     ("gradient_estimation_cfg_pp", "gradient_estimation")],
)
def test_cfg_pp_without_guidance_is_the_plain_sampler(karras_sigmas: Tensor, name: str, plain: str) -> None:
    torch.testing.assert_close(run(name, karras_sigmas), run(plain, karras_sigmas), rtol=1e-5, atol=1e-5)


# -- CFG++ formulas and the CFGDenoiser hook ----------------------------------------------------------------


def guided_denoiser(x: Tensor, sigma: Tensor, *, on_uncond: Any = None) -> Tensor:
    """A stand-in for CFG: the guided x0 pulls to 1.5, the unconditional one (reported to the hook) to -0.5."""
    shrink = S**2 / (S**2 + sigma.reshape(-1, 1, 1, 1) ** 2)
    if on_uncond is not None:
        on_uncond(-0.5 + shrink * (x + 0.5))
    return 1.5 + shrink * (x - 1.5)


def test_euler_cfg_pp_steps_from_the_guided_x0_along_the_unconditional_noise() -> None:
    """Chung et al. 2024, Algorithm 1: x_next = x0_cfg + sigma_next * (x - x0_uncond) / sigma."""
    sigmas = torch.tensor([4.0, 1.5, 0.0])
    x = start(sigmas)
    ours = SAMPLERS["euler_cfg_pp"](guided_denoiser, x, sigmas[:2])
    shrink = S**2 / (S**2 + 16.0)
    guided, uncond = 1.5 + shrink * (x - 1.5), -0.5 + shrink * (x + 0.5)
    torch.testing.assert_close(ours, guided + 1.5 * (x - uncond) / 4.0)
    # DPM-Solver++(2M) CFG++'s first step is the same exponential (DDIM) step
    torch.testing.assert_close(SAMPLERS["dpmpp_2m_cfg_pp"](guided_denoiser, x, sigmas[:2]), ours)
    # the final step to sigma 0 lands on the guided prediction
    final = SAMPLERS["euler_cfg_pp"](guided_denoiser, x, torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(final, 1.5 + S**2 / (S**2 + 2.25) * (x - 1.5))


@pytest.fixture(scope="module")
def cfg_parts(unet: UNet) -> tuple[EpsDenoiser, CondItem, CondItem]:
    generator = torch.Generator().manual_seed(3)
    positive = CondItem(embeds=torch.randn(1, 7, 32, generator=generator))
    negative = CondItem(embeds=torch.randn(1, 7, 32, generator=generator))
    return EpsDenoiser(unet, schedules.scaled_linear_alphas_cumprod()), positive, negative


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_cfg_denoiser_reports_the_unconditional_x0_even_at_cfg_1(
    cfg_parts: tuple[EpsDenoiser, CondItem, CondItem], cfg: float
) -> None:
    model, positive, negative = cfg_parts
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)) * 3.0
    sigma = torch.tensor([3.0])
    seen: list[Tensor] = []
    guided = CFGDenoiser(model, (positive,), (negative,), cfg)(x, sigma, on_uncond=seen.append)
    uncond_alone = CFGDenoiser(model, (negative,), (), 1.0)(x, sigma)
    cond_alone = CFGDenoiser(model, (positive,), (), 1.0)(x, sigma)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], uncond_alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(guided, uncond_alone + cfg * (cond_alone - uncond_alone), rtol=1e-4, atol=1e-4)


# -- samplers that place their own steps --------------------------------------------------------------------


def counting(calls: list[float]) -> Any:
    def denoiser(x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        calls.append(float(sigma[0]))
        return gaussian_denoiser(x, sigma)

    return denoiser


def test_dpm_fast_spends_one_evaluation_per_step_and_converges_at_sigma_min() -> None:
    errors = []
    for steps in (3, 4, 5, 9, 10, 12, 24, 48):
        sigmas = schedules.karras(schedules.model_sigmas(schedules.scaled_linear_alphas_cumprod()), steps)
        calls: list[float] = []
        x = start(sigmas)
        out = sample_dpm_fast(counting(calls), x, sigmas)
        assert len(calls) == steps
        assert calls[0] == pytest.approx(float(sigmas[0])) and min(calls) > float(sigmas[-2]) * 0.999
        noise = (x - MU) / math.sqrt(S**2 + float(sigmas[0]) ** 2)
        exact_at_sigma_min = MU + math.sqrt(S**2 + float(sigmas[-2]) ** 2) * noise  # the ODE's solution there
        errors.append(float((out - exact_at_sigma_min).abs().max()))
    # each nfe has its own order pattern (10 = 3,3,3,1 beats 12 = 3,3,3,2,1 here), so compare 12, 24, 48
    assert errors[-1] < errors[-2] < errors[-3] and errors[-1] < 0.002, errors


def test_dpm_adaptive_gets_closer_as_the_tolerance_shrinks(karras_sigmas: Tensor) -> None:
    x = start(karras_sigmas)
    noise = (x - MU) / math.sqrt(S**2 + float(karras_sigmas[0]) ** 2)
    exact = MU + math.sqrt(S**2 + float(karras_sigmas[-2]) ** 2) * noise
    errors, evaluations = [], []
    for rtol in (0.1, 0.01, 0.001):
        calls: list[float] = []
        out = sample_dpm_adaptive(counting(calls), x, karras_sigmas, rtol=rtol, atol=rtol / 10)
        errors.append(float((out - exact).abs().max()))
        evaluations.append(len(calls))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, errors
    assert evaluations[0] < evaluations[1] < evaluations[2]


def test_dpm_samplers_report_each_step_they_take(karras_sigmas: Tensor) -> None:
    for sampler in (sample_dpm_fast, sample_dpm_adaptive):
        seen: list[dict[str, Any]] = []
        sampler(gaussian_denoiser, start(karras_sigmas, 1), karras_sigmas, callback=seen.append)
        assert [info["i"] for info in seen] == list(range(len(seen))) and seen
        assert seen[0]["sigma"] == pytest.approx(float(karras_sigmas[0]))
        assert all(info["denoised"].shape == (1, 4, 8, 8) for info in seen)


# -- Heun++ -------------------------------------------------------------------------------------------------


def test_heunpp2_weights_its_slopes_by_sigma_over_sigma_max() -> None:
    """Two steps: the first is Heun with weights (1 - s1 / 2 s0, s1 / 2 s0), the last is Euler to sigma 0."""
    sigmas = torch.tensor([6.0, 2.0, 0.0])
    x = start(sigmas)

    def d(x: Tensor, sigma: float) -> Tensor:
        return (x - gaussian_denoiser(x, torch.tensor([sigma]))) / sigma

    d0 = d(x, 6.0)
    x2 = x + d0 * -4.0
    w2 = 2.0 / 12.0
    x1 = x + ((1 - w2) * d0 + w2 * d(x2, 2.0)) * -4.0
    expected = x1 + d(x1, 2.0) * -2.0
    torch.testing.assert_close(SAMPLERS["heunpp2"](gaussian_denoiser, x, sigmas), expected)


@pytest.mark.parametrize("cfg_pp, plain", [("euler_cfg_pp", "euler"), ("dpmpp_2m_cfg_pp", "dpmpp_2m")])
def test_ksampler_hands_cfg_pp_the_unconditional_x0_through_its_wrappers(unet: UNet, cfg_pp: str, plain: str) -> None:
    """Through KSampler (CFG, a noise mask, a stop check): with the negative equal to the positive the
    unconditional x0 is the guided one and CFG++ is its plain twin; with another negative it is not."""
    model = ModelHandle(unet_ref=unet, family="sd1", prediction="epsilon", alphas_cumprod=SD_ALPHAS)
    generator = torch.Generator().manual_seed(3)
    positive = (CondItem(embeds=torch.randn(1, 7, 32, generator=generator)),)
    negative = (CondItem(embeds=torch.randn(1, 7, 32, generator=generator)),)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :2, :] = 0.0
    latent = Latent(torch.randn(1, 4, 8, 8, generator=generator), noise_mask=mask)

    def run_ksampler(name: str, negative: tuple[CondItem, ...]) -> Tensor:
        return ksampler.sample(
            model, seed=2, steps=4, cfg=1.0, sampler_name=name, scheduler="karras", positive=positive,
            negative=negative, latent=latent, should_stop=lambda: False,
        ).samples

    torch.testing.assert_close(run_ksampler(cfg_pp, positive), run_ksampler(plain, positive), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(run_ksampler(cfg_pp, negative), run_ksampler(plain, negative), atol=1e-3)


@pytest.mark.parametrize("tau", [0.0, 1.0])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_sa_solver_coefficients_are_the_exponentially_weighted_lagrange_integrals(tau: float, order: int) -> None:
    """Xue et al. 2023, eq. 15 with alpha = 1: b_j = (1 + tau^2) int_ls^lt e^{-(1 + tau^2)(lt - u)} L_j(u) du,
    L_j the Lagrange basis of the predictions' lambdas; here by Gauss-Legendre quadrature (exact to ~1e-12)."""
    lambdas = [-2.1, -1.4, -0.6, 0.1][-order:]
    lam_s, lam_t = lambdas[-1], lambdas[-1] + 0.8
    nodes, weights = np.polynomial.legendre.leggauss(40)
    u = lam_s + (nodes + 1) / 2 * (lam_t - lam_s)
    kernel = (1 + tau**2) * np.exp(-(1 + tau**2) * (lam_t - u)) * weights * (lam_t - lam_s) / 2
    expected = []
    for j in range(order):
        basis = np.ones_like(u)
        for k in range(order):
            if k != j:
                basis *= (u - lambdas[k]) / (lambdas[j] - lambdas[k])
        expected.append(float((kernel * basis).sum()))
    ours = sa_coefficients(lambdas, lam_s, lam_t, tau, simple_order_2=False, corrector=False)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
