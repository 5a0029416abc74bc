"""Samplers that use the unconditional prediction: CFG++ variants, RES multistep and gradient estimation.

CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models") takes
the guided x0 as the point to step from but renoises along the *unconditional* noise direction, which keeps
samples on the data manifold at low guidance scales. A sampler gets the unconditional x0 through the
`on_uncond` keyword it adds to the denoiser's extra args: CFGDenoiser calls it once per evaluation with the
unconditional prediction (computing it even at cfg 1), as ComfyUI's post-CFG hook does. A denoiser without
CFG never calls it; the unconditional prediction is then the denoised one and each sampler reduces to its
plain form. Models here are variance-exploding (alpha = 1), so ComfyUI's alpha_t factors drop out.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from nodes.sd.samplers_multistep import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    get_ancestral_step,
    half_log_snr,
    host_schedule,
    report,
    resolve_noise,
)

UNCOND_HOOK = "on_uncond"
"""The extra-args keyword CFGDenoiser calls with the unconditional x0 (see denoisers.CFGDenoiser)."""


class UncondCapture:
    """Holds the unconditional x0 the CFG denoiser reported for the latest evaluation."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __call__(self, uncond: Tensor) -> None:
        self.value = uncond

    def take(self, denoised: Tensor) -> Tensor:
        """The reported unconditional x0 (cleared for the next call), or `denoised` when none was reported."""
        value, self.value = self.value, None
        return denoised if value is None else value


def with_uncond_hook(extra_args: dict[str, Any] | None) -> tuple[dict[str, Any], UncondCapture]:
    capture = UncondCapture()
    return {**(extra_args or {}), UNCOND_HOOK: capture}, capture



@torch.no_grad()
def sample_euler_ancestral_cfg_pp(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler ancestral with CFG++ (Chung et al. 2024, Algorithm 2): x_next = x0_cfg + sigma_down * eps_uncond,
    plus fresh noise sigma_up."""
    args, capture = with_uncond_hook(extra_args)
    s_in = x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **args)
        uncond = capture.take(denoised)
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised
            continue
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        x = denoised + (x - uncond) * (sigma_down / sig[i])
        if eta > 0 and s_noise > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Euler with CFG++ (Chung et al. 2024, Algorithm 1): DDIM's deterministic step along the unconditional noise."""
    return sample_euler_ancestral_cfg_pp(
        denoiser, x, sigmas, extra_args=extra_args, callback=callback, noise_sampler=noise_sampler, eta=0.0, s_noise=0.0
    )


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2S) ancestral (Lu et al. 2022) integrating the unconditional x0, with the step's guidance
    (cfg x0 - uncond x0 at its start) added back after it (CFG++, Chung et al. 2024)."""
    args, capture = with_uncond_hook(extra_args)
    s_in = x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **args)
        uncond = capture.take(denoised)
        guidance = denoised - uncond
        report(callback, i, x, sig[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        if sigma_down == 0.0:
            x = uncond
        else:
            h = half_log_snr(sigma_down) - half_log_snr(sig[i])
            sigma_mid = sig[i] * math.exp(-0.5 * h)
            x_mid = (sigma_mid / sig[i]) * x - math.expm1(-0.5 * h) * uncond
            uncond_mid = capture.take(denoiser(x_mid, sigma_mid * s_in, **args))
            x = (sigma_down / sig[i]) * x - math.expm1(-h) * uncond_mid
        if sig[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = x + guidance
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) with CFG++: the exponential step renoises along the unconditional
    x0, the multistep correction uses the guided x0 against the previous unconditional one."""
    args, capture = with_uncond_hook(extra_args)
    s_in = x.new_ones([x.shape[0]])
    _, sig = host_schedule(sigmas)
    old_uncond: Tensor | None = None
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **args)
        uncond = capture.take(denoised)
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised
        else:
            h = half_log_snr(sig[i + 1]) - half_log_snr(sig[i])
            decay = math.exp(-h)
            x = denoised + decay * (x - uncond)
            if old_uncond is not None:
                r = (half_log_snr(sig[i]) - half_log_snr(sig[i - 1])) / h
                x = x - math.expm1(-h) / (2 * r) * (denoised - old_uncond)
        old_uncond = uncond
    return x


def _phi1(t: float) -> float:
    return math.expm1(t) / t


def _phi2(t: float) -> float:
    return (_phi1(t) - 1.0) / t


@torch.no_grad()
def res_multistep(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    eta: float = 1.0,
    cfg_pp: bool = False,
) -> Tensor:
    """RES second-order multistep (Zhang et al. 2023, "Improving the Diffusion Sampling via Refined Exponential
    Solver", arXiv 2308.02157), ancestral with eta > 0, optionally CFG++; first step and the last are Euler."""
    args, capture = with_uncond_hook(extra_args) if cfg_pp else (extra_args or {}, None)
    s_in = x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    old_denoised: Tensor | None = None
    old_sigma_down = 0.0
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **args)
        uncond = capture.take(denoised) if capture is not None else denoised
        report(callback, i, x, sig[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        if sigma_down == 0.0 or old_denoised is None:
            x = denoised + (x - uncond) * (sigma_down / sig[i])
        else:
            h = half_log_snr(sigma_down) - half_log_snr(sig[i])
            c2 = (half_log_snr(sig[i - 1]) - half_log_snr(old_sigma_down)) / h
            b1, b2 = _phi1(-h) - _phi2(-h) / c2, _phi2(-h) / c2
            b1, b2 = (0.0 if math.isnan(b) else b for b in (b1, b2))
            x = x + (denoised - uncond)
            x = math.exp(-h) * x + h * (b1 * uncond + b2 * old_denoised)
        if sig[i + 1] > 0 and sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = uncond, sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, s_noise: float = 1.0, **kw: Any) -> Tensor:
    """RES multistep, deterministic (eta 0; Zhang et al. 2023)."""
    return res_multistep(denoiser, x, sigmas, s_noise=s_noise, eta=0.0, cfg_pp=False, **kw)


@torch.no_grad()
def sample_res_multistep_cfg_pp(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, s_noise: float = 1.0, **kw: Any
) -> Tensor:
    """RES multistep with CFG++, deterministic (eta 0; Zhang et al. 2023, Chung et al. 2024)."""
    return res_multistep(denoiser, x, sigmas, s_noise=s_noise, eta=0.0, cfg_pp=True, **kw)


@torch.no_grad()
def sample_res_multistep_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0, **kw: Any
) -> Tensor:
    """RES multistep, ancestral (Zhang et al. 2023 with DDIM's eta split)."""
    return res_multistep(denoiser, x, sigmas, s_noise=s_noise, eta=eta, cfg_pp=False, **kw)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0, **kw: Any
) -> Tensor:
    """RES multistep with CFG++, ancestral (Zhang et al. 2023, Chung et al. 2024)."""
    return res_multistep(denoiser, x, sigmas, s_noise=s_noise, eta=eta, cfg_pp=True, **kw)


@torch.no_grad()
def sample_gradient_estimation(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    ge_gamma: float = 2.0,
    cfg_pp: bool = False,
) -> Tensor:
    """Euler plus a gradient-estimation term (ge_gamma - 1)(d - d_prev) dt (Permenter & Yuan 2024,
    "Interpreting and Improving Diffusion Models from an Optimization Perspective"), optionally CFG++."""
    args, capture = with_uncond_hook(extra_args) if cfg_pp else (extra_args or {}, None)
    s_in = x.new_ones([x.shape[0]])
    _, sig = host_schedule(sigmas)
    old_d: Tensor | None = None
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **args)
        uncond = capture.take(denoised) if capture is not None else denoised
        d = (x - uncond) / sig[i]
        report(callback, i, x, sig[i], denoised)
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0.0:
            x = denoised
        else:
            x = denoised + d * sig[i + 1]  # Euler: x + d dt, with the guided x0 under CFG++
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    ge_gamma: float = 2.0,
    **kw: Any,
) -> Tensor:
    """Gradient estimation with CFG++ (Permenter & Yuan 2024; Chung et al. 2024)."""
    return sample_gradient_estimation(denoiser, x, sigmas, ge_gamma=ge_gamma, cfg_pp=True, **kw)
