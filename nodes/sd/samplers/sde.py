"""Stochastic samplers in log-sigma time: DDPM, DPM-Solver++(3M) SDE, ER-SDE-Solver-3 and SEEDS-2/3.

All work on the variance-exploding x = x0 + sigma * noise (alpha = 1), in lambda = -log(sigma), where the
linear part of the reverse SDE integrates exactly. Noise comes from the `noise_sampler(sigma, sigma_next)`
KSampler passes (a Brownian tree for the dpmpp_*_sde family, independent draws otherwise) or from `generator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from nodes.sd.samplers_multistep import (Denoiser, NoiseSampler, StepCallback, half_log_snr, host_schedule, report,
                                         resolve_noise)



@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) between arbitrary sigmas: the posterior
    q(x_prev | x, x0) of the variance-preserving chain, with alpha = abar / abar_prev of the two sigmas."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        sigma, sigma_prev = sig[i], sig[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        abar, abar_prev = 1 / (sigma**2 + 1), 1 / (sigma_prev**2 + 1)
        alpha = abar / abar_prev
        eps = (x - denoised) / sigma
        x_vp = x * abar**0.5
        mean = (x_vp - (1 - alpha) / (1 - abar) ** 0.5 * eps) / alpha**0.5
        if sigma_prev > 0:
            std = ((1 - alpha) * (1 - abar_prev) / (1 - abar)) ** 0.5
            x = (mean + std * noise(sigmas[i], sigmas[i + 1])) * (1 + sigma_prev**2) ** 0.5
        else:
            x = mean
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
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
    """Multistep DPM-Solver++(3M) SDE (Lu et al. 2022's SDE-DPM-Solver++ with a third-order multistep
    correction, k-diffusion's dpmpp_3m_sde); second order on the second step, first on the first and last."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)  # its intervals never overlap: plain draws have the law
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h_1: float | None = None
    h_2: float | None = None
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised
            continue
        h = half_log_snr(sig[i + 1]) - half_log_snr(sig[i])
        h_eta = h * (eta + 1)
        x = (sig[i + 1] / sig[i]) * math.exp(-h * eta) * x - math.expm1(-h_eta) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None and denoised_2 is not None and denoised_1 is not None and h_1 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None and denoised_1 is not None:
            x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
        if eta > 0 and s_noise > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * (sig[i + 1] * (-math.expm1(-2 * h * eta)) ** 0.5 * s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def er_sde_noise_scaler(value: Tensor) -> Tensor:
    """ER-SDE's default noise scale function of lambda = sigma (Cui et al. 2023's "ER-SDE 5" choice)."""
    return value * ((value**0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    noise_scaler: Callable[[Tensor], Tensor] | None = None,
    max_stage: int = 3,
) -> Tensor:
    """ER-SDE-Solver-3 (Cui et al. 2023, "Elucidating the Solution Space of Extended Reverse-Time SDE for
    Diffusion Models", arXiv 2309.06169, VP form), up to `max_stage` Taylor stages; its integrals of the noise
    scale are computed once per step on the host with the 200-point Riemann sum ComfyUI uses."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    scale = noise_scaler or er_sde_noise_scaler
    points = torch.arange(200, dtype=torch.float64)

    def ns(value: float) -> float:
        return float(scale(torch.tensor(value, dtype=torch.float64)))

    old_denoised: Tensor | None = None
    old_denoised_d: Tensor | None = None
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        stage = min(max_stage, i + 1)
        if sig[i + 1] == 0.0:
            x = denoised
        else:
            lam_s, lam_t = sig[i], sig[i + 1]  # ER-SDE's lambda = sigma / alpha = sigma here
            r = ns(lam_t) / ns(lam_s)
            x = r * x + (1 - r) * denoised
            if stage >= 2 and old_denoised is not None:
                dt = lam_t - lam_s
                step = -dt / 200
                positions = lam_t + points * step
                scaled = scale(positions)
                s_1 = float((1 / scaled).sum()) * step
                denoised_d = (denoised - old_denoised) / (lam_s - sig[i - 1])
                x = x + (dt + s_1 * ns(lam_t)) * denoised_d
                if stage >= 3 and old_denoised_d is not None:
                    s_u = float(((positions - lam_s) / scaled).sum()) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - sig[i - 2]) / 2)
                    x = x + (dt**2 / 2 + s_u * ns(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                amount = lam_t**2 - lam_s**2 * r**2
                amount = math.sqrt(amount) if amount > 0 else 0.0
                x = x + noise(sigmas[i], sigmas[i + 1]) * (s_noise * amount)
        old_denoised = denoised
    return x


def _phi_1(h: float) -> float:
    """h * phi_1(h) = e^h - 1, the exponential integrator's first weight."""
    return math.expm1(h)


def _phi_2(h: float) -> float:
    """h * phi_2(h) = (e^h - 1 - h) / h."""
    return (math.expm1(h) - h) / h


@torch.no_grad()
def sample_seeds_2(
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
    r: float = 0.5,
    solver_type: str = "phi_1",
) -> Tensor:
    """SEEDS-2 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from
    Diffusion Models", NeurIPS), data prediction: two stages per step, the second at fraction r of the step,
    with the noise of both sub-intervals correlated as one Brownian path."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    inject = eta > 0 and s_noise > 0
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sig[i]), half_log_snr(sig[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        sigma_1 = math.exp(-(lam_s + r * h))
        x_2 = (sigma_1 / sig[i]) * math.exp(-r * h * eta) * x - _phi_1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-math.expm1(-2 * r * h * eta)) ** 0.5 * noise(sigmas[i], sigmas.new_tensor(sigma_1))
            x_2 = x_2 + sde_noise * (sigma_1 * s_noise)
        denoised_2 = denoiser(x_2, sigma_1 * s_in, **extra_args)
        decay = (sig[i + 1] / sig[i]) * math.exp(-h * eta)
        if solver_type == "phi_1":
            x = decay * x - _phi_1(-h_eta) * torch.lerp(denoised, denoised_2, 1 / (2 * r))
        else:
            b2 = _phi_2(-h_eta) / r
            x = decay * x - ((_phi_1(-h_eta) - b2) * denoised + b2 * denoised_2)
        if inject:
            segment = (r - 1) * h * eta
            sde_noise = sde_noise * math.exp(segment) + (-math.expm1(2 * segment)) ** 0.5 * noise(
                sigmas.new_tensor(sigma_1), sigmas[i + 1]
            )
            x = x + sde_noise * (sig[i + 1] * s_noise)
    return x


@torch.no_grad()
def sample_seeds_3(
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
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
) -> Tensor:
    """SEEDS-3 (Gonzalez et al. 2023), data prediction: three stages per step at fractions r_1 and r_2."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    inject = eta > 0 and s_noise > 0
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sig[i]), half_log_snr(sig[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        sigma_1, sigma_2 = math.exp(-(lam_s + r_1 * h)), math.exp(-(lam_s + r_2 * h))
        x_2 = (sigma_1 / sig[i]) * math.exp(-r_1 * h * eta) * x - _phi_1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-math.expm1(-2 * r_1 * h * eta)) ** 0.5 * noise(sigmas[i], sigmas.new_tensor(sigma_1))
            x_2 = x_2 + sde_noise * (sigma_1 * s_noise)
        denoised_2 = denoiser(x_2, sigma_1 * s_in, **extra_args)
        a3_2 = r_2 / r_1 * _phi_2(-r_2 * h_eta)
        a3_1 = _phi_1(-r_2 * h_eta) - a3_2
        x_3 = (sigma_2 / sig[i]) * math.exp(-r_2 * h * eta) * x - (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            segment = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * math.exp(segment) + (-math.expm1(2 * segment)) ** 0.5 * noise(
                sigmas.new_tensor(sigma_1), sigmas.new_tensor(sigma_2)
            )
            x_3 = x_3 + sde_noise * (sigma_2 * s_noise)
        denoised_3 = denoiser(x_3, sigma_2 * s_in, **extra_args)
        b3 = _phi_2(-h_eta) / r_2
        b1 = _phi_1(-h_eta) - b3
        x = (sig[i + 1] / sig[i]) * math.exp(-h * eta) * x - (b1 * denoised + b3 * denoised_3)
        if inject:
            segment = (r_2 - 1) * h * eta
            sde_noise = sde_noise * math.exp(segment) + (-math.expm1(2 * segment)) ** 0.5 * noise(
                sigmas.new_tensor(sigma_2), sigmas[i + 1]
            )
            x = x + sde_noise * (sig[i + 1] * s_noise)
    return x
