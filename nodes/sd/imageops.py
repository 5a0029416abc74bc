"""Resizing for IMAGE [B,H,W,C] and LATENT [B,C,H,W] tensors, with ComfyUI's method names and crop rule."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_MODES = ("disabled", "center")


def center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop [B,C,H,W] to the aspect ratio of width x height around the centre (ComfyUI's `crop="center"`)."""
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[..., y: old_h - y, x: old_w - x]


def slerp(low: torch.Tensor, high: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of vectors along dim 1 (channels), keeping their norms interpolated linearly."""
    low_norm = low.norm(dim=1, keepdim=True)
    high_norm = high.norm(dim=1, keepdim=True)
    low_unit = low / low_norm.clamp_min(1e-8)
    high_unit = high / high_norm.clamp_min(1e-8)
    dot = (low_unit * high_unit).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    nearly_parallel = sin_omega.abs() < 1e-5
    safe_sin = torch.where(nearly_parallel, torch.ones_like(sin_omega), sin_omega)
    unit = (torch.sin((1 - t) * omega) / safe_sin) * low_unit + (torch.sin(t * omega) / safe_sin) * high_unit
    unit = torch.where(nearly_parallel, low_unit * (1 - t) + high_unit * t, unit)
    return unit * (low_norm * (1 - t) + high_norm * t)


def _bislerp_axis(samples: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resample one spatial axis by slerping between the two nearest source positions."""
    old = samples.shape[dim]
    if old == size:
        return samples
    pos = (torch.arange(size, dtype=torch.float64) + 0.5) * old / size - 0.5
    pos = pos.clamp(0, old - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=old - 1)
    t = (pos - lo).to(samples.dtype)
    low = samples.index_select(dim, lo)
    high = samples.index_select(dim, hi)
    shape = [1] * samples.dim()
    shape[dim] = size
    return slerp(low, high, t.view(shape))


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bi-spherical interpolation of latents: keeps latent vector norms, which linear resizes shrink."""
    out = _bislerp_axis(samples.float(), height, 2)
    return _bislerp_axis(out, width, 3).to(samples.dtype)


def _lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    images = []
    for image in samples.movedim(1, -1).clamp(0, 1).cpu().numpy():
        pil = Image.fromarray((image * 255).round().astype(np.uint8).squeeze())
        resized = np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(resized.reshape(height, width, -1)))
    return torch.stack(images).movedim(-1, 1).to(samples.device, samples.dtype)


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize [B,C,H,W] to width x height with one of IMAGE_METHODS / LATENT_METHODS."""
    if width <= 0 or height <= 0:
        raise ValueError(f"resize to {width}x{height}: both sides must be positive")
    if crop == "center":
        samples = center_crop(samples, width, height)
    elif crop != "disabled":
        raise ValueError(f"crop {crop!r} is not one of {CROP_MODES}")
    if method == "bislerp":
        return bislerp(samples, width, height)
    if method == "lanczos":
        return _lanczos(samples, width, height)
    if method not in ("nearest-exact", "bilinear", "area", "bicubic"):
        raise ValueError(f"upscale method {method!r} is not one of {sorted(set(IMAGE_METHODS + LATENT_METHODS))}")
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(samples, size=(height, width), mode=method, **kwargs)


def resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """IMAGE [B,H,W,C] resize; a zero width or height keeps the aspect ratio from the other side."""
    old_h, old_w = image.shape[1:3]
    if width == 0 and height == 0:
        return image
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    out = resize(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)
    return out.clamp(0, 1) if method in ("bicubic", "lanczos") else out
