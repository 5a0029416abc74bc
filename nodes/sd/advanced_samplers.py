"""Sampler functions of ComfyUI's "advanced samplers" nodes that are not KSampler samplers themselves.

Both follow the sampler calling convention (samplers.py) and are carried by a SamplerSpec's `function`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs
from nodes.sd.imageops import resize
from nodes.sd.samplers_multistep import Denoiser, NoiseSampler, StepCallback, host_schedule, report, to_device_async

LCM_UPSCALE_METHODS: tuple[str, ...] = ("bislerp", "nearest-exact", "bilinear", "area", "bicubic")


def upscale_factors(sigma_count: int, total_upscale: float, upscale_steps: int | None) -> list[float]:
    """The size factor after each of the first steps: evenly from 1 to total_upscale over `upscale_steps` steps
    (default: half the schedule), so the last ones run at full size."""
    if upscale_steps is None:
        count = max(sigma_count // 2 + 1, 2)
    else:
        count = min(upscale_steps + 1, sigma_count + 1)
    return [float(f) for f in np.linspace(1.0, total_upscale, count)[1:]]


@torch.no_grad()
def sample_lcm_upscale(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
    seed: int = 0,
    total_upscale: float = 2.0,
    upscale_method: str = "bislerp",
    upscale_steps: int | None = None,
) -> Tensor:
    """LCM sampling (Luo et al. 2023, "Latent Consistency Models") that enlarges the x0 prediction a little after
    each early step before re-noising it, ending `total_upscale` times larger. The re-noising draws from a CPU
    generator seeded with `seed` (the run's step noise has the starting size, so it cannot serve)."""
    extra_args = extra_args or {}
    sigmas, sig = host_schedule(sigmas)
    factors = upscale_factors(len(sig), total_upscale, upscale_steps)
    height, width = x.shape[-2:]
    generator = torch.Generator().manual_seed(seed)
    for i in range(len(sig) - 1):
        denoised = denoiser(x, sig[i] * x.new_ones([x.shape[0]]), **extra_args)
        report(callback, i, x, sig[i], denoised)
        x = denoised
        if i < len(factors):
            x = resize(x, round(width * factors[i]), round(height * factors[i]), upscale_method)
        if sig[i + 1] > 0:
            fresh = torch.randn(x.shape, generator=generator, dtype=torch.float32)
            x = x + to_device_async(fresh, x.device, x.dtype) * sig[i + 1]
    return x


class _UncondRecorder:
    """A guidance term that changes nothing and keeps the latest unconditional prediction."""

    def __init__(self) -> None:
        self.uncond: Tensor | None = None

    def __call__(self, inputs: GuidanceInputs) -> Tensor:
        self.uncond = inputs.uncond_denoised
        return inputs.denoised


@torch.no_grad()
def sample_euler_cfg_pp_alternative(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cfg_denoiser: CFGDenoiser,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Euler with CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion
    Models", arXiv 2406.08070), SamplerEulerCFGpp's "alternative" form: the step re-noises along the
    unconditional prediction, x' = x + ((x - 2 D + D_uncond) / sigma) (sigma' - sigma), with D the guided x0."""
    extra_args = extra_args or {}
    sigmas, sig = host_schedule(sigmas)
    recorder = _UncondRecorder()
    cfg_denoiser.guidance_terms.append(recorder)  # also makes CFG evaluate the negative at cfg 1
    undo: Callable[[], None] = lambda: cfg_denoiser.guidance_terms.remove(recorder)
    try:
        for i in range(len(sig) - 1):
            denoised = denoiser(x, sig[i] * x.new_ones([x.shape[0]]), **extra_args)
            if recorder.uncond is None:
                raise ValueError("SamplerEulerCFGpp needs the negative prediction, but this guider has none")
            report(callback, i, x, sig[i], denoised)
            d = (x - denoised + recorder.uncond - denoised) / sig[i]
            x = x + d * (sig[i + 1] - sig[i])
    finally:
        undo()
    return x
