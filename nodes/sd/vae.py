"""VAE encode/decode between IMAGE tensors ([B, H, W, C], 0..1) and the latents the UNet sees.

Latents are stored scaled: z = (mean - shift_factor) * scaling_factor, so samplers work at unit-ish
variance. Encoding takes the posterior mean, not a sample: the node cache assumes a node's output depends
only on its inputs, and SD's posterior standard deviation is tiny anyway. Work runs on the VAE's device
in its dtype, in batches (a 1024 px decode needs gigabytes), and results come back float32 on the CPU.
"""

from __future__ import annotations

import torch

from nodes.sd.types import VaeHandle


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


@torch.no_grad()
def decode(vae: VaeHandle, latent_samples: torch.Tensor, *, batch_size: int = 4) -> torch.Tensor:
    """Latents [B, C, h, w] (scaled, as the UNet sees them) -> IMAGE [B, h*8, w*8, 3] in 0..1, float32 on CPU.

    Args:
        vae: the VAE handle; its scaling and shift undo the latent scaling.
        latent_samples: a batch of latents.
        batch_size: how many latents to decode at once (bounds memory).
    """
    if latent_samples.dim() != 4:
        raise ValueError(f"latents must be [B, C, H, W], got shape {tuple(latent_samples.shape)}")
    device, dtype = _place(vae)
    images = []
    for chunk in latent_samples.split(batch_size):
        z = chunk.to(device=device, dtype=dtype) / vae.scaling_factor + vae.shift_factor
        pixels = vae.vae.decode(z).sample
        images.append(((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu())
    return torch.cat(images)


@torch.no_grad()
def encode(vae: VaeHandle, image: torch.Tensor, *, batch_size: int = 4) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> scaled latents [B, 4, H/8, W/8], float32 on CPU.

    Args:
        vae: the VAE handle.
        image: a batch of images; an alpha channel is dropped, sides not a multiple of 8 are centre-cropped.
        batch_size: how many images to encode at once (bounds memory).
    """
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"IMAGE must be [B, H, W, 3 or 4], got shape {tuple(image.shape)}")
    device, dtype = _place(vae)
    image = _crop_to_multiple(image[..., :3], downscale_factor(vae))
    latents = []
    for chunk in image.split(batch_size):
        pixels = chunk.to(device=device, dtype=dtype).permute(0, 3, 1, 2) * 2.0 - 1.0
        mean = vae.vae.encode(pixels).latent_dist.mean
        latents.append(((mean.float() - vae.shift_factor) * vae.scaling_factor).cpu())
    return torch.cat(latents)
