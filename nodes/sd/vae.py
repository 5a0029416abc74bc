"""VAE encode/decode between IMAGE tensors ([B, H, W, C], 0..1) and the latents the UNet sees.

Latents are stored scaled: z = (mean - shift_factor) * scaling_factor, so samplers work at unit-ish
variance. Encoding takes the posterior mean, not a sample: the node cache assumes a node's output depends
only on its inputs, and SD's posterior standard deviation is tiny anyway. Work runs on the VAE's device
in its dtype, in batches (a 1024 px decode needs gigabytes), and results come back float32 on the CPU.

A VAE run in fp16 (or bf16) can overflow: SD's decoders make activations past fp16's 65504, which come
out as inf/NaN pixels (black or garbage images). A batch whose result is not finite is redone in fp32
and the rest stay in half precision, so one bad latent does not cost every image its speed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from functools import cache

import torch

from nodegraph.models import ModelRef, model_nbytes
from nodes.sd.types import VaeHandle

logger = logging.getLogger(__name__)
HALF = (torch.float16, torch.bfloat16)
Upcast = Callable[[], torch.nn.Module]
"""Gives an fp32 copy of the handle's VAE, on its device (a model manager may cache one)."""


def _place(vae: VaeHandle) -> tuple[torch.device, torch.dtype]:
    parameter = next(vae.vae.parameters())
    return parameter.device, parameter.dtype


def downscale_factor(vae: VaeHandle) -> int:
    """Pixels per latent along each side: 2 ** (levels - 1), 8 for SD's VAEs."""
    return 2 ** (len(vae.vae.config.block_out_channels) - 1)


def _crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop H and W down to multiples of `multiple` (ComfyUI's VAEEncode does the same)."""
    height, width = (image.shape[1] // multiple) * multiple, (image.shape[2] // multiple) * multiple
    if height == 0 or width == 0:
        raise ValueError(f"image {tuple(image.shape[1:3])} is smaller than the VAE's {multiple} px latent cell")
    top, left = (image.shape[1] % multiple) // 2, (image.shape[2] % multiple) // 2
    return image[:, top : top + height, left : left + width]


def _fp32_copy(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).float()


def _fp32_source(vae: VaeHandle, upcast: Upcast | None) -> Upcast:
    """The fp32 VAE for retries, made at most once per call (copying a VAE costs its size in memory). A
    managed VAE's copy is a model derived from it, so the manager keeps it for later decodes and counts it."""
    if upcast is None and isinstance(vae.vae_ref, ModelRef):
        upcast = vae.vae_ref.derive(("dtype", "float32"), _fp32_copy, name=f"{vae.vae_ref.name} as fp32",
                                    size=model_nbytes).get
    return cache(upcast if upcast is not None else lambda: _fp32_copy(vae.vae))


def _run_finite(
    vae: VaeHandle, run: Callable[[torch.nn.Module, torch.dtype], torch.Tensor], fp32: Upcast, what: str
) -> torch.Tensor:
    """`run(module, dtype)` on the handle's VAE; redone on the fp32 copy when half precision gave inf/NaN."""
    _, dtype = _place(vae)
    result = run(vae.vae, dtype)
    if dtype not in HALF or bool(torch.isfinite(result).all()):
        return result
    logger.warning("VAE %s: %s in %s gave inf/NaN values; retrying in fp32", vae.source or "(unnamed)", what,
                   str(dtype).removeprefix("torch."))
    return run(fp32(), torch.float32)


@torch.no_grad()
def decode(
    vae: VaeHandle, latent_samples: torch.Tensor, *, batch_size: int = 4, upcast: Upcast | None = None
) -> torch.Tensor:
    """Latents [B, C, h, w] (scaled, as the UNet sees them) -> IMAGE [B, h*8, w*8, 3] in 0..1, float32 on CPU.

    Args:
        vae: the VAE handle; its scaling and shift undo the latent scaling.
        latent_samples: a batch of latents.
        batch_size: how many latents to decode at once (bounds memory).
        upcast: gives an fp32 copy of the VAE for batches that overflow in fp16/bf16; None deep-copies the
            handle's VAE (once per call, only if a batch overflows).
    """
    if latent_samples.dim() != 4:
        raise ValueError(f"latents must be [B, C, H, W], got shape {tuple(latent_samples.shape)}")
    device, _ = _place(vae)
    fp32 = _fp32_source(vae, upcast)
    images = []
    for start in range(0, latent_samples.shape[0], batch_size):
        chunk = latent_samples[start : start + batch_size]

        def run(module: torch.nn.Module, dtype: torch.dtype, chunk: torch.Tensor = chunk) -> torch.Tensor:
            z = chunk.to(device=device, dtype=dtype) / vae.scaling_factor + vae.shift_factor
            return module.decode(z).sample

        what = f"decoding latents {start}..{start + len(chunk) - 1}"
        pixels = _run_finite(vae, run, fp32, what)
        images.append(((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu())
    return torch.cat(images)


@torch.no_grad()
def encode(vae: VaeHandle, image: torch.Tensor, *, batch_size: int = 4, upcast: Upcast | None = None) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> scaled latents [B, 4, H/8, W/8], float32 on CPU.

    Args:
        vae: the VAE handle.
        image: a batch of images; an alpha channel is dropped, sides not a multiple of 8 are centre-cropped.
        batch_size: how many images to encode at once (bounds memory).
        upcast: as for `decode`: the fp32 VAE for batches that overflow in half precision.
    """
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"IMAGE must be [B, H, W, 3 or 4], got shape {tuple(image.shape)}")
    device, _ = _place(vae)
    image = _crop_to_multiple(image[..., :3], downscale_factor(vae))
    fp32 = _fp32_source(vae, upcast)
    latents = []
    for start in range(0, image.shape[0], batch_size):
        chunk = image[start : start + batch_size]

        def run(module: torch.nn.Module, dtype: torch.dtype, chunk: torch.Tensor = chunk) -> torch.Tensor:
            pixels = chunk.to(device=device, dtype=dtype).permute(0, 3, 1, 2) * 2.0 - 1.0
            return module.encode(pixels).latent_dist.mean

        mean = _run_finite(vae, run, fp32, f"encoding images {start}..{start + len(chunk) - 1}")
        latents.append(((mean.float() - vae.shift_factor) * vae.scaling_factor).cpu())
    return torch.cat(latents)
