"""Latent arithmetic behind the latent nodes: compositing, blending, batch handling, and the LATENT_OPERATION
payloads (Reinhard tone mapping and sharpening of latent "colour" vectors) with their CFG patch.

Shapes are [B, C, H, W]; positions and sizes given in image pixels are divided by 8 (one latent pixel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.imageops import resize
from nodes.sd.types import ModelPatch

LATENT_SCALE = 8


def repeat_to_batch(tensor: Tensor, batch: int) -> Tensor:
    """The first `batch` items, or the items repeated in order until there are `batch` (ComfyUI's rule)."""
    if tensor.shape[0] >= batch:
        return tensor[:batch]
    return tensor.repeat(math.ceil(batch / tensor.shape[0]), *([1] * (tensor.dim() - 1)))[:batch]


def reshape_like(target: Tensor, latent: Tensor, *, repeat_batch: bool = True) -> Tensor:
    """`latent` resized (bilinear, centre crop) to target's channels-and-size when they differ, and (by default)
    repeated or cut to target's batch: how the two-input latent maths lines its inputs up."""
    if latent.shape[1:] != target.shape[1:]:
        latent = resize(latent, target.shape[-1], target.shape[-2], "bilinear", "center")
    return repeat_to_batch(latent, target.shape[0]) if repeat_batch else latent


def feather_mask(shape: torch.Size, feather: int, *, top: bool, bottom: bool, left: bool, right: bool) -> Tensor:
    """Ones of `shape` ramping linearly to 1/feather over `feather` pixels along the named edges."""
    mask = torch.ones(shape)
    for t in range(feather):
        ramp = (t + 1) / feather
        if top:
            mask[..., t, :] *= ramp
        if bottom:
            mask[..., shape[-2] - 1 - t, :] *= ramp
        if left:
            mask[..., :, t] *= ramp
        if right:
            mask[..., :, shape[-1] - 1 - t] *= ramp
    return mask


def composite_feathered(destination: Tensor, source: Tensor, x: int, y: int, feather: int) -> Tensor:
    """LatentComposite: paste `source` at pixel (x, y), its inner edges faded over `feather` pixels.

    Args:
        destination: the latent pasted into (not modified).
        source: the latent pasted; cut where it would leave the destination.
        x, y, feather: in image pixels (floored to latent pixels).
    """
    left, top, fade = x // LATENT_SCALE, y // LATENT_SCALE, feather // LATENT_SCALE
    out = destination.clone()
    height, width = destination.shape[-2:]
    piece = source[..., : max(0, height - top), : max(0, width - left)]
    h, w = piece.shape[-2:]
    region = out[..., top : top + h, left : left + w]
    if fade == 0:
        out[..., top : top + h, left : left + w] = piece
        return out
    mask = feather_mask(piece.shape, fade, top=top != 0, bottom=top + h < height, left=left != 0,
                        right=left + w < width).to(piece)
    out[..., top : top + h, left : left + w] = piece * mask + region * (1 - mask)
    return out


def composite_masked(destination: Tensor, source: Tensor, x: int, y: int, mask: Tensor | None = None, *,
                     multiplier: int = LATENT_SCALE, resize_source: bool = False) -> Tensor:
    """LatentCompositeMasked: destination with source pasted at (x, y) pixels, blended by `mask` (1 = source).

    Args:
        destination: [B, C, H, W] (not modified).
        source: [b, C, h, w]; repeated to B; resized to H x W first when `resize_source`.
        x, y: offset in image pixels (`multiplier` pixels per latent pixel).
        mask: MASK, resized (bilinear) to the source; None pastes the source as is.
        resize_source: stretch the source to the destination's size.
    """
    out = destination.clone()
    source = source.to(out)
    if resize_source:
        source = F.interpolate(source, size=tuple(out.shape[-2:]), mode="bilinear", align_corners=False)
    source = repeat_to_batch(source, out.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, out.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, out.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    visible_w, visible_h = out.shape[-1] - left + min(0, x), out.shape[-2] - top + min(0, y)
    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = mask.to(out).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        weight = F.interpolate(weight, size=tuple(source.shape[-2:]), mode="bilinear", align_corners=False)
        weight = repeat_to_batch(weight, source.shape[0])
    weight = weight[..., :visible_h, :visible_w]
    piece = source[..., :visible_h, :visible_w]
    region = out[..., top : top + piece.shape[-2], left : left + piece.shape[-1]]
    out[..., top : top + piece.shape[-2], left : left + piece.shape[-1]] = weight * piece + (1 - weight) * region
    return out


def crop(samples: Tensor, width: int, height: int, x: int, y: int) -> Tensor:
    """LatentCrop: a width x height pixel window at (x, y), its corner kept at least 8 latent pixels from the far
    edges (ComfyUI's minimum of 64 image pixels)."""
    left, top = x // LATENT_SCALE, y // LATENT_SCALE
    left = min(left, samples.shape[-1] - 8)
    top = min(top, samples.shape[-2] - 8)
    return samples[..., top : top + height // LATENT_SCALE, left : left + width // LATENT_SCALE]


def interpolate(samples1: Tensor, samples2: Tensor, ratio: float) -> Tensor:
    """LatentInterpolate: per pixel, interpolate the direction (unit channel vector) and the length separately.

    ratio 1 gives samples1 and 0 gives samples2 (lengths are the vector norms over channels).
    """
    samples2 = reshape_like(samples1, samples2)
    norm1 = torch.linalg.vector_norm(samples1, dim=1, keepdim=True)
    norm2 = torch.linalg.vector_norm(samples2, dim=1, keepdim=True)
    mixed = torch.nan_to_num(samples1 / norm1) * ratio + torch.nan_to_num(samples2 / norm2) * (1.0 - ratio)
    direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1, keepdim=True))
    return direction * (norm1 * ratio + norm2 * (1.0 - ratio))


def cut(samples: Tensor, dim: str, index: int, amount: int) -> Tensor:
    """LatentCut: `amount` slices from `index` (negative counts from the end) along x (width), y (height) or t
    (the axis before height: channels for an image latent), clamped to what exists."""
    axis = samples.dim() - {"x": 1, "y": 2, "t": 3}[dim]
    size = samples.shape[axis]
    if index >= 0:
        index = min(index, size - 1)
        amount = min(size - index, amount)
    else:
        index = max(index, -size)
        amount = min(-index, amount)
    return torch.narrow(samples, axis, index, amount)


def concat(samples1: Tensor, samples2: Tensor, dim: str) -> Tensor:
    """LatentConcat: join along x, y or t ("-x" etc. put samples2 first); samples2 is repeated to the batch."""
    samples2 = repeat_to_batch(samples2, samples1.shape[0])
    pair = (samples2, samples1) if dim.startswith("-") else (samples1, samples2)
    return torch.cat(pair, dim={"x": -1, "y": -2, "t": -3}[dim.lstrip("-")])


@dataclass(frozen=True)
class TonemapReinhard:
    """LATENT_OPERATION: Reinhard's tone curve L / (1 + L) (Reinhard et al. 2002, "Photographic Tone
    Reproduction for Digital Images") on the per-pixel length of the latent vector, with the white point at
    (mean + 5 std) of the lengths times `multiplier`; directions are kept."""

    multiplier: float

    def __call__(self, latent: Tensor) -> Tensor:
        length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + 1e-10
        direction = latent / length
        mean = length.mean(dim=(1, 2, 3), keepdim=True)
        std = length.std(dim=(1, 2, 3), keepdim=True)
        top = (std * 5 + mean) * self.multiplier
        scaled = length / top
        return direction * (scaled / (scaled + 1.0) * top)


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """A normalised size x size Gaussian over [-1, 1]^2 (the sampling ComfyUI's image sharpen uses)."""
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    kernel = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


@dataclass(frozen=True)
class Sharpen:
    """LATENT_OPERATION: unsharp masking of the unit latent directions (lengths kept): the kernel is a
    Gaussian scaled by -10 * alpha with its centre raised so it sums to 1; edges are reflected."""

    radius: int
    sigma: float
    alpha: float

    def __call__(self, latent: Tensor) -> Tensor:
        length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + 1e-6
        direction = latent / length
        size = 2 * self.radius + 1
        kernel = gaussian_kernel(size, self.sigma).to(latent) * (self.alpha * -10)
        kernel[self.radius, self.radius] += 1.0 - kernel.sum()
        channels = latent.shape[1]
        padded = F.pad(direction, (self.radius,) * 4, mode="reflect")
        weights = kernel.expand(channels, 1, size, size)
        return length * F.conv2d(padded, weights, groups=channels)


LatentOperation = TonemapReinhard | Sharpen
"""What a LATENT_OPERATION socket carries: a frozen, hashable callable latent -> latent."""


def operation_cfg_patch(operation: Callable[[Tensor], Tensor]) -> ModelPatch:
    """A "guidance" ModelPatch applying `operation` to the guidance direction before CFG (LatentApplyOperationCFG).

    The conditional prediction becomes uncond + op(cond - uncond) (op(cond) when CFG skipped the negative); the
    guided x0 moves by cfg times the change of cond, which for plain CFG is exactly
    uncond + cfg * (op(cond - uncond)), and keeps what earlier guidance terms added.
    """
    from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs

    def term(inputs: GuidanceInputs) -> Tensor:
        cond, uncond = inputs.cond_denoised, inputs.uncond_denoised
        new_cond = operation(cond) if uncond is None else operation(cond - uncond) + uncond
        return inputs.denoised + (new_cond - cond) * (1.0 if uncond is None else inputs.cfg)

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None]:
        cfg_denoiser.guidance_terms.append(term)
        return lambda: cfg_denoiser.guidance_terms.remove(term)

    return ModelPatch(kind="guidance", name=f"latent operation {type(operation).__name__}", apply=apply,
                      options={"operation": operation})
