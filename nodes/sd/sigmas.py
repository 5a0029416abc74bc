"""SIGMAS maths for the custom-sampling nodes: schedules from parameters or published tables, and sigma tools.

A SIGMAS value is a 1-D float32 CPU tensor, descending, usually ending in 0 (k-diffusion's convention). The
schedules follow ComfyUI's nodes: k-diffusion's polyexponential, Laplace and VP schedules, SD-Turbo's fixed
timesteps, and three tables of searched schedules (Align Your Steps, GITS, Optimal Steps) stretched to other
step counts by interpolating log-sigma linearly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from nodes.sd.gits_table import gits_table
from nodes.sd.schedules import calculate_sigmas, model_sigmas, timestep_to_sigma

AYS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "SD1": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "SDXL": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "SVD": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}
"""Align Your Steps' 10-step schedules (Sabour et al. 2024, "Align Your Steps: Optimizing Sampling Schedules in
Diffusion Models", arXiv 2404.14507; NVIDIA's published values)."""

OPTIMAL_STEPS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "FLUX": (0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001),
    "Wan": (1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946, 0.927,
            0.902, 0.864, 0.776, 0.539, 0.208, 0.001),
    "Chroma": (0.992, 0.99, 0.988, 0.985, 0.982, 0.978, 0.973, 0.968, 0.961, 0.953, 0.943, 0.931, 0.917, 0.9,
               0.881, 0.858, 0.832, 0.802, 0.769, 0.731, 0.69, 0.646, 0.599, 0.55, 0.501, 0.451, 0.402, 0.355,
               0.311, 0.27, 0.232, 0.199, 0.169, 0.143, 0.12, 0.101, 0.084, 0.07, 0.058, 0.048, 0.001),
}
"""Optimal Steps' searched schedules (Pei et al. 2025, "Optimal Stepsize for Diffusion Sampling",
arXiv 2503.21774), for flow models: sigmas in [0, 1]."""

PERCENT_ZERO_SIGMA = 999999999.9
"""What ComfyUI's percent_to_sigma gives at 0 %: above any sigma, so a range starting there covers every step."""


def _finish(values: Tensor, append_zero: bool = True) -> Tensor:
    """Float64 schedule maths as a float32 SIGMAS, with the final 0 appended unless told otherwise."""
    out = values.to(torch.float64).reshape(-1)
    return torch.cat([out, out.new_zeros(1)]).float() if append_zero else out.float()


def loglinear_interp(values: Sequence[float], num: int) -> np.ndarray:
    """`num` values spanning a descending list, interpolated linearly in log space at even positions."""
    ascending_logs = np.log(np.asarray(values, dtype=np.float64)[::-1])
    positions = np.linspace(0, 1, len(values))
    return np.exp(np.interp(np.linspace(0, 1, num), positions, ascending_logs))[::-1].copy()


def _tail(sigmas: Sequence[float] | np.ndarray, steps: int) -> Tensor:
    """The last steps + 1 values, ending in 0 (a table's smallest sigma becomes the final 0)."""
    tail = np.array(sigmas[-(steps + 1):], dtype=np.float64)
    tail[-1] = 0.0
    return torch.tensor(tail, dtype=torch.float32)


def _denoise_steps(steps: int, denoise: float) -> int | None:
    """Steps a table schedule keeps at this denoise (round(steps * denoise)); None when it runs nothing."""
    if denoise < 1.0:
        return None if denoise <= 0.0 else round(steps * denoise)
    return steps


def table_schedule(levels: Sequence[float], steps: int, denoise: float) -> Tensor:
    """A published schedule stretched to `steps` (log-linear) and cut to the last round(steps * denoise) steps.

    Args:
        levels: the table's descending sigmas.
        steps: steps of the full schedule.
        denoise: fraction of it to run; <= 0 gives an empty tensor.
    """
    kept = _denoise_steps(steps, denoise)
    if kept is None:
        return torch.zeros(0)
    sigmas = list(levels) if steps + 1 == len(levels) else loglinear_interp(levels, steps + 1)
    return _tail(sigmas, kept)


def align_your_steps(model_type: str, steps: int, denoise: float) -> Tensor:
    """Align Your Steps' schedule for "SD1", "SDXL" or "SVD" (see AYS_NOISE_LEVELS)."""
    if model_type not in AYS_NOISE_LEVELS:
        raise ValueError(f"unknown AlignYourSteps model_type {model_type!r}; expected one of {list(AYS_NOISE_LEVELS)}")
    return table_schedule(AYS_NOISE_LEVELS[model_type], steps, denoise)


def optimal_steps(model_type: str, steps: int, denoise: float) -> Tensor:
    """Optimal Steps' schedule for "FLUX", "Wan" or "Chroma" (see OPTIMAL_STEPS_NOISE_LEVELS)."""
    if model_type not in OPTIMAL_STEPS_NOISE_LEVELS:
        raise ValueError(f"unknown OptimalSteps model_type {model_type!r}; "
                         f"expected one of {list(OPTIMAL_STEPS_NOISE_LEVELS)}")
    return table_schedule(OPTIMAL_STEPS_NOISE_LEVELS[model_type], steps, denoise)


def gits(coeff: float, steps: int, denoise: float) -> Tensor:
    """GITS' schedule (see gits_table): the searched one up to 20 steps, beyond that the 20-step one stretched."""
    table = gits_table()
    key = round(coeff, 2)
    if key not in table:
        raise ValueError(f"GITS has no schedule for coeff {coeff}; expected one of {sorted(table)}")
    if steps < 2:
        raise ValueError(f"GITS needs at least 2 steps, got {steps}")
    kept = _denoise_steps(steps, denoise)
    if kept is None:
        return torch.zeros(0)
    sigmas = table[key][steps - 2] if steps <= 20 else loglinear_interp(table[key][-1], steps + 1)
    return _tail(sigmas, kept)


# -- k-diffusion's parametric schedules ---------------------------------------------------------------------


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """n sigmas whose log falls from log sigma_max to log sigma_min along ramp^rho (rho 1: exponential), then 0."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return _finish((ramp * (log_max - log_min) + log_min).exp())


def get_sigmas_laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> Tensor:
    """n sigmas at the quantiles of a Laplace(mu, beta) distribution of log-sigma, clamped to
    [sigma_min, sigma_max] (Tiankai et al. 2024, "Improved Noise Schedule for Diffusion Training",
    arXiv 2407.03297). As in k-diffusion's ComfyUI copy, no final 0 is appended."""
    x = torch.linspace(0, 1, n, dtype=torch.float64)
    centred = 0.5 - x
    log_sigma = mu - beta * torch.sign(centred) * torch.log(1 - 2 * centred.abs() + 1e-5)
    return _finish(log_sigma.exp().clamp(min=sigma_min, max=sigma_max), append_zero=False)


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """The continuous VP SDE's sigmas at n times from 1 down to eps_s (Song et al. 2021, "Score-Based
    Generative Modeling through SDEs"): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), then 0."""
    t = torch.linspace(1, eps_s, n, dtype=torch.float64)
    return _finish(torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1))


# -- schedules of a model --------------------------------------------------------------------------------


def basic_scheduler(alphas_cumprod: Tensor, scheduler: str, steps: int, denoise: float) -> Tensor:
    """BasicScheduler: the last steps + 1 sigmas of an int(steps / denoise)-step schedule (empty at denoise <= 0)."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0)
        total = int(steps / denoise)
    return calculate_sigmas(alphas_cumprod, scheduler, total)[-(steps + 1):]


def sd_turbo(alphas_cumprod: Tensor, steps: int, denoise: float) -> Tensor:
    """SD-Turbo's schedule (Sauer et al. 2023, "Adversarial Diffusion Distillation"): the training sigmas at
    timesteps 999, 899, ..., 99, starting 10 - int(10 * denoise) entries in and taking `steps` of them, then 0."""
    start = 10 - int(10 * denoise)
    timesteps = torch.arange(10, 0, -1) * 100 - 1
    chosen = timesteps[start : start + steps]
    return _finish(timestep_to_sigma(chosen, model_sigmas(alphas_cumprod)))


def percent_to_sigma(alphas_cumprod: Tensor, percent: float) -> float:
    """ComfyUI's sampling percent -> sigma: 0 % is above every sigma, 100 % is 0, else the sigma at training
    timestep (1 - percent) * 999 (log-sigma interpolation)."""
    if percent <= 0.0:
        return PERCENT_ZERO_SIGMA
    if percent >= 1.0:
        return 0.0
    sigmas = model_sigmas(alphas_cumprod)
    return float(timestep_to_sigma(torch.tensor((1.0 - percent) * (len(sigmas) - 1)), sigmas))


def sampling_percent_to_sigma(alphas_cumprod: Tensor, percent: float, return_actual_sigma: bool) -> float:
    """SamplingPercentToSigma: percent_to_sigma, or with return_actual_sigma the model's sigma_max at 0 % and
    sigma_min at 100 % instead of the interval-check values."""
    if return_actual_sigma and percent == 0.0:
        return float(model_sigmas(alphas_cumprod)[-1])
    if return_actual_sigma and percent == 1.0:
        return float(model_sigmas(alphas_cumprod)[0])
    return percent_to_sigma(alphas_cumprod, percent)


# -- sigma tools -----------------------------------------------------------------------------------------


def split_sigmas(sigmas: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """(sigmas[:step + 1], sigmas[step:]): the two share sigma `step`, so one run continues the other."""
    return sigmas[: step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: Tensor, denoise: float) -> tuple[Tensor, Tensor]:
    """Split off the last round(steps * denoise) steps as low_sigmas; high_sigmas is the rest, ending where low
    starts. As in ComfyUI, a split of 0 steps gives an empty high_sigmas."""
    steps = max(sigmas.shape[-1] - 1, 0)
    low_steps = round(steps * denoise)
    return sigmas[:-low_steps], sigmas[-(low_steps + 1):]


def flip_sigmas(sigmas: Tensor) -> Tensor:
    """The schedule reversed (ascending, for inversion); a leading 0 becomes 0.0001 so the first step has a sigma."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


def set_first_sigma(sigmas: Tensor, sigma: float) -> Tensor:
    """A copy with the first sigma replaced."""
    out = sigmas.clone()
    out[0] = sigma
    return out


EXTEND_SPACINGS = ("linear", "cosine", "sine")


def extend_intermediate_sigmas(sigmas: Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                               spacing: str) -> Tensor:
    """Split every step that starts at a sigma in [end_at_sigma, start_at_sigma] (start < 0: no upper bound) into
    `steps` sub-steps, spaced linearly, or by sin / 1 - cos of the quarter turn ("cosine" front-loads the
    sub-steps' progress, "sine" back-loads it)."""
    if spacing not in EXTEND_SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {EXTEND_SPACINGS}")
    upper = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = torch.linspace(0, 1, steps + 1)[1:-1]
    if spacing == "cosine":
        fractions = torch.sin(fractions * math.pi / 2)
    elif spacing == "sine":
        fractions = 1 - torch.cos(fractions * math.pi / 2)
    values = [float(s) for s in sigmas]
    out: list[float] = []
    for current, following in zip(values, values[1:]):
        out.append(current)
        if end_at_sigma <= current <= upper:
            out.extend((fractions * (following - current) + current).tolist())
    if values:
        out.append(values[-1])
    return torch.tensor(out, dtype=torch.float32)
