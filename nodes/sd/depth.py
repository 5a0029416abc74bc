"""Depth maps for the depth-to-image model (SD2-depth layout: a 5-channel UNet, noisy latent + depth).

The shapes world has no real depth, so the embedded depth model is trained on a height field the generator
can render exactly: 0 on the background, rising to 1 over `FALLOFF` of the image side inside the shape (a
flat-topped relief, like what a monocular depth estimator sees of a cut-out standing in front of a wall).
`height_field` computes it from a mask; `shape_mask` finds the mask in an image of a shape on a plain
background, so any such image (a render, a generated picture) can be turned into a depth map.

`depth_to_latent` is the conditioning the UNet reads, exactly as diffusers' StableDiffusionDepth2ImgPipeline
prepares a supplied depth map: bicubic resize to the latent size, then min-max normalised to -1..1 per image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

FALLOFF = 0.05
"""Width (fraction of the image side) over which the height rises from 0 at the edge to 1 inside."""
BORDER = 0.04
"""Share of the side read as the border band whose median colour is the background."""
THRESHOLD = 60.0
"""RGB distance from the background colour above which a pixel belongs to the shape."""


def height_field(mask: np.ndarray, falloff: float = FALLOFF) -> np.ndarray:
    """A [H, W] float32 height in 0..1 from a boolean [H, W] shape mask: the distance to the nearest background
    pixel divided by `falloff * H`, clipped at 1 (0 everywhere when the mask is empty)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"height_field needs a [H, W] mask, got shape {mask.shape}")
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(mask)
    return np.clip(distance / max(falloff * mask.shape[0], 1e-6), 0.0, 1.0).astype(np.float32)


def shape_mask(image: np.ndarray) -> np.ndarray:
    """The pixels of an [H, W, 3] image (0..1 or 0..255) that differ from its border's median colour.

    The largest blob is not isolated: a ring's hole and stray specks are what they are (the depth of a
    generated picture should show what was drawn).
    """
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[-1] < 3:
        raise ValueError(f"shape_mask needs an [H, W, 3] image, got shape {pixels.shape}")
    pixels = pixels[..., :3] * (255.0 if pixels.max() <= 1.0 else 1.0)
    height, width = pixels.shape[:2]
    band = max(1, round(BORDER * min(height, width)))
    border = np.concatenate([pixels[:band].reshape(-1, 3), pixels[-band:].reshape(-1, 3),
                             pixels[:, :band].reshape(-1, 3), pixels[:, -band:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    return np.linalg.norm(pixels - background, axis=-1) > THRESHOLD


def image_depth(images: torch.Tensor, falloff: float = FALLOFF) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> depth [B, H, W] in 0..1: `height_field(shape_mask(image))` per image."""
    out = [torch.from_numpy(height_field(shape_mask(image.float().cpu().numpy()), falloff)) for image in images]
    return torch.stack(out).to(images.device)


def depth_to_latent(depth: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Depth [B, H, W] -> the UNet's extra channel [B, 1, h, w] in -1..1 (diffusers' `prepare_depth_map`).

    Raises:
        ValueError: a flat depth map (no shape in it): min-max normalisation has nothing to scale.
    """
    if depth.dim() != 3:
        raise ValueError(f"depth maps are [B, H, W], got shape {tuple(depth.shape)}")
    resized = F.interpolate(depth[:, None].float(), size=(latent_height, latent_width), mode="bicubic",
                            align_corners=False)
    low = torch.amin(resized, dim=(1, 2, 3), keepdim=True)
    high = torch.amax(resized, dim=(1, 2, 3), keepdim=True)
    if bool((high - low <= 0).any()):
        raise ValueError("a depth map is flat (the same value everywhere): there is no shape to place")
    return 2.0 * (resized - low) / (high - low) - 1.0
