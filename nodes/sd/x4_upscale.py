"""Conditioning of Stable Diffusion's x4 upscaler (stable-diffusion-x4-upscaler; diffusers'
StableDiffusionUpscalePipeline): a latent diffusion model whose UNet takes the low-resolution image itself,
in -1..1 at latent size, as 3 extra input channels, and a noise-augmentation level as a class label.

The low-res image is noised to `level = round(350 * noise_augmentation)` on its own schedule (betas from
sqrt(1e-4) to sqrt(0.02) squared, 1000 steps: diffusers' low_res_scheduler, ComfyUI's
ImageConcatWithNoiseAugmentation), which teaches the model to tolerate degraded inputs (Ho et al. 2021, "Cascaded
Diffusion Models", conditioning augmentation). The augmentation noise is drawn from a fixed seed (ComfyUI draws
it from the sampler's seed minus 10, which conditioning cannot see here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nodes.sd.imageops import resize

MAX_NOISE_LEVEL = 350
"""The x4 upscaler's largest augmentation level (noise_augmentation 1.0)."""
AUGMENTATION_SEED = 0


def low_res_alphas_cumprod() -> Tensor:
    """Cumulative alphas of the augmentation schedule (float64, 1000 steps)."""
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def upscale_inputs(images: Tensor, scale_ratio: float) -> tuple[Tensor, tuple[int, int, int, int]]:
    """SD_4XUpscale_Conditioning's image maths: the IMAGE [B, H, W, C] as -1..1 channels first, resized
    (bilinear, centre crop) to a quarter of the target size, and the empty latent's shape for that target.

    Args:
        images: IMAGE in 0..1.
        scale_ratio: the output size over the input size (the model itself upscales 4x).
    """
    width = max(1, round(images.shape[-2] * scale_ratio))
    height = max(1, round(images.shape[-3] * scale_ratio))
    if width // 4 == 0 or height // 4 == 0:
        raise ValueError(f"SD_4XUpscale_Conditioning: target {width}x{height} is under 4 pixels a side")
    pixels = resize(images[..., :3].movedim(-1, 1).to(torch.float32) * 2.0 - 1.0, width // 4, height // 4,
                    "bilinear", "center")
    return pixels, (images.shape[0], 4, height // 4, width // 4)


def noise_level(noise_augmentation: float) -> int:
    return round(MAX_NOISE_LEVEL * noise_augmentation)


def augment(image: Tensor, level: int, noise: Tensor) -> Tensor:
    """The image noised to `level` on the augmentation schedule: sqrt(a) x + sqrt(1 - a) noise."""
    alpha = float(low_res_alphas_cumprod()[level])
    return alpha**0.5 * image + (1.0 - alpha) ** 0.5 * noise


@dataclass(frozen=True, eq=False)
class X4UpscaleConditioning:
    """The noise augmentation of one conditioning (ComfyUI's `noise_augmentation` cond key); as a RowKwargs it
    noises the stacked low-res image (c_concat) and passes the level as the UNet's class label."""

    noise_augmentation: float

    def unet_kwargs(self, model: Any, x: Tensor, sigma: Tensor, kwargs: dict[str, Any], entries: int) -> dict[str, Any]:
        level = noise_level(self.noise_augmentation)
        out: dict[str, Any] = {"class_labels": torch.full((x.shape[0],), level, dtype=torch.long, device=x.device)}
        image = kwargs.get("c_concat")
        if image is not None and self.noise_augmentation > 0:
            # every entry of the call (cond and uncond alike) gets the same noisy image, as in ComfyUI (one
            # seed per entry) and diffusers (one noisy image for both halves of the CFG batch)
            generator = torch.Generator().manual_seed(AUGMENTATION_SEED)
            rows = image.shape[0] // max(1, entries)
            noise = torch.randn((rows, *image.shape[1:]), generator=generator, dtype=torch.float32).to(image)
            out["c_concat"] = augment(image, level, noise.repeat(image.shape[0] // rows, 1, 1, 1))
        return out
