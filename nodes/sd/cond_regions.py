"""Where, when and with what extra input a conditioning entry acts: the parts of ComfyUI's conditioning
model that `calc_cond_batch` (nodes/sd/denoisers.py) resolves against a latent and the model's schedule.

- Areas in latent pixels, or as fractions of the latent (ConditioningSetAreaPercentage), or the bounding
  box of a mask (ConditioningSetMask's "mask bounds").
- Masks: the entry's weight per latent pixel is mask * mask_strength * strength, with no edge feathering
  (ComfyUI's get_area_and_mult; feathering applies to plain rectangles only).
- Timestep ranges: (start, end) fractions of the schedule become a sigma interval; the entry is evaluated
  only while sigma lies inside it (ComfyUI's percent_to_sigma: fraction p is the training timestep
  (1 - p) * 999, 0 means "from the start" and 1 "to the end").
- Concatenated latents (c_concat) for UNets with more input channels than the latent has: inpainting
  UNets take [mask, masked-image latent] (5 extra channels), InstructPix2Pix UNets the image latent (4),
  depth-to-image UNets (SD2-depth layout) the depth map at latent size (1).
- SDXL size conditioning (Podell et al. 2023, "SDXL", section 2.2): 6 time ids for the base UNet, 5 (with
  the aesthetic score) for the refiner.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.imageops import resize
from nodes.sd.schedules import timestep_to_sigma
from nodes.sd.types import CondItem

Region = tuple[int, int, int, int]
"""(height, width, y, x) in latent pixels."""

INPAINT_EXTRA_CHANNELS = 5
IP2P_EXTRA_CHANNELS = 4
X4_UPSCALE_EXTRA_CHANNELS = 3
DEPTH_EXTRA_CHANNELS = 1
REFINER_TIME_IDS = 5
DEFAULT_AESTHETIC_SCORE = {0: 6.0, 1: 2.5}
"""ComfyUI's refiner defaults when no score is given: 6 for the positive prompt, 2.5 for the negative."""


def latent_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """A MASK ([H, W] or [B, H, W]) resized bilinearly to the latent, [B, height, width] float32."""
    mask = mask.to(torch.float32)
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValueError(f"conditioning mask must be [H, W] or [B, H, W], got shape {tuple(mask.shape)}")
    if tuple(mask.shape[1:]) != (height, width):
        mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False).squeeze(1)
    return mask


def mask_bounds(mask: Tensor) -> Region:
    """The bounding box of a [B, H, W] mask's non-zero pixels (over the batch); (1, 1, 0, 0) when it is empty."""
    covered = mask.abs().amax(dim=0) > 0
    rows, cols = torch.nonzero(covered, as_tuple=True)
    if len(rows) == 0:
        return (1, 1, 0, 0)
    top, left = int(rows.min()), int(cols.min())
    return (int(rows.max()) - top + 1, int(cols.max()) - left + 1, top, left)


def resolve_area(item: CondItem, height: int, width: int) -> Region | None:
    """The entry's rectangle before clipping to the latent, or None for the whole latent."""
    if item.mask is not None and item.mask_bounds:
        return mask_bounds(latent_mask(item.mask, height, width))
    if item.area is not None:
        return item.area
    if item.area_fraction is not None:
        h, w, y, x = item.area_fraction
        return (max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width))
    return None


def percent_to_sigma(percent: float, sigmas: Tensor) -> float:
    """The sigma at a fraction of the schedule (0 = noisiest); 0 gives +inf and 1 gives 0, so both ends are open.

    Args:
        percent: fraction of the way through sampling.
        sigmas: the model's ascending training sigmas.
    """
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    timestep = torch.tensor((1.0 - percent) * (len(sigmas) - 1), dtype=torch.float64)
    return float(timestep_to_sigma(timestep, sigmas))


def sigma_interval(item: CondItem, sigmas: Tensor) -> tuple[float, float] | None:
    """(highest, lowest) sigma at which the entry is evaluated, or None when it always is."""
    if item.timestep_range is None:
        return None
    start, end = item.timestep_range
    return (percent_to_sigma(start, sigmas), percent_to_sigma(end, sigmas))


def in_interval(interval: tuple[float, float] | None, sigma: Tensor) -> bool:
    """Whether the first sigma of the batch lies in the interval (ComfyUI looks at the first one too).

    Reads one value on the host (a device sync on CUDA), and only for entries that have a timestep range.
    """
    if interval is None:
        return True
    value = float(sigma.reshape(-1)[0])
    return interval[1] <= value <= interval[0]


def to_batch(tensor: Tensor, batch: int) -> Tensor:
    if tensor.shape[0] == batch:
        return tensor
    return tensor.repeat(math.ceil(batch / tensor.shape[0]), *([1] * (tensor.dim() - 1)))[:batch]


def concat_map(item: CondItem, extra_channels: int, batch: int, height: int, width: int) -> Tensor | None:
    """The channels stacked onto a UNet input for this entry, [batch, extra_channels, height, width].

    Args:
        item: the entry (its `concat`, from InpaintModelConditioning or InstructPixToPixConditioning).
        extra_channels: the UNet's input channels minus the latent's: 0 (no concat), 5, 4, 3 or 1.
        batch, height, width: the latent's shape.
    """
    if extra_channels == 0:
        return None
    if item.concat is None and extra_channels == IP2P_EXTRA_CHANNELS:
        # InstructPix2Pix's "no image" input (trained by dropping the image; ComfyUI feeds zeros too): a plain
        # negative prompt is the fully unconditional prediction of DualCFGGuider's image + text guidance
        return torch.zeros(batch, extra_channels, height, width)
    if item.concat is None:
        raise ValueError(
            f"this UNet takes {extra_channels} input channels besides the latent (an inpainting or InstructPix2Pix "
            "model, the x4 upscaler or a depth model); give it conditioning from InpaintModelConditioning, "
            "InstructPixToPixConditioning, SD_4XUpscale_Conditioning or DepthToImageConditioning")
    latent = item.concat.latent.to(torch.float32)
    if tuple(latent.shape[-2:]) != (height, width):
        latent = resize(latent, width, height, "bilinear", "center")
    latent = to_batch(latent, batch)
    if extra_channels in (IP2P_EXTRA_CHANNELS, X4_UPSCALE_EXTRA_CHANNELS, DEPTH_EXTRA_CHANNELS):
        if latent.shape[1] != extra_channels:  # x4 upscaler: the low-res image; depth model: the depth map
            raise ValueError(f"this UNet takes {extra_channels} extra input channel(s) but the conditioning's "
                             f"concat has {latent.shape[1]} (conditioning made for another kind of model)")
        return latent
    if extra_channels != INPAINT_EXTRA_CHANNELS:
        raise ValueError(f"a UNet taking {extra_channels} extra input channels is neither an inpainting (5), "
                         f"an InstructPix2Pix (4) nor a depth (1) model")
    if item.concat.mask is None:
        mask = torch.ones(batch, 1, height, width)
    else:
        mask = item.concat.mask.to(torch.float32)
        mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        if tuple(mask.shape[-2:]) != (height, width):
            mask = resize(mask, width, height, "bilinear", "center")
        mask = to_batch(mask.round(), batch)
    return torch.cat([mask, latent], dim=1)


def time_id_count(unet: Any, pooled_dim: int) -> int:
    """How many size ids an SDXL-style UNet takes: 6 for the base model, 5 for the refiner."""
    config = getattr(unet, "config", None)
    projection = getattr(config, "projection_class_embeddings_input_dim", None)
    per_id = getattr(config, "addition_time_embed_dim", None)
    if not projection or not per_id:
        return 6
    return (int(projection) - pooled_dim) // int(per_id)


def time_ids(item: CondItem, set_index: int, height: int, width: int, count: int) -> Tensor:
    """SDXL's size conditioning for an entry, [1, count], in image pixels.

    CondItem.extras["time_ids"] wins when given; then `item.size`; without either, the image size (latent size
    times 8) with no crop, and for the refiner ComfyUI's default aesthetic score (6, or 2.5 for the negative).
    """
    given = item.extras.get("time_ids")
    if given is not None:
        return torch.as_tensor(given, dtype=torch.float32).reshape(1, -1)
    size = item.size
    h, w = (height * 8, width * 8) if size is None else (size.height, size.width)
    crop_h, crop_w = (0, 0) if size is None else (size.crop_h, size.crop_w)
    if count == REFINER_TIME_IDS:
        score = None if size is None else size.aesthetic_score
        if score is None:
            score = DEFAULT_AESTHETIC_SCORE.get(set_index, 6.0)
        values = [h, w, crop_h, crop_w, score]
    else:
        target_h = h if size is None or size.target_height is None else size.target_height
        target_w = w if size is None or size.target_width is None else size.target_width
        values = [h, w, crop_h, crop_w, target_h, target_w]
    return torch.tensor([values], dtype=torch.float32)
