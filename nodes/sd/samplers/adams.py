"""Adams-type multistep samplers: iPNDM, iPNDM-v, DEIS and the stochastic Adams SA-Solver.

iPNDM/iPNDM-v/DEIS reuse past derivatives d = (x - x0) / sigma in sigma time (Zhang & Chen 2023, "Fast
Sampling of Diffusion Models with Exponential Integrator" for DEIS and iPNDM; Zhou et al. 2024, "Fast ODE-based
Sampling for Diffusion Models in Around 5 Steps", for the variable-step iPNDM-v); SA-Solver predicts and
corrects in log-sigma time with stochastic Adams coefficients. Every coefficient is computed on the host
from the schedule before or between model calls, never from device values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from nodes.sd.samplers.karras import lms_coefficient
from nodes.sd.samplers_multistep import Denoiser, NoiseSampler, StepCallback, host_schedule, report, resolve_noise
from nodes.sd.schedules import model_sigmas, scaled_linear_alphas_cumprod, timestep_to_sigma

IPNDM_WEIGHTS: dict[int, tuple[float, ...]] = {
    1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
"""Adams-Bashforth weights for equal steps, newest derivative first."""


def _ipndm_v_weights(sig: list[float], i: int, order: int) -> tuple[float, ...]:
    """Variable-step Adams-Bashforth weights of orders 1-4 in sigma (Zhou et al. 2024, iPNDM-v), newest first."""
    if order == 1:
        return (1.0,)
    h = sig[i + 1] - sig[i]
    h1 = sig[i] - sig[i - 1]
    if order == 2:
        return ((2 + h / h1) / 2, -(h / h1) / 2)
    h2 = sig[i - 1] - sig[i - 2]
    t1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return ((2 + h / h1) / 2 + t1, -(h / h1) / 2 - (1 + h1 / h2) * t1, t1 * h1 / h2)
    h3 = sig[i - 2] - sig[i - 3]
    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
    t2 = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) * (
        h * (h + h1) * (h + h1 + h2)
    ) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    return (
        (2 + h / h1) / 2 + t1 + t2,
        -(h / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + ratio) * t2,
        t1 * h1 / h2 + (h1 / h2 + ratio * (1 + h2 / h3)) * t2,
        -t2 * ratio * h1 / h2,
    )


def _adams(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None, callback: StepCallback | None,
    max_order: int, weights: Callable[[list[float], int, int], tuple[float, ...]],
) -> Tensor:
    """x_next = x + sum_j w_j * (weight of derivative j steps back), order rising from 1; Euler to sigma 0.

    `weights(sig, i, order)` gives the increments' coefficients (already multiplied by the step)."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    _, sig = host_schedule(sigmas)
    history: list[Tensor] = []
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * s_in, **extra_args)
        report(callback, i, x, sig[i], denoised)
        history = [(x - denoised) / sig[i], *history][:max_order]
        order = min(max_order, i + 1)
        if sig[i + 1] <= 0.0:
            x = denoised
        else:
            x = x + sum((w * d for w, d in zip(weights(sig, i, order), history)), torch.zeros_like(x))
    return x


@torch.no_grad()
def sample_ipndm(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None, generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None, max_order: int = 4,
) -> Tensor:
    """Improved PNDM (Zhang & Chen 2023, section 4.2): fixed-step Adams-Bashforth weights on Euler's
    derivative, up to fourth order, starting with lower orders (no Runge-Kutta warm-up)."""
    def weights(sig: list[float], i: int, order: int) -> tuple[float, ...]:
        return tuple(w * (sig[i + 1] - sig[i]) for w in IPNDM_WEIGHTS[order])

    return _adams(denoiser, x, sigmas, extra_args, callback, max_order, weights)


@torch.no_grad()
def sample_ipndm_v(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None, generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None, max_order: int = 4,
) -> Tensor:
    """iPNDM with variable-step Adams-Bashforth weights (Zhou et al. 2024, "iPNDM-v")."""
    def weights(sig: list[float], i: int, order: int) -> tuple[float, ...]:
        return tuple(w * (sig[i + 1] - sig[i]) for w in _ipndm_v_weights(sig, i, order))

    return _adams(denoiser, x, sigmas, extra_args, callback, max_order, weights)


def deis_tab_coefficients(sig: list[float], max_order: int, points: int = 10000) -> list[tuple[float, ...]]:
    """DEIS's time-quadratic Adams coefficients ("tAB", Zhang & Chen 2023, eq. 14): the Lagrange basis of past
    VP times integrated against dsigma/dt over each step, by a `points`-point Riemann sum in float64.

    Times come from mapping sigma onto the VP-SDE (beta linear in t) that takes EDM's range 0.002..80 to t in
    1e-3..1, as the reference implementation ComfyUI uses does.
    """
    eps_s, sigma_min, sigma_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(sigma_min**2 + 1) / eps_s - math.log(sigma_max**2 + 1)) / (eps_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    sig_t = torch.tensor(sig, dtype=torch.float64)
    t = ((beta_min**2 + 2 * beta_d * torch.log(sig_t**2 + 1)).sqrt() - beta_min) / beta_d
    out: list[tuple[float, ...]] = []
    for i in range(len(sig) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sig[i + 1] <= 0.0:  # the step to sigma 0 is Euler (and dsigma/dt is infinite at t = 0)
            out.append(())
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), points, dtype=torch.float64)
        alpha = torch.exp(-0.5 * taus**2 * beta_d - taus * beta_min)
        dsigma_dt = 0.5 * (taus * beta_d + beta_min) / torch.sqrt(alpha * (1 - alpha))
        dtau = (float(t[i + 1]) - float(t[i])) / points
        nodes = [float(t[i - k]) for k in range(order)]
        coefficients = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            coefficients.append(float((dsigma_dt * basis).sum()) * dtau)
        out.append(tuple(coefficients))
    return out


@torch.no_grad()
def sample_deis(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None, generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None, max_order: int = 3, deis_mode: str = "tab",
) -> Tensor:
    """DEIS (Zhang & Chen 2023): Adams coefficients from the exponential integrator, "tab" (polynomial in VP
    time) or "rhoab" (polynomial in sigma, i.e. linear multistep in sigma like LMS)."""
    if deis_mode not in ("tab", "rhoab"):
        raise ValueError(f"deis_mode must be 'tab' or 'rhoab', got {deis_mode!r}")
    _, sig = host_schedule(sigmas)
    table = deis_tab_coefficients(sig, max_order) if deis_mode == "tab" else None

    def weights(sig: list[float], i: int, order: int) -> tuple[float, ...]:
        if order == 1:
            return (sig[i + 1] - sig[i],)
        if table is not None:
            return table[i]
        return tuple(lms_coefficient(sig, order, i, j) for j in range(order))

    return _adams(denoiser, x, sigmas, extra_args, callback, max_order, weights)


def sa_solver_default_tau(sigma_max_percent: float = 0.2, sigma_min_percent: float = 0.8) -> Callable[[float], float]:
    """SA-Solver's default stochasticity: tau = 1 while sigma lies between the sigmas at 20 % and 80 % of the
    SD training schedule (ComfyUI's percent_to_sigma), else 0 (an ODE step)."""
    training = model_sigmas(scaled_linear_alphas_cumprod())
    last = len(training) - 1
    start = float(timestep_to_sigma(torch.tensor((1 - sigma_max_percent) * last), training))
    end = float(timestep_to_sigma(torch.tensor((1 - sigma_min_percent) * last), training))
    return lambda sigma: 1.0 if start >= float(sigma) >= end else 0.0


def _exponential_coefficients(s: float, t: float, order: int, tau: float) -> Tensor:
    """(1 + tau^2) * int_s^t exp((1 + tau^2)(u - t)) u^p du for p < order, by repeated integration by parts."""
    tau_mul = 1 + tau**2
    p = torch.arange(order, dtype=torch.float64)
    ends = t**p - s**p * math.exp(-tau_mul * (t - s))
    depth = p[:, None] - p[None, :]
    log_fact = torch.lgamma(p + 1)
    log_coeff = log_fact[:, None] - log_fact[None, :] - depth * math.log(tau_mul)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0).to(torch.float64)
    return (log_coeff.exp() * signs).tril() @ ends


def sa_coefficients(
    lambdas: list[float], lam_s: float, lam_t: float, tau: float, simple_order_2: bool, corrector: bool
) -> list[float]:
    """Stochastic Adams b coefficients (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling
    of Diffusion Models", eqs. 15 and 18) for predictions at `lambdas`, stepping lam_s -> lam_t (alpha = 1)."""
    n = len(lambdas)
    h = lam_t - lam_s
    tau_mul = 1 + tau**2
    if simple_order_2 and n == 2:
        if corrector:
            b_1 = 0.5 * tau_mul * h
            return [-math.expm1(-h * tau_mul) - b_1, b_1]
        b_2 = 0.5 * tau_mul * h**2 / (lambdas[-2] - lam_s)
        return [b_2, -math.expm1(-h * tau_mul) - b_2]
    vandermonde = torch.tensor([[lam**k for lam in lambdas] for k in range(n)], dtype=torch.float64)
    return torch.linalg.solve(vandermonde, _exponential_coefficients(lam_s, lam_t, n, tau)).tolist()


@torch.no_grad()
def sample_sa_solver(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None, generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None, tau_func: Callable[[float], float] | None = None,
    s_noise: float = 1.0, predictor_order: int = 3, corrector_order: int = 4, use_pece: bool = False,
    simple_order_2: bool = False,
) -> Tensor:
    """SA-Solver (Xue et al. 2023): a stochastic Adams predictor and corrector in log-sigma time; tau_func(sigma)
    (a host float) sets the SDE's stochasticity per step, 0 giving an ODE step. With use_pece the corrected
    state is evaluated again (PECE); otherwise the next step's evaluation serves the corrector (PEC)."""
    extra_args, s_in = extra_args or {}, x.new_ones([x.shape[0]])
    sigmas, sig = host_schedule(sigmas)
    if len(sig) < 2:
        return x
    noise_of = resolve_noise(x, generator, noise_sampler)
    tau_func = tau_func or sa_solver_default_tau()
    lambdas = [-math.log(s) if s > 0 else math.inf for s in sig]
    history: list[Tensor] = []
    x_pred, h, tau, noise = x, 0.0, 0.0, None
    lower_to_end = sig[-1] == 0.0
    for i in range(len(sig) - 1):
        denoised = denoiser(x_pred, sig[i] * s_in, **extra_args)
        report(callback, i, x_pred, sig[i], denoised)
        history = [*history, denoised][-max(predictor_order, corrector_order):]
        p_order = min(predictor_order, len(history))
        c_order = 0 if i == 0 or (sig[i + 1] == 0.0 and not use_pece) else min(corrector_order, len(history))
        if lower_to_end:
            p_order, c_order = min(p_order, len(sig) - 2 - i), min(c_order, len(sig) - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            b = sa_coefficients(lambdas[i - c_order + 1 : i + 1], lambdas[i - 1], lambdas[i], tau, simple_order_2, True)
            x = (sig[i] / sig[i - 1]) * math.exp(-(tau**2) * h) * x
            x = x + sum((c * d for c, d in zip(b, history[-c_order:])), torch.zeros_like(x))
            if noise is not None and tau > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = denoiser(x, sig[i] * s_in, **extra_args)
                history[-1] = denoised
        if sig[i + 1] == 0.0:
            x_pred = denoised
            continue
        tau = float(tau_func(sig[i + 1]))
        b = sa_coefficients(lambdas[i - p_order + 1 : i + 1], lambdas[i], lambdas[i + 1], tau, simple_order_2, False)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = (sig[i + 1] / sig[i]) * math.exp(-(tau**2) * h) * x
        x_pred = x_pred + sum((c * d for c, d in zip(b, history[-p_order:])), torch.zeros_like(x))
        noise = None
        if tau > 0 and s_noise > 0:
            scale = sig[i + 1] * (-math.expm1(-2 * tau**2 * h)) ** 0.5 * s_noise
            noise = noise_of(sigmas[i], sigmas[i + 1]) * scale
            x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(denoiser: Denoiser, x: Tensor, sigmas: Tensor, **kw: Any) -> Tensor:
    """SA-Solver in PECE mode (Xue et al. 2023): the corrected state is evaluated again before predicting."""
    return sample_sa_solver(denoiser, x, sigmas, use_pece=True, **kw)
