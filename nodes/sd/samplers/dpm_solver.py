"""DPM-Solver with its own step placement: DPM-Solver-fast and DPM-Solver-12/23 adaptive (Lu et al. 2022,
"DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps", Algorithms 1-5).

Both work in the noise (epsilon) parametrisation and in time t = -log(sigma). They ignore where the given
schedule puts its sigmas: like ComfyUI they take only its range, from sigmas[0] to the smallest non-zero
sigma, and stop there (the result keeps that last sigma's noise, as in k-diffusion). dpm_fast spends
`len(sigmas) - 1` model evaluations; dpm_adaptive picks steps with a PID controller on the difference of an
embedded lower-order solution, so it reads one error value per step on the host (the only sampler that must).
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
    host_schedule,
    report,
    resolve_noise,
)


def _sigma(t: float) -> float:
    return math.exp(-t)


def _host(value: float) -> Tensor:
    """A sigma as the CPU tensor noise samplers take."""
    return torch.tensor(value, dtype=torch.float32)


class _DPMSolver:
    """Single-step DPM-Solver-1/2/3 updates from t to t_next, sharing each step's first model evaluation."""

    def __init__(self, denoiser: Denoiser, x: Tensor, extra_args: dict[str, Any]) -> None:
        self.denoiser, self.extra_args, self.s_in = denoiser, extra_args, x.new_ones([x.shape[0]])

    def eps(self, x: Tensor, t: float) -> Tensor:
        sigma = _sigma(t)
        return (x - self.denoiser(x, sigma * self.s_in, **self.extra_args)) / sigma

    def eps_at_fraction(
        self, x: Tensor, eps: Tensor, t: float, h: float, r1: float, cache: dict[float, Tensor]
    ) -> Tensor:
        """eps at t + r1 h after a first-order step there; `cache` shares it between one step's two solutions."""
        if r1 not in cache:
            s1 = t + r1 * h
            cache[r1] = self.eps(x - _sigma(s1) * math.expm1(r1 * h) * eps, s1)
        return cache[r1]

    def step(
        self, x: Tensor, eps: Tensor, t: float, t_next: float, order: int, r1: float = 0.5,
        cache: dict[float, Tensor] | None = None,
    ) -> Tensor:
        """DPM-Solver-`order` (Lu et al. 2022, Algorithms 4 and 5; r1 is DPM-Solver-2's intermediate fraction)."""
        cache = {} if cache is None else cache
        h = t_next - t
        first = x - _sigma(t_next) * math.expm1(h) * eps
        if order == 1:
            return first
        if order == 2:
            eps_r1 = self.eps_at_fraction(x, eps, t, h, r1, cache)
            return first - _sigma(t_next) / (2 * r1) * math.expm1(h) * (eps_r1 - eps)
        r1, r2 = 1 / 3, 2 / 3
        s2 = t + r2 * h
        eps_r1 = self.eps_at_fraction(x, eps, t, h, r1, cache)
        u2 = x - _sigma(s2) * math.expm1(r2 * h) * eps
        u2 = u2 - _sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps(u2, s2)
        return first - _sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)


def sigma_range(sig: list[float]) -> tuple[float, float]:
    """(smallest non-zero sigma, first sigma) of a schedule: where ComfyUI runs the DPM-Solver samplers."""
    sigma_min = sig[-2] if sig[-1] == 0.0 and len(sig) > 1 else sig[-1]
    if sigma_min <= 0 or sig[0] <= 0:
        raise ValueError(f"dpm_fast/dpm_adaptive need sigmas above 0, got range {sigma_min}..{sig[0]}")
    return sigma_min, sig[0]


def _noisy_target(s: float, t: float, t_end: float, eta: float) -> tuple[float, float]:
    """With eta > 0, where the deterministic update stops (t_) and the noise that lifts it back to t (su)."""
    if not eta:
        return t, 0.0
    sigma_down, _ = get_ancestral_step(_sigma(s), _sigma(t), eta)
    t_ = min(t_end, -math.log(sigma_down))
    return t_, max(_sigma(t) ** 2 - _sigma(t_) ** 2, 0.0) ** 0.5


@torch.no_grad()
def sample_dpm_fast(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-fast (Lu et al. 2022, section 3.4): steps uniform in t, third order with a final 2/1 tail,
    exactly `len(sigmas) - 1` model evaluations."""
    _, sig = host_schedule(sigmas)
    if len(sig) < 2:
        return x
    sigma_min, sigma_max = sigma_range(sig)
    t_start, t_end, nfe = -math.log(sigma_max), -math.log(sigma_min), len(sig) - 1
    steps = nfe // 3 + 1
    ts = [t_start + (t_end - t_start) * k / steps for k in range(steps + 1)]
    orders = [3] * (steps - 2) + [2, 1] if nfe % 3 == 0 else [3] * (steps - 1) + [nfe % 3]
    solver = _DPMSolver(denoiser, x, extra_args or {})
    noise = resolve_noise(x, generator, noise_sampler)
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = _noisy_target(t, t_next, t_end, eta)
        eps = solver.eps(x, t)
        report(callback, i, x, _sigma(t), x - _sigma(t) * eps)
        x = solver.step(x, eps, t, t_next_, order)
        if su > 0:
            x = x + su * s_noise * noise(_host(_sigma(t)), _host(_sigma(t_next)))
    return x


class PIDStepSizeController:
    """A PID controller on the log of the inverse error, proposing the next step size (Söderlind 2003,
    "Digital Filters in Adaptive Time-Stepping"; the controller k-diffusion's dpm_adaptive uses)."""

    def __init__(
        self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float = 1, accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        """Scale h by the controller's (atan-limited) factor; True when the step that gave `error` is accepted."""
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-12 or -23 with adaptive steps (Lu et al. 2022, Algorithm 5 with a PID step controller): each
    step's lower-order solution estimates the error; rtol/atol bound it relative to the latent's magnitude."""
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive order must be 2 or 3, got {order}")
    _, sig = host_schedule(sigmas)
    if len(sig) < 2:
        return x
    sigma_min, sigma_max = sigma_range(sig)
    s, t_end = -math.log(sigma_max), -math.log(sigma_min)
    solver = _DPMSolver(denoiser, x, extra_args or {})
    noise = resolve_noise(x, generator, noise_sampler)
    pid = PIDStepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, steps = x, 0
    while s < t_end - 1e-5:
        t = min(t_end, s + pid.h)
        t_, su = _noisy_target(s, t, t_end, eta)
        eps = solver.eps(x, s)
        report(callback, steps, x, _sigma(s), x - _sigma(s) * eps)
        cache: dict[float, Tensor] = {}
        if order == 2:
            x_low, x_high = solver.step(x, eps, s, t_, 1), solver.step(x, eps, s, t_, 2)
        else:
            x_low = solver.step(x, eps, s, t_, 2, r1=1 / 3, cache=cache)
            x_high = solver.step(x, eps, s, t_, 3, cache=cache)
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(float(error)):  # the step size decision needs the error on the host
            x_prev = x_low
            x = x_high
            if su > 0:
                x = x + su * s_noise * noise(_host(_sigma(s)), _host(_sigma(t)))
            s = t
        steps += 1
    return x
