"""Exponential-integrator samplers (DPM-Solver++, UniPC) and the noise helpers every sampler shares.

These solve the diffusion ODE/SDE in log-sigma time, lambda = -log(sigma), where its linear part integrates
exactly (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models").
Written in the variance-exploding form x = x0 + sigma * noise used by all our samplers, the data-prediction
updates lose the alpha_t factors that VP-form papers carry: x_next = (sigma_next / sigma) x - expm1(-h) x0.

The `samplers` package builds on this module (it holds the other samplers and the SAMPLERS table); keeping
the shared helpers here lets that import go one way only.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Denoiser = Callable[..., Tensor]
"""D(x, sigma, **extra_args) -> x0: the model contract (sigma has one value per batch item)."""
StepCallback = Callable[[dict[str, Any]], None]
"""Receives {"i", "x", "sigma", "denoised"} once per step."""
NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""(sigma, sigma_next) -> unit-variance noise shaped like x for the step between them."""


# -- noise -------------------------------------------------------------------------------------------


def to_device_async(host: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A CPU tensor on `device` in `dtype`, without making the host wait for the device.

    A plain CPU -> CUDA copy synchronises the stream (PyTorch waits for every queued kernel before it
    returns), which inside a step loop costs more than a UNet call at batch 1. From pinned memory with
    non_blocking the copy is queued behind the step's kernels instead. Elsewhere this is a plain `to`.
    """
    if device.type == "cuda":
        return host.to(dtype).pin_memory().to(device, non_blocking=True)
    return host.to(device, dtype, non_blocking=device.type != "cpu")


class GaussianNoise:
    """Independent N(0, I) draws from a CPU generator, moved to x's device afterwards.

    Drawing on the CPU makes a seed give the same image on any device (GPU RNG streams differ by vendor).
    """

    def __init__(self, x: Tensor, generator: torch.Generator | None) -> None:
        self.shape, self.device, self.dtype = tuple(x.shape), x.device, x.dtype
        self.generator = generator

    def draw(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """The step's noise on the CPU (float32)."""
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float32, device="cpu")

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return to_device_async(self.draw(sigma, sigma_next), self.device, self.dtype)


class BrownianNoise:
    """Normalised increments (W(b) - W(a)) / sqrt|b - a| of one Brownian path W indexed by sigma.

    SDE samplers that take sub-steps (dpmpp_sde) ask for noise over overlapping intervals, which must be
    correlated the way one Brownian path makes them. Points are drawn on demand: beyond the known ones as a
    free increment, between two known ones by the Brownian bridge, all from a CPU generator (the role
    torchsde's BrownianTree plays in k-diffusion, without the dependency).
    """

    def __init__(self, x: Tensor, generator: torch.Generator | None) -> None:
        self.shape, self.device, self.dtype = tuple(x.shape), x.device, x.dtype
        self.generator = generator
        self._times: list[float] = []
        self._values: list[Tensor] = []

    def _randn(self) -> Tensor:
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float64, device="cpu")

    def _at(self, t: float) -> Tensor:
        times, values = self._times, self._values
        i = bisect.bisect_left(times, t)
        if i < len(times) and times[i] == t:
            return values[i]
        if not times:
            value = torch.zeros(self.shape, dtype=torch.float64)
        elif i == 0:
            value = values[0] + math.sqrt(times[0] - t) * self._randn()
        elif i == len(times):
            value = values[-1] + math.sqrt(t - times[-1]) * self._randn()
        else:
            t0, t1 = times[i - 1], times[i]
            mean = values[i - 1] + (t - t0) / (t1 - t0) * (values[i] - values[i - 1])
            value = mean + math.sqrt((t - t0) * (t1 - t) / (t1 - t0)) * self._randn()
        times.insert(i, t)
        values.insert(i, value)
        return value

    def draw(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """The increment on the CPU (float64); sigma and sigma_next are host values (see host_schedule)."""
        a, b = float(sigma), float(sigma_next)
        if a == b:
            return torch.zeros(self.shape, dtype=torch.float64)
        return (self._at(b) - self._at(a)) / math.sqrt(abs(b - a))

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return to_device_async(self.draw(sigma, sigma_next), self.device, self.dtype)


def resolve_noise(
    x: Tensor, generator: torch.Generator | None, noise_sampler: NoiseSampler | None, brownian: bool = False
) -> NoiseSampler:
    """The noise sampler given, else one drawing from `generator` (torch's global CPU generator if None)."""
    if noise_sampler is not None:
        return noise_sampler
    return BrownianNoise(x, generator) if brownian else GaussianNoise(x, generator)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma_from -> sigma_to into a deterministic step to sigma_down plus fresh noise sigma_up,
    with sigma_down^2 + sigma_up^2 = sigma_to^2 (DDIM's eta, Song et al. 2020, eq. 16, in sigma form)."""
    if sigma_to == 0.0 or eta == 0.0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def report(callback: StepCallback | None, i: int, x: Tensor, sigma: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


def sigma_list(sigmas: Tensor) -> list[float]:
    """Sigmas as float64 Python numbers: step coefficients are computed in double precision."""
    return [float(s) for s in sigmas]


def host_schedule(sigmas: Tensor) -> tuple[Tensor, list[float]]:
    """The schedule on the host, read once before the loop: a CPU tensor (what noise samplers are given)
    and float64 Python numbers (step coefficients and control flow such as `sig[i + 1] == 0`).

    Reading a device tensor inside the loop (`float()`, `.item()`, `if t > 0`) makes the host wait for every
    queued kernel, a sync per step; with the schedule on the host the loop only queues work. KSampler passes
    CPU sigmas, so this copies nothing.
    """
    host = sigmas.detach().cpu()
    return host, sigma_list(host)


def half_log_snr(sigma: float) -> float:
    """lambda = -log(sigma): DPM-Solver's half log signal-to-noise ratio, the variable its steps integrate in."""
    return -math.log(sigma)


# -- DPM-Solver++ --------------------------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
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
    """Ancestral single-step DPM-Solver++(2S), midpoint r = 1/2 (Lu et al. 2022, Algorithm 1)."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta)
        if sigma_down == 0.0:
            x = denoised  # Euler to sigma 0 lands on the prediction
        else:
            h = half_log_snr(sigma_down) - half_log_snr(sig[i])
            sigma_mid = sig[i] * math.exp(-0.5 * h)
            x_mid = (sigma_mid / sig[i]) * x - math.expm1(-0.5 * h) * denoised
            denoised_mid = denoiser(x_mid, sigma_mid * s_in, **extra_args)
            x = (sigma_down / sig[i]) * x - math.expm1(-h) * denoised_mid
        if sig[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(
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
) -> Tensor:
    """DPM-Solver++ stochastic, two stages per step (Lu et al. 2022; the SDE variant of k-diffusion's
    dpmpp_sde). Its two noise draws per step overlap in time, so the default noise is a Brownian path."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler, brownian=True)
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        h = half_log_snr(sigma_next) - half_log_snr(sigma)
        sigma_mid = sigma * math.exp(-r * h)
        # stage 1: stochastic step to the intermediate sigma
        down, up = get_ancestral_step(sigma, sigma_mid, eta)
        x_mid = (down / sigma) * x - math.expm1(half_log_snr(sigma) - half_log_snr(down)) * denoised
        x_mid = x_mid + noise(sigmas.new_tensor(sigma), sigmas.new_tensor(sigma_mid)) * s_noise * up
        denoised_mid = denoiser(x_mid, sigma_mid * s_in, **extra_args)
        # stage 2: the full step with the two predictions blended to second order
        down, up = get_ancestral_step(sigma, sigma_next, eta)
        fac = 1.0 / (2.0 * r)
        denoised_d = (1.0 - fac) * denoised + fac * denoised_mid
        x = (down / sigma) * x - math.expm1(half_log_snr(sigma) - half_log_snr(down)) * denoised_d
        x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Multistep DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2); first order on the first and last step."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    old_denoised: Tensor | None = None
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised
        else:
            h = half_log_snr(sig[i + 1]) - half_log_snr(sig[i])
            blended = denoised
            if old_denoised is not None:
                r = (half_log_snr(sig[i]) - half_log_snr(sig[i - 1])) / h
                blended = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sig[i + 1] / sig[i]) * x - math.expm1(-h) * blended
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
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
    solver_type: str = "midpoint",
) -> Tensor:
    """Multistep DPM-Solver++(2M) SDE (Lu et al. 2022, SDE-DPM-Solver++ of section 5), midpoint or heun.

    Its noise intervals never overlap, so independent Gaussian draws have the Brownian path's law.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    noise = resolve_noise(x, generator, noise_sampler)
    old_denoised: Tensor | None = None
    h_last = 0.0
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised
        else:
            h = half_log_snr(sig[i + 1]) - half_log_snr(sig[i])
            eta_h = eta * h
            x = (sig[i + 1] / sig[i]) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
            if old_denoised is not None:
                r = h_last / h
                phi = -math.expm1(-h - eta_h)
                weight = 0.5 * phi if solver_type == "midpoint" else phi / (-h - eta_h) + 1
                x = x + weight * (1 / r) * (denoised - old_denoised)
            if eta:
                scale = sig[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
                x = x + noise(sigmas[i], sigmas[i + 1]) * scale
            h_last = h
        old_denoised = denoised
    return x


# -- UniPC ---------------------------------------------------------------------------------------------


def _unipc_system(rks: list[float], hh: float, b_h: float, order: int) -> tuple[Tensor, Tensor]:
    """The order conditions R rho = b of UniPC (Zhao et al. 2023, Algorithm 2), in float64."""
    h_phi_k = math.expm1(hh) / hh - 1.0
    factorial = 1
    rows, rhs = [], []
    for k in range(1, order + 1):
        rows.append([r ** (k - 1) for r in rks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)


def _unipc_update(
    x: Tensor,
    sig: list[float],
    s0: int,
    t: int,
    history: list[Tensor],
    order: int,
    variant: str,
    model_t: Tensor | None = None,
) -> Tensor:
    """UniP (model_t None) or UniC (model_t given) from sigma index s0 to t; history[-1] is x0 at s0,
    history[-1 - k] the prediction k steps before."""
    h = half_log_snr(sig[t]) - half_log_snr(sig[s0])
    hh = -h  # data prediction integrates in -lambda
    b_h = hh if variant == "bh1" else math.expm1(hh)
    m0 = history[-1]
    rks = [(half_log_snr(sig[s0 - k]) - half_log_snr(sig[s0])) / h for k in range(1, order)]
    d1s = [(history[-1 - k] - m0) / rk for k, rk in enumerate(rks, start=1)]
    R, b = _unipc_system([*rks, 1.0], hh, b_h, order)
    x_t = (sig[t] / sig[s0]) * x - math.expm1(hh) * m0
    if model_t is None:
        if order == 1:
            return x_t
        rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        return x_t - b_h * sum(rho * d for rho, d in zip(rhos, d1s))
    rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    correction = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), torch.zeros_like(x))
    return x_t - b_h * (correction + rhos[-1] * (model_t - m0))


@torch.no_grad()
def sample_uni_pc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
) -> Tensor:
    """UniPC multistep predictor-corrector, data prediction (Zhao et al. 2023, "UniPC: A Unified
    Predictor-Corrector Framework for Fast Sampling of Diffusion Models").

    The corrector reuses the next step's model evaluation, so it costs no extra call; it is skipped after
    the last one. ComfyUI's "uni_pc" is variant bh1 (B(h) = h), "uni_pc_bh2" is B(h) = e^h - 1.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    steps = len(sig) - 1
    history: list[Tensor] = []
    x_last, last_order = x, 1
    for i in range(steps):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        if i > 0:
            x = _unipc_update(x_last, sig, i - 1, i, history, last_order, variant, model_t=denoised)
        history = [*history, denoised][-order:]
        report(callback, i, x, sig[i], denoised)
        if sig[i + 1] == 0.0:
            x = denoised  # the first-order step to sigma 0 lands on the prediction
            continue
        this_order = min(order, steps - i) if lower_order_final else order
        last_order = min(this_order, i + 1)  # warm up: only i + 1 predictions exist yet
        x_last = x
        x = _unipc_update(x, sig, i, i + 1, history, last_order, variant)
    return x


@torch.no_grad()
def sample_uni_pc_bh2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
) -> Tensor:
    """UniPC with B(h) = e^h - 1 (Zhao et al. 2023, section 3.3), ComfyUI's "uni_pc_bh2"."""
    return sample_uni_pc(
        denoiser, x, sigmas, extra_args=extra_args, callback=callback, order=order, variant="bh2"
    )
