"""Mask and compositing maths behind the mask nodes, on ComfyUI's layouts: IMAGE [B,H,W,C], MASK [B,H,W].

Each function reproduces the arithmetic of ComfyUI's node of the same purpose (comfy_extras/nodes_mask.py),
so a saved workflow gives the same pixels; where that arithmetic has a quirk we keep, the docstring says so.
"""

from __future__ import annotations

import math

import kornia.morphology
import torch
import torch.nn.functional as F

MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """Any [..., H, W] mask as [B, H, W] (a single [H, W] mask becomes a batch of one)."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut or tile along dim 0 to `batch` items: [a, b] -> [a, b, a] for 3 (ComfyUI's repeat_to_batch_size)."""
    have = tensor.shape[0]
    if have > batch:
        return tensor[:batch]
    if have < batch:
        return tensor.repeat(math.ceil(batch / have), *([1] * (tensor.dim() - 1)))[:batch]
    return tensor


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None = None,
              multiplier: int = 1, resize_source: bool = False) -> torch.Tensor:
    """Paste `source` [B,C,h,w] onto a copy of `destination` [B,C,H,W] with its top-left corner at (x, y) //
    multiplier, blended by `mask` (out = mask * source + (1 - mask) * destination); what falls outside the
    destination is cut off.

    Args:
        destination, source: channels-first batches; the source is tiled to the destination's batch.
        x, y: the offset in pixels; `multiplier` is 8 for latents (pixel offsets, latent cells).
        mask: [..., H', W'], resized bilinearly to the (possibly resized) source and tiled to its batch;
            None pastes the source opaquely.
        resize_source: first stretch the source (bilinear) to the destination's size.
    """
    out = destination.clone()
    source = source.to(out.device, out.dtype)
    if resize_source:
        source = F.interpolate(source, size=out.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source, out.shape[0])
    height, width = source.shape[-2:]
    x = max(-width * multiplier, min(x, out.shape[-1] * multiplier))
    y = max(-height * multiplier, min(y, out.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(out.device, out.dtype).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        mask = repeat_to_batch(F.interpolate(mask, size=(height, width), mode="bilinear"), source.shape[0])
    visible_w = out.shape[-1] - left + min(0, x)
    visible_h = out.shape[-2] - top + min(0, y)
    mask = mask[..., :visible_h, :visible_w]
    region = out[..., top: top + height, left: left + width]
    out[..., top: top + height, left: left + width] = (mask * source[..., :visible_h, :visible_w]
                                                       + (1.0 - mask) * region)
    return out


def match_alpha(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give the source the destination's channel count: drop its alpha, or add an opaque one."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = F.pad(source, (0, 1), value=1.0)
    return destination, source


def color_mask(image: torch.Tensor, color: int) -> torch.Tensor:
    """1 where the pixel's 8-bit RGB (rounded from 0..1) packs to exactly `color` (0xRRGGBB), else 0."""
    rgb = (image[..., :3].clamp(0.0, 1.0) * 255.0).round().to(torch.int64)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return (packed == color).float()


def combine_masks(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> torch.Tensor:
    """Combine `source` into `destination` over the region starting at (x, y), clamped to 0..1.

    multiply/add/subtract act on values; and/or/xor on values rounded to 0 or 1. Batches broadcast.
    """
    out = as_mask_batch(destination).clone()
    source = as_mask_batch(source).to(out.device, out.dtype)
    right, bottom = min(x + source.shape[-1], out.shape[-1]), min(y + source.shape[-2], out.shape[-2])
    if right <= x or bottom <= y:  # the source lies wholly outside the destination
        return out.clamp(0.0, 1.0)
    part = source[:, : bottom - y, : right - x]
    region = out[:, y:bottom, x:right]
    if operation == "multiply":
        combined = region * part
    elif operation == "add":
        combined = region + part
    elif operation == "subtract":
        combined = region - part
    elif operation in ("and", "or", "xor"):
        logical = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[operation]
        combined = logical(region.round().bool(), part.round().bool()).to(out.dtype)
    else:
        raise ValueError(f"unknown mask operation {operation!r}; use one of {MASK_OPERATIONS}")
    if combined.shape[0] != out.shape[0]:
        raise ValueError(f"MaskComposite: a source batch of {source.shape[0]} does not fit a destination batch of "
                         f"{out.shape[0]}; give one mask or the same number")
    out[:, y:bottom, x:right] = combined
    return out.clamp(0.0, 1.0)


def _edge_ramp(length: int, first: int, last: int) -> torch.Tensor:
    """Per-row (or per-column) factors of ComfyUI's feather along one axis of `length` cells.

    The leading ramp multiplies cell i (i < first) by (i + 1) / first. The trailing ramp multiplies cell
    -i by (i + 1) / last for i < last, as ComfyUI indexes it: i = 0 is cell 0 (the *leading* edge, so it is
    scaled by 1 / last too), and the last cell gets 2 / last. We keep the quirk so masks match ComfyUI's.
    """
    factors = torch.ones(length, dtype=torch.float64)
    first, last = min(first, length), min(last, length)
    for i in range(first):
        factors[i] *= (i + 1.0) / first
    for i in range(last):
        factors[-i] *= (i + 1.0) / last
    return factors


def feather(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """Fade the mask linearly towards the given edges over that many pixels (ComfyUI's FeatherMask ramps)."""
    out = as_mask_batch(mask)
    columns = _edge_ramp(out.shape[-1], left, right).to(out.device)
    rows = _edge_ramp(out.shape[-2], top, bottom).to(out.device)
    return (out * (rows[:, None] * columns[None, :]).to(out.dtype)).contiguous()


def grow(mask: torch.Tensor, expand: int, tapered_corners: bool) -> torch.Tensor:
    """Grey dilation (expand > 0) or erosion (expand < 0), |expand| times, with a 3x3 structuring element:
    a cross when `tapered_corners` (so corners round off), else a full square. kornia's geodesic border
    ignores pixels outside the mask, which for a 3x3 element equals scipy's reflect border ComfyUI uses."""
    out = as_mask_batch(mask).unsqueeze(1)
    corner = 0.0 if tapered_corners else 1.0
    kernel = torch.tensor([[corner, 1.0, corner], [1.0, 1.0, 1.0], [corner, 1.0, corner]], device=out.device,
                          dtype=out.dtype)
    operation = kornia.morphology.dilation if expand > 0 else kornia.morphology.erosion
    for _ in range(abs(expand)):
        out = operation(out, kernel)
    return out.squeeze(1) if expand else out.squeeze(1).clone()
