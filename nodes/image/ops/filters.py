"""Filters and tone operations with ComfyUI's formulas: blend modes, Gaussian blur, unsharp sharpening, palette
quantization (with Floyd-Steinberg or ordered Bayer dithering), Canny edges, morphology and YCbCr conversion.

Convolutions, edges, morphology and colour spaces run through kornia (Riba et al. 2020, "Kornia: an open source
differentiable computer vision library for PyTorch"), the library ComfyUI uses for these nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia
import numpy as np
import torch
from PIL import Image

BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")
DITHER_MODES = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")
MORPHOLOGY_OPERATIONS = ("erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat")


def _soft_light_d(x: torch.Tensor) -> torch.Tensor:
    """The W3C Compositing spec's D(x) for soft-light: a cubic below 1/4, the square root above."""
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


_BLENDS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
    "soft_light": lambda a, b: torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a),
                                           a + (2 * b - 1) * (_soft_light_d(a) - a)),
    "difference": lambda a, b: a - b,  # ComfyUI's "difference" is signed; the clamp to 0..1 follows
}


def blend(base: torch.Tensor, layer: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """Blend `layer` onto `base` (same shape) with a separable blend mode (W3C Compositing and Blending Level 1),
    then mix with the base by `factor` and clamp: base * (1 - factor) + mode(base, layer) * factor."""
    if mode not in _BLENDS:
        raise ValueError(f"blend mode {mode!r} is not one of {BLEND_MODES}")
    return torch.clamp(base * (1 - factor) + _BLENDS[mode](base, layer) * factor, 0, 1)


def comfy_gaussian_kernel(kernel_size: int, sigma: float) -> torch.Tensor:
    """ComfyUI's blur kernel: a Gaussian sampled on [-1, 1] in both axes (so `sigma` is relative to the radius,
    not in pixels), normalised to sum 1. Shape [kernel_size, kernel_size]."""
    axis = torch.linspace(-1, 1, kernel_size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    kernel = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def _filter(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel of IMAGE [B,H,W,C] with `kernel` [k,k], mirroring the border (no edge repeat)."""
    radius = kernel.shape[-1] // 2
    if radius >= min(image.shape[1:3]):
        raise ValueError(f"a radius of {radius} needs a picture wider and taller than {radius} pixels, "
                         f"got {image.shape[2]}x{image.shape[1]}")
    out = kornia.filters.filter2d(image.movedim(-1, 1), kernel.unsqueeze(0).to(image), border_type="reflect")
    return out.movedim(1, -1)


def gaussian_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """ImageBlur: the (2r+1)^2 `comfy_gaussian_kernel` over a mirrored border."""
    if radius == 0:
        return image
    return _filter(image, comfy_gaussian_kernel(2 * radius + 1, sigma))


def sharpen(image: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """ImageSharpen, an unsharp mask in one kernel: -10 * alpha times the Gaussian around, the centre raised so the
    kernel sums to 1 (flat areas keep their value, edges are pushed apart); clamped to 0..1."""
    if radius == 0:
        return image
    kernel = comfy_gaussian_kernel(2 * radius + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] += 1.0 - kernel.sum()
    return torch.clamp(_filter(image, kernel), 0, 1)


def _to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """[H,W,3] in 0..1 to uint8 by truncation, as ComfyUI's quantize does (`(x * 255).to(uint8)`)."""
    return (image[..., :3] * 255).to(torch.uint8).cpu().numpy()


def bayer_matrix(order: int) -> np.ndarray:
    """The order x order ordered-dither threshold map (Bayer 1973), centred on 0: entries (i + 0.5) / n^2 - 0.5
    arranged so that consecutive thresholds are spread apart."""
    n = int(math.log2(order))
    matrix = np.zeros((1, 1), dtype=np.float32)
    for level in range(1, n + 1):
        q = 4 ** level
        m = q * matrix
        matrix = np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q
    return matrix


def _bayer_dither(rgb: np.ndarray, palette: Image.Image, order: int) -> Image.Image:
    """Ordered dither: add the Bayer map scaled to the palette's colour spacing (2 * 256 / colours, + 0.5), then
    map each pixel to its nearest palette colour without error diffusion."""
    colours = len(palette.getpalette()) // 3
    threshold = (2 * 256 / colours * bayer_matrix(order) + 0.5).astype(np.float32)
    h, w = rgb.shape[:2]
    tiled = np.tile(threshold, (math.ceil(h / order), math.ceil(w / order)))[:h, :w, None]
    shifted = np.clip(rgb.astype(np.float32) + tiled, 0, 255).astype(np.uint8)
    return Image.fromarray(shifted).quantize(palette=palette, dither=Image.Dither.NONE)


def quantize(image: torch.Tensor, colors: int, dither: str) -> torch.Tensor:
    """ImageQuantize: each picture reduced to a `colors`-entry palette chosen by pillow's median cut, then mapped
    onto it with no dithering, Floyd-Steinberg error diffusion (1976) or a Bayer ordered dither."""
    if dither not in DITHER_MODES:
        raise ValueError(f"dither {dither!r} is not one of {DITHER_MODES}")
    out = []
    for picture in image:
        pil = Image.fromarray(_to_uint8_rgb(picture), mode="RGB")
        palette = pil.quantize(colors=colors)  # a palette first: quantize(palette=...) honours `dither`
        if dither == "none":
            mapped = pil.quantize(palette=palette, dither=Image.Dither.NONE)
        elif dither == "floyd-steinberg":
            mapped = pil.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
        else:
            mapped = _bayer_dither(np.asarray(pil), palette, int(dither.split("-")[1]))
        out.append(torch.from_numpy(np.asarray(mapped.convert("RGB"), dtype=np.float32) / 255.0))
    result = torch.stack(out).to(image.device)
    if image.shape[-1] == 4:
        result = torch.cat((result, image[..., 3:]), dim=-1)
    return result


def canny_edges(image: torch.Tensor, low_threshold: float, high_threshold: float) -> torch.Tensor:
    """Canny (1986) edges of the picture's luminance with kornia's defaults (5x5 Gaussian, sigma 1, hysteresis):
    1 on an edge, 0 elsewhere, repeated into three channels."""
    _, edges = kornia.filters.canny(image[..., :3].movedim(-1, 1), low_threshold, high_threshold)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1)


_MORPHOLOGY = {
    "erode": kornia.morphology.erosion,
    "dilate": kornia.morphology.dilation,
    "open": kornia.morphology.opening,
    "close": kornia.morphology.closing,
    "gradient": kornia.morphology.gradient,
    "top_hat": kornia.morphology.top_hat,
    "bottom_hat": kornia.morphology.bottom_hat,
}


def morphology(image: torch.Tensor, operation: str, kernel_size: int) -> torch.Tensor:
    """Grey-scale morphology (Serra 1982) per channel with a flat kernel_size x kernel_size square."""
    if operation not in _MORPHOLOGY:
        raise ValueError(f"morphology operation {operation!r} is not one of {MORPHOLOGY_OPERATIONS}")
    kernel = torch.ones(kernel_size, kernel_size, device=image.device)
    return _MORPHOLOGY[operation](image.movedim(-1, 1), kernel).movedim(1, -1)


def rgb_to_yuv(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y, U (Cb) and V (Cr) planes of the RGB picture (ITU-R BT.601 full range, offset 0.5), each as a grey
    three-channel IMAGE."""
    rgb = image[..., :3]
    ycbcr = kornia.color.rgb_to_ycbcr(rgb.movedim(-1, 1)).movedim(1, -1)
    return tuple(ycbcr[..., i: i + 1].expand_as(rgb).contiguous() for i in range(3))  # type: ignore[return-value]


def yuv_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_yuv`; each plane is read as the mean of its channels."""
    planes = [plane.mean(dim=-1, keepdim=True) for plane in (y, u, v)]
    return kornia.color.ycbcr_to_rgb(torch.cat(planes, dim=-1).movedim(-1, 1)).movedim(1, -1)
