"""Differential Diffusion (Levin & Fried 2024, "Differential Diffusion: Giving Each Pixel Its Strength", arXiv
2306.00950), as ComfyUI's DifferentialDiffusion node computes it.

A soft inpainting mask becomes a per-step binary one: at each model call the region whose mask value reaches the
schedule's progress threshold is denoised, the rest is reset to the (noised) original. The threshold runs from 1
at the first step's timestep to 0 at the last (or the model's smallest sigma), linear in timestep:
threshold = (t(sigma) - t_end) / (t_start - t_end). A mask value m is thus edited from the step where the
threshold falls to m on: strong edits (m near 1) start early, weak ones late. `strength` < 1 blends the binary
mask with the soft one. The patch itself only marks the MODEL; the sampler's inpainting denoiser asks
`denoise_mask_function` for the mask at each call (ComfyUI's model_options["denoise_mask_function"]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from nodes.sd.schedules import model_sigmas, sigma_to_timestep
from nodes.sd.types import ModelHandle, ModelPatch

MaskFunction = Callable[[Tensor, Tensor], Tensor]
"""(sigma of the call, the soft denoise mask) -> the mask to use for this call."""


def differential_mask(mask: Tensor, current: Tensor, start: Tensor, end: Tensor, strength: float) -> Tensor:
    """The binary mask (mask >= threshold) for timestep `current` on a run from timestep `start` to `end`,
    blended with the soft mask by `strength` when below 1."""
    threshold = (current - end) / (start - end)
    binary = (mask >= threshold.to(mask)).to(mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * mask
    return binary


def differential_diffusion_patch(strength: float) -> ModelPatch:
    """A "denoise_mask" patch: it installs nothing in the denoisers; `denoise_mask_function` reads it."""
    return ModelPatch(kind="denoise_mask", name="differential_diffusion", apply=lambda _unet: None,
                      options={"strength": strength})


def _timestep_function(model: ModelHandle) -> Callable[[Tensor], Tensor]:
    sampling = next((p.options.get("sampling") for p in reversed(model.patches) if p.kind == "model_sampling"), None)
    if sampling is not None:
        return lambda sigma: sampling.timestep(sigma.to(torch.float64)).to(torch.float64)
    table = model_sigmas(model.alphas_cumprod)
    return lambda sigma: sigma_to_timestep(sigma.to(torch.float64).cpu(), table)


def denoise_mask_function(model: ModelHandle, sigmas: Sequence[float] | Tensor) -> MaskFunction | None:
    """The mask function of the MODEL's last DifferentialDiffusion patch for a run over `sigmas`, or None."""
    patch = next((p for p in reversed(model.patches) if p.kind == "denoise_mask"), None)
    if patch is None:
        return None
    strength = float(patch.options["strength"])
    timestep = _timestep_function(model)
    steps = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    sigma_to = max(float(model_sigmas(model.alphas_cumprod)[0]), float(steps[-1]))
    start, end = timestep(steps[:1]), timestep(torch.tensor([sigma_to], dtype=torch.float64))

    def function(sigma: Tensor, mask: Tensor) -> Tensor:
        current = timestep(sigma.reshape(-1)[:1].detach())
        return differential_mask(mask, current.to(mask.device), start.to(mask.device), end.to(mask.device), strength)

    return function
