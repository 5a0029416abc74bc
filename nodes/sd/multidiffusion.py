"""MultiDiffusion (Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image Generation",
arXiv 2302.08113) as a "windows" model patch: images larger than the model's training size, seam-free.

Each model evaluation denoises overlapping windows of the latent and averages the predictions where windows
overlap (paper eq. 5: the least-squares fusion of the per-window steps, with uniform weights). It is done at
the UNet call: each window of the (scaled) input runs through the rest of the UNet call chain with the same
timestep and conditioning, and the outputs are averaged per pixel. Every sampler's step is affine in the model
output, so averaging the outputs equals averaging the per-window steps, which is what diffusers'
StableDiffusionPanoramaPipeline does with DDIM.

Region prompts (the paper's region-based generation) come from ComfyUI's area and mask conditioning
(ConditioningSetArea / ConditioningSetMask): each entry's prediction is weighted by its mask and averaged with
the others (nodes/sd/cond_batch.py), which is the paper's fusion with per-region weights; a region larger than
the window is itself split into windows here.

With uniform weights (the paper's panorama setting and diffusers') the set of views covering a pixel changes
abruptly at every window border, and where neighbouring windows still disagree late in sampling that leaves a
step at the border (measured on the embedded model: docs/controlled_generation_guidance.md). "gaussian" weights
each view's pixels by exp(-d^2 / (2 (0.1 window)^2)) from its centre (Mixture of Diffusers, Jimenez 2023, arXiv
2302.02412; the paper's eq. 5 allows any per-pixel weights W_i), so a view fades out before its border.

Views are diffusers' (window `window`, step `stride`, from the top left), plus, where the stride does not land
on the far edge, one more row or column of views ending at it (diffusers leaves those pixels uncovered). A side
no longer than the window is one view of the whole side. Spatial UNet keyword arguments (ControlNet residuals)
are cropped to each view at their own resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from nodes.sd.denoisers import UNetCall, UNetDenoiser
from nodes.sd.types import ModelPatch

PATCH_NAME = "multidiffusion"

View = tuple[int, int, int, int]
"""(top, bottom, left, right) in latent pixels."""


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one side: 0, stride, ... while the window fits, then one ending at the edge."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def views(height: int, width: int, window: int, stride: int) -> list[View]:
    """The windows covering a height x width latent, row by row (diffusers' get_views order)."""
    if window < 1 or stride < 1:
        raise ValueError(f"MultiDiffusion needs window >= 1 and stride >= 1, got {window} and {stride}")
    return [(top, min(top + window, height), left, min(left + window, width))
            for top in window_starts(height, window, stride) for left in window_starts(width, window, stride)]


def _crop(value: Any, view: View, size: tuple[int, int], name: str) -> Any:
    """`value` cropped to `view` when it is a spatial map of the latent (at the latent's size divided by an
    integer factor), recursively through lists and tuples; anything else is returned as it is."""
    if isinstance(value, (list, tuple)):
        return type(value)(_crop(item, view, size, name) for item in value)
    if not isinstance(value, Tensor) or value.ndim != 4:
        return value
    height, width = size
    h, w = value.shape[-2:]
    if height % h or width % w or height // h != width // w:
        return value
    factor = height // h
    if any(edge % factor for edge in view):
        raise ValueError(f"MultiDiffusion: UNet input {name!r} is at 1/{factor} of the latent's size, but the "
                         f"window {view} does not fall on its grid; use a window and stride divisible by {factor}")
    top, bottom, left, right = (edge // factor for edge in view)
    return value[..., top:bottom, left:right]


WEIGHTINGS = ("uniform", "gaussian")
GAUSSIAN_SPREAD = 0.1
"""Standard deviation of the "gaussian" weights as a fraction of the window (Mixture of Diffusers' variance 0.01)."""


def view_weights(height: int, width: int, weighting: str) -> Tensor:
    """Per-pixel weights [1, 1, height, width] of one view: ones, or a Gaussian bump centred on the view."""
    if weighting == "uniform":
        return torch.ones(1, 1, height, width)
    if weighting != "gaussian":
        raise ValueError(f"unknown MultiDiffusion weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")

    def profile(size: int) -> Tensor:
        positions = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        return torch.exp(-0.5 * (positions / (GAUSSIAN_SPREAD * size)) ** 2)

    return (profile(height)[:, None] * profile(width)[None, :]).float()[None, None]


def fused_call(call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any], window: int,
               stride: int, weighting: str = "uniform") -> Tensor:
    """The UNet output for `sample`, fused from overlapping windows: the weighted average where they overlap."""
    height, width = int(sample.shape[-2]), int(sample.shape[-1])
    if height <= window and width <= window:
        return call(sample, timestep, kwargs)
    total: Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=sample.device)
    weights: dict[tuple[int, int], Tensor] = {}
    for view in views(height, width, window, stride):
        top, bottom, left, right = view
        cropped = {key: _crop(value, view, (height, width), key) for key, value in kwargs.items()}
        out = call(sample[..., top:bottom, left:right], timestep, cropped)
        if total is None:
            total = torch.zeros(*out.shape[:-2], height, width, device=out.device, dtype=torch.float32)
        size = (bottom - top, right - left)
        if size not in weights:
            weights[size] = view_weights(*size, weighting).to(sample.device)
        weight = weights[size]
        total[..., top:bottom, left:right] += out.float() * weight.to(out.device)
        count[..., top:bottom, left:right] += weight
    assert total is not None
    return (total / count.to(total.device)).to(out.dtype)


def multidiffusion_patch(window: int, stride: int, weighting: str = "uniform") -> ModelPatch:
    """A "windows" ModelPatch: every UNet call of the run fuses `window`-sized views `stride` apart (latent px),
    weighted `weighting` ("uniform": the paper's and diffusers' average; "gaussian": centre-weighted)."""
    views(window + stride, window + stride, window, stride)  # validate early
    view_weights(1, 1, weighting)

    def apply(unet_denoiser: UNetDenoiser) -> Callable[[], None]:
        def wrapper(call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
            return fused_call(call, sample, timestep, kwargs, window, stride, weighting)

        unet_denoiser.wrappers.append(wrapper)
        return lambda: unet_denoiser.wrappers.remove(wrapper)

    return ModelPatch(kind="windows", name=PATCH_NAME, apply=apply, options={"window": window, "stride": stride, "weighting": weighting})
