"""Karras-ODE samplers (Euler, Heun, DPM2, LMS, DDIM, LCM): one function per algorithm, k-diffusion's convention.

Every sampler is `sample_x(denoiser, x, sigmas, *, extra_args=None, callback=None, ...) -> x`: it integrates
from x at sigmas[0] down the given sigmas (usually ending at 0) calling only the denoiser D(x, sigma) -> x0.
Samplers know nothing about CFG, conditioning or model types; those wrap the denoiser (denoisers.py).
Stochastic samplers draw noise from a CPU `generator` (or an explicit `noise_sampler`), so a seed gives the
same image on any device. Every sampler accepts both, so callers never branch on the name; deterministic
ones ignore them. The callback gets {"i", "x", "sigma", "denoised"} once per step.

No step reads a device tensor on the host: each sampler takes a host copy of `sigmas` before its loop
(`host_schedule`) and decides and computes coefficients from that, so on a GPU the loop only queues kernels
and never waits for them (tests/test_no_sync.py runs every sampler on the meta device to hold this).

The ODE view follows Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative
Models"): dx/dsigma = (x - D(x, sigma)) / sigma.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nodes.sd.samplers_multistep import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    get_ancestral_step,
    host_schedule,
    report,
    resolve_noise,
)


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's derivative dx/dsigma (Karras et al. 2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al. 2022, Algorithm 2 line 4: how far to raise sigma before a step (0: no churn)."""
    return min(s_churn / steps, 2**0.5 - 1) if s_churn > 0 and s_tmin <= sigma <= s_tmax else 0.0


def churned(
    x: Tensor, sigmas: Tensor, i: int, noise: NoiseSampler, s_churn: float, s_tmin: float, s_tmax: float,
    s_noise: float,
) -> tuple[Tensor, float]:
    """Algorithm 2 lines 4-6: raise step i's sigma to sigma_hat and add the noise that lifts x there.

    Returns x at sigma_hat and sigma_hat (x and sigma unchanged without churn)."""
    sigma = float(sigmas[i])
    sigma_hat = sigma * (churn_gamma(sigma, len(sigmas) - 1, s_churn, s_tmin, s_tmax) + 1)
    if sigma_hat > sigma:
        x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without the Heun step)."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        x, sigma_hat = churned(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sig[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
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
    """Euler steps to sigma_down plus fresh noise up to the next sigma (ancestral sampling; Karras et al. 2022
    Euler with Song et al. 2020's eta split)."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        if sig[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); the step to sigma 0 is plain Euler."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        x, sigma_hat = churned(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        d = to_d(x, sigma_hat, denoised)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == 0.0:
            x = x + d * dt
        else:
            x_next = x + d * dt
            d_next = to_d(x_next, sig[i + 1], denoiser(x_next, sig[i + 1] * s_in, **extra_args))
            x = x + (d + d_next) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-2 as a midpoint method at the geometric-mean sigma (Karras et al. 2022's "DPM2", after
    Lu et al. 2022); the step to sigma 0 is plain Euler."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        x, sigma_hat = churned(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        d = to_d(x, sigma_hat, denoised)
        if sig[i + 1] == 0.0:
            x = x + d * (sig[i + 1] - sigma_hat)
        else:
            sigma_mid = math.sqrt(sigma_hat * sig[i + 1])
            x_mid = x + d * (sigma_mid - sigma_hat)
            d_mid = to_d(x_mid, sigma_mid, denoiser(x_mid, sigma_mid * s_in, **extra_args))
            x = x + d_mid * (sig[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
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
    """Ancestral DPM2: the midpoint step to sigma_down, then fresh noise (Karras et al. 2022 / Lu et al. 2022)."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        d = to_d(x, sig[i], denoised)
        if sigma_down == 0.0:
            x = x + d * (sigma_down - sig[i])
        else:
            sigma_mid = math.sqrt(sig[i] * sigma_down)
            x_mid = x + d * (sigma_mid - sig[i])
            d_mid = to_d(x_mid, sigma_mid, denoiser(x_mid, sigma_mid * s_in, **extra_args))
            x = x + d_mid * (sigma_down - sig[i])
        if sig[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def lms_coefficient(sig: list[float], order: int, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial of node sigma_(i-j) among the
    nodes sigma_i .. sigma_(i-order+1). The polynomial has degree < order, so numpy integrates it exactly."""
    basis = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            basis *= np.polynomial.Polynomial([-sig[i - k], 1.0]) / (sig[i - j] - sig[i - k])
    antiderivative = basis.integ()
    return float(antiderivative(sig[i + 1]) - antiderivative(sig[i]))


@torch.no_grad()
def sample_lms(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE (Karras et al. 2022's LMS
    baseline; k-diffusion's sample_lms), order rising from 1 as history accumulates. As in ComfyUI the step to
    sigma 0 lands on the prediction (extrapolating the derivatives there would add error, not accuracy)."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    derivatives: list[Tensor] = []
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        derivatives = [*derivatives, to_d(x, sig[i], denoised)][-order:]
        if sig[i + 1] == 0.0:
            x = denoised
            continue
        cur_order = min(i + 1, order)
        for j in range(cur_order):
            x = x + lms_coefficient(sig, cur_order, i, j) * derivatives[-1 - j]
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2020, eq. 12) in sigma form: x_next = x0 + sigma_down * eps + sigma_up * noise.

    With eta = 0 (the default, as in ComfyUI) this is exactly Euler on the probability-flow ODE.
    """
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        x = denoised + (x - denoised) * (sigma_down / sig[i])
        if sigma_up > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_lcm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1): jump to the prediction,
    then re-noise to the next sigma. The consistency boundary condition belongs to the model, not here."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        x = denoised
        if sig[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sig[i + 1]
    return x


@torch.no_grad()
def sample_heunpp2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Heun++ (sd-webui-samplers-scheduler's "Heun++2", ComfyUI's heunpp2): a Heun step whose slope averages
    the derivatives at this sigma and the next one or two, weighted by sigma / (k * sigma_max); the final step
    is Euler and the one before it uses two points."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    s_end = sig[-1]
    for i in range(len(sig) - 1):
        x, sigma_hat = churned(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        d = to_d(x, sigma_hat, denoised)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sig[i + 1], denoiser(x_2, sig[i + 1] * s_in, **extra_args))
        if sig[i + 2] == s_end:
            w2 = sig[i + 1] / (2 * sig[0])
            slope = d * (1 - w2) + d_2 * w2
        else:
            x_3 = x_2 + d_2 * (sig[i + 2] - sig[i + 1])
            d_3 = to_d(x_3, sig[i + 2], denoiser(x_3, sig[i + 2] * s_in, **extra_args))
            w2, w3 = sig[i + 1] / (3 * sig[0]), sig[i + 2] / (3 * sig[0])
            slope = d * (1 - w2 - w3) + d_2 * w2 + d_3 * w3
        x = x + slope * dt
    return x
