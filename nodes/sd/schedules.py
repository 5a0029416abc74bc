"""Noise schedules as pure functions returning sigma tensors (k-diffusion's `get_sigmas_*` style).

Every sampler works in the variance-exploding parametrisation of Karras et al. 2022 ("Elucidating the
Design Space of Diffusion-Based Generative Models"): x = x0 + sigma * noise. A discrete-time (DDPM)
model is described by its training sigmas, sigma_t = sqrt((1 - abar_t) / abar_t), indexed by timestep.

The schedulers below keep ComfyUI's names and semantics, so a workflow gets the same sigmas it would get
there. Each returns a float32 tensor that descends and ends with 0. Two of ComfyUI's schedulers do not
always give `steps + 1` values, and we keep that: `ddim_uniform` takes every `1000 // steps`-th training
sigma (so it can give more), and `beta` drops repeated timesteps (so past about 100 steps it gives fewer).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Scheduler = Callable[[Tensor, int], Tensor]
"""fn(model_sigmas, steps) -> descending sigmas ending in 0 (usually steps + 1 of them)."""


# -- the model's discrete schedule ------------------------------------------------------------------


def scaled_linear_alphas_cumprod(
    num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's training schedule ("scaled_linear": betas linear in sqrt), in float64.

    Args:
        num_timesteps: training timesteps (SD: 1000).
        beta_start: first beta (SD: 0.00085).
        beta_end: last beta (SD: 0.012).
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def model_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """The training sigmas, ascending with timestep: sigma_t = sqrt((1 - abar_t) / abar_t) (float64)."""
    abar = alphas_cumprod.to(torch.float64)
    return ((1.0 - abar) / abar) ** 0.5


def precise_dtype(device: torch.device) -> torch.dtype:
    """float64 for schedule maths, or float32 on a device without float64 (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sigma_to_timestep(sigma: Tensor, sigmas: Tensor) -> Tensor:
    """The continuous timestep of `sigma`, interpolating linearly in log-sigma (k-diffusion's DiscreteSchedule).

    Pure tensor maths on `sigmas`' device (no value is read on the host), so a sampler can call it every step
    on a GPU without a sync.

    Args:
        sigma: any shape, on `sigmas`' device; values are clamped into the model's [sigma_min, sigma_max].
        sigmas: the model's ascending training sigmas (`model_sigmas`).
    """
    dtype = precise_dtype(sigmas.device)
    log_sigmas = sigmas.to(dtype).log()
    log_sigma = sigma.to(dtype).clamp(min=1e-10).log().reshape(-1)
    # index of the last training sigma at or below sigma, kept one short of the end so high = low + 1 exists
    low = (log_sigma[None, :] >= log_sigmas[:, None]).sum(dim=0).sub(1).clamp(0, len(sigmas) - 2)
    low_value, high_value = log_sigmas[low], log_sigmas[low + 1]
    weight = ((low_value - log_sigma) / (low_value - high_value)).clamp(0.0, 1.0)
    return (low + weight).reshape(sigma.shape).to(sigma.dtype if sigma.is_floating_point() else dtype)


def timestep_to_sigma(timestep: Tensor, sigmas: Tensor) -> Tensor:
    """The sigma at a (possibly fractional) timestep, interpolating linearly in log-sigma (float64)."""
    t = timestep.to(torch.float64).clamp(0, len(sigmas) - 1)
    low = t.floor().long().clamp(max=len(sigmas) - 2)
    frac = t - low
    log_sigmas = sigmas.to(torch.float64).log()
    return ((1 - frac) * log_sigmas[low] + frac * log_sigmas[low + 1]).exp()


def _finish(values: list[float] | Tensor, append_zero: bool = True) -> Tensor:
    out = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if append_zero:
        out = torch.cat([out, out.new_zeros(1)])
    return out.to(torch.float32)


# -- sigma spacings that need only sigma_min and sigma_max -------------------------------------------


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: n sigmas evenly spaced in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((max_inv + ramp * (min_inv - max_inv)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n sigmas evenly spaced in log-sigma, then 0."""
    return _finish(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


# -- ComfyUI's schedulers ----------------------------------------------------------------------------


def _uniform_in_timestep(sigmas: Tensor, steps: int, sgm: bool) -> Tensor:
    start = float(sigma_to_timestep(sigmas[-1:], sigmas))
    end = float(sigma_to_timestep(sigmas[:1], sigmas))
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1, dtype=torch.float64)[:-1]
    else:
        # a schedule whose last training sigma is ~0 already ends at zero: spend the extra step there
        if math.isclose(float(timestep_to_sigma(torch.tensor(end), sigmas)), 0.0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps, dtype=torch.float64)
    return _finish(timestep_to_sigma(timesteps, sigmas), append_zero)


def normal(sigmas: Tensor, steps: int) -> Tensor:
    """Timesteps evenly spaced from the last training timestep to the first, both included (ComfyUI "normal")."""
    return _uniform_in_timestep(sigmas, steps, sgm=False)


def sgm_uniform(sigmas: Tensor, steps: int) -> Tensor:
    """steps + 1 evenly spaced timesteps from the last, dropping the final one (SGM/SDXL-Turbo "trailing")."""
    return _uniform_in_timestep(sigmas, steps, sgm=True)


def karras(sigmas: Tensor, steps: int) -> Tensor:
    """Karras et al. 2022 spacing (rho = 7) between the model's sigma_min and sigma_max."""
    return get_sigmas_karras(steps, float(sigmas[0]), float(sigmas[-1]))


def exponential(sigmas: Tensor, steps: int) -> Tensor:
    """Log-uniform spacing between the model's sigma_min and sigma_max."""
    return get_sigmas_exponential(steps, float(sigmas[0]), float(sigmas[-1]))


def simple(sigmas: Tensor, steps: int) -> Tensor:
    """Every (len / steps)-th training sigma counted down from the top, floored (ComfyUI "simple")."""
    stride = len(sigmas) / steps
    return _finish([float(sigmas[-(1 + int(i * stride))]) for i in range(steps)])


def ddim_uniform(sigmas: Tensor, steps: int) -> Tensor:
    """Training sigmas 1, 1 + k, 1 + 2k, ... with k = len // steps, reversed: DDIM's "leading" spacing
    with steps_offset 1 (Song et al. 2020). May give more than steps + 1 values when k does not divide."""
    values: list[float] = []
    if math.isclose(float(sigmas[1]), 0.0, abs_tol=1e-5):
        steps += 1
    else:
        values = [0.0]
    stride = max(len(sigmas) // steps, 1)
    values += [float(s) for s in sigmas[1::stride]]
    return _finish(values[::-1], append_zero=False)


def beta(sigmas: Tensor, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> Tensor:
    """Timesteps at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024, "Beta Sampling is
    All You Need"), which crowds steps at both ends; repeated timesteps are dropped as ComfyUI does."""
    total = len(sigmas) - 1
    values: list[float] = []
    last = -1
    for i in range(steps):
        t = round(beta_ppf(1.0 - i / steps, alpha, beta_) * total)
        if t != last:
            values.append(float(sigmas[t]))
        last = t
    return _finish(values)


def linear_quadratic(
    sigmas: Tensor, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Noise fractions rising linearly to `threshold_noise` over the first half of the steps, then quadratically
    to 1, times sigma_max (Mochi's schedule, Genmo 2024; ComfyUI "linear_quadratic"). One step is [sigma_max, 0].

    Args:
        sigmas: the model's training sigmas (only the largest is used).
        steps: sampling steps.
        threshold_noise: the noise fraction where the linear part ends.
        linear_steps: steps in the linear part (default steps // 2).
    """
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / quadratic_steps**2
        const = quadratic_coef * linear_steps**2
        quadratic = [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear_steps, steps)]
        fractions = [1.0 - value for value in [*linear, *quadratic, 1.0]]
    return _finish([value * float(sigmas[-1]) for value in fractions], append_zero=False)


def kl_optimal(sigmas: Tensor, steps: int) -> Tensor:
    """Sigmas evenly spaced in arctan(sigma) from sigma_max to sigma_min, then 0: the schedule that minimises
    the KL bound of the discretisation (Sabour et al. 2024, "Align Your Steps", Theorem 1)."""
    sigma_min, sigma_max = float(sigmas[0]), float(sigmas[-1])
    ramp = torch.arange(steps, dtype=torch.float64) / (steps - 1) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    return _finish((ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan())


SCHEDULERS: dict[str, Scheduler] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}
"""ComfyUI 0.3.64's scheduler names (KSampler.SCHEDULERS, in its order) -> functions."""


def calculate_sigmas(alphas_cumprod: Tensor, scheduler: str, steps: int) -> Tensor:
    """Sigmas for `steps` steps of the named scheduler on a model with this training schedule.

    Args:
        alphas_cumprod: the model's training cumulative alphas (ModelHandle.alphas_cumprod).
        scheduler: a key of SCHEDULERS.
        steps: number of sampling steps (>= 1).
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return SCHEDULERS[scheduler](model_sigmas(alphas_cumprod), steps)


# -- the Beta distribution's quantile, without scipy --------------------------------------------------


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function, evaluated by Lentz's method."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta function I_x(a, b): the CDF of Beta(a, b) at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the fraction converges fast on the side of the mode's mirror; use the symmetry I_x(a,b) = 1 - I_1-x(b,a)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of Beta(a, b) by bisection on the CDF (to ~1e-15; only a few dozen calls per schedule)."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        if beta_cdf(mid, a, b) < q:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)
