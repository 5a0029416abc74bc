"""FreeU (Si et al. 2024, "FreeU: Free Lunch in Diffusion U-Net", arXiv 2309.11497) and Kohya's Deep Shrink
(ComfyUI's PatchModelAddDownscale) as "unet_block" patches, with ComfyUI's block selection.

FreeU scales the first half of the decoder's backbone channels by b (V2: by 1 + (b - 1) * the hidden state's
channel-mean, min-max normalised per sample) and damps the skip's lowest frequencies by s (a Fourier mask),
in the output blocks whose incoming hidden state has 4x (b1, s1) or 2x (b2, s2) the model's base channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.types import ModelPatch
from nodes.sd.unet_blocks import BlockInfo, OutputPatch, block_patch


def fourier_scale(x: Tensor, *, inner: float, outer: float, radius: int) -> Tensor:
    """x with its centred 2-D spectrum multiplied by `inner` within `radius` of the centre (a square, indexed as
    ComfyUI does, Python slice rules included) and by `outer` elsewhere; computed in float32, returned in x's dtype.

    Args:
        x: [B, C, H, W].
        inner: factor of the low frequencies (FreeU's s, FreSca's scale_low).
        outer: factor of the rest (FreeU: 1, FreSca's scale_high).
        radius: half-width of the low-frequency square in frequency bins.
    """
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = spectrum.shape[-2:]
    mask = torch.full(spectrum.shape, float(outer), device=x.device)
    row, col = height // 2, width // 2
    mask[..., row - radius : row + radius, col - radius : col + radius] = inner
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return filtered.to(x.dtype)


def freeu_backbone(h: Tensor, b: float, v2: bool) -> Tensor:
    """The backbone scaling of FreeU (v2=False: the first half of the channels times b) or FreeU_V2 (times
    1 + (b - 1) * normalised channel mean)."""
    half = h.shape[1] // 2
    if v2:
        mean = h.mean(1, keepdim=True)
        flat = mean.reshape(mean.shape[0], -1)
        low = flat.min(dim=-1).values.reshape(-1, 1, 1, 1)
        high = flat.max(dim=-1).values.reshape(-1, 1, 1, 1)
        factor = (b - 1) * ((mean - low) / (high - low)) + 1
    else:
        factor = b
    return torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)


def freeu_patch(b1: float, b2: float, s1: float, s2: float, *, v2: bool) -> ModelPatch:
    """FreeU / FreeU_V2 ("unet_block" patch). Output blocks are picked by the incoming hidden state's channels:
    4 x model channels -> (b1, s1), 2 x -> (b2, s2) (ComfyUI's rule; diffusers' own FreeU picks by level)."""

    def scales(info: BlockInfo) -> dict[int, tuple[float, float]]:
        return {info.model_channels * 4: (b1, s1), info.model_channels * 2: (b2, s2)}

    def skip(hsp: Tensor, channels: int, info: BlockInfo) -> Tensor:
        stage = scales(info).get(channels)
        return hsp if stage is None else fourier_scale(hsp, inner=stage[1], outer=1.0, radius=1)

    def hidden(h: Tensor, _hsp: Tensor, info: BlockInfo) -> Tensor:
        stage = scales(info).get(int(h.shape[1]))
        return h if stage is None else freeu_backbone(h, stage[0], v2)

    name = "freeu_v2" if v2 else "freeu"
    return block_patch(name, {"b1": b1, "b2": b2, "s1": s1, "s2": s2}, output=OutputPatch(skip=skip, hidden=hidden))


UPSCALE_METHODS: tuple[str, ...] = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")
"""PatchModelAddDownscale's resampling choices (ComfyUI's upscale_methods)."""


def _slerp(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """Per row of [N, C]: the direction slerped from a's to b's by `ratio` [N, 1], the norm lerped; nearly equal
    directions give a, opposite ones the plain lerp (ComfyUI's bislerp rules)."""
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    unit_a = torch.where(norm_a == 0, torch.zeros_like(a), a / norm_a)
    unit_b = torch.where(norm_b == 0, torch.zeros_like(b), b / norm_b)
    dot = (unit_a * unit_b).sum(-1, keepdim=True)
    omega = torch.acos(dot.clamp(-1, 1))
    sin = torch.sin(omega)
    out = (torch.sin((1 - ratio) * omega) / sin) * unit_a + (torch.sin(ratio * omega) / sin) * unit_b
    out = out * (norm_a * (1 - ratio) + norm_b * ratio)
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * (1 - ratio) + b * ratio, out)


def _bislerp_axis(x: Tensor, size: int) -> Tensor:
    """x [B, C, H, W] resized along W to `size`: neighbours at bilinear (half-pixel) positions, slerped."""
    batch, channels, height, width = x.shape
    position = ((torch.arange(size, dtype=torch.float64) + 0.5) * (width / size) - 0.5).clamp(0, width - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=width - 1)
    ratio = (position - low).to(x.dtype).to(x.device)
    rows = x.permute(0, 2, 3, 1)  # [B, H, W, C]
    a, b = rows[:, :, low.to(x.device)], rows[:, :, high.to(x.device)]
    r = ratio.view(1, 1, size, 1).expand(batch, height, size, 1)
    out = _slerp(a.reshape(-1, channels), b.reshape(-1, channels), r.reshape(-1, 1))
    return out.reshape(batch, height, size, channels).permute(0, 3, 1, 2)


def bislerp(x: Tensor, height: int, width: int) -> Tensor:
    """ComfyUI's "bislerp" resize: bilinear sampling positions, but each blend of two neighbouring channel vectors
    is a spherical interpolation of their directions with linearly interpolated norms (width, then height)."""
    out = _bislerp_axis(x.float(), width)
    return _bislerp_axis(out.transpose(-2, -1), height).transpose(-2, -1).to(x.dtype)


def resample(x: Tensor, height: int, width: int, method: str) -> Tensor:
    """x [B, C, H, W] resized to (height, width) by one of UPSCALE_METHODS, without cropping."""
    if method == "bislerp":
        return bislerp(x, height, width)
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; expected one of {', '.join(UPSCALE_METHODS)}")
    align = {"bilinear": False, "bicubic": False}
    return F.interpolate(x, size=(height, width), mode=method, align_corners=align.get(method))


def downscale_patch(block_number: int, downscale_factor: float, sigma_start: float, sigma_end: float,
                    downscale_after_skip: bool, downscale_method: str, upscale_method: str) -> ModelPatch:
    """Kohya's Deep Shrink (ComfyUI's PatchModelAddDownscale): input block `block_number`'s output is shrunk by
    `downscale_factor` while sigma_end <= sigma <= sigma_start, and the decoder's hidden state is resized back to
    its skip's size wherever they differ.

    Args:
        block_number: ComfyUI's input block number (1 = the first layer after conv_in).
        sigma_start, sigma_end: the sigma range (from start/end percent, `percent_to_sigma`).
        downscale_after_skip: shrink after the block's output is kept as skip (the skip stays full size).
    """

    def shrink(h: Tensor, info: BlockInfo) -> Tensor:
        if info.number != block_number or info.sigma is None:
            return h
        sigma = float(info.sigma.reshape(-1)[0])
        if not sigma_end <= sigma <= sigma_start:
            return h
        height = round(h.shape[-2] * (1.0 / downscale_factor))
        width = round(h.shape[-1] * (1.0 / downscale_factor))
        return resample(h, height, width, downscale_method)

    def grow(h: Tensor, hsp: Tensor, _info: BlockInfo) -> Tensor:
        if h.shape[2] != hsp.shape[2]:
            return resample(h, hsp.shape[-2], hsp.shape[-1], upscale_method)
        return h

    options = {"block_number": block_number, "downscale_factor": downscale_factor, "sigma_start": sigma_start,
               "sigma_end": sigma_end, "after_skip": downscale_after_skip, "down": downscale_method,
               "up": upscale_method}
    if downscale_after_skip:
        return block_patch("downscale", options, input_after_skip=shrink, output=OutputPatch(hidden=grow))
    return block_patch("downscale", options, input=shrink, output=OutputPatch(hidden=grow))
