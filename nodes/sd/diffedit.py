"""DiffEdit's mask (Couairon et al. 2022, "DiffEdit: Diffusion-based semantic image editing with mask guidance",
arXiv 2210.11427, section 3.1): where an edit should happen, from how the noise predictions under the source and the
target prompt disagree.

The image latent is noised to the level of `strength` (the sigma at index steps - int(steps * strength) of the
sampling schedule) with `num_maps` independent noise draws; each draw's noise prediction under the target prompt
(CFG against the negative) and under the source prompt (CFG against its own negative) differ, and
|eps_target - eps_source| averaged over draws and latent channels is the map. As in diffusers'
StableDiffusionDiffEditPipeline.generate_mask, the map is clamped at `threshold_ratio` times its mean, divided by
that clamp and binarised at 0.5 (the paper normalises to [0, 1] and thresholds; diffusers' clamp makes the threshold
a multiple of the mean difference). The mask is returned at image resolution (each latent pixel an 8 x 8 block),
1 where the edit goes, so SetLatentNoiseMask (or any MASK node) takes it as it is.

The second half of DiffEdit, inpainting from the inverted latent, is ordinary masked sampling here: DDIMInversion's
NOISE output with SamplerCustomAdvanced over the source latent carrying this mask (see nodes/sd/inversion.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, patches_applied, unet_denoiser
from nodes.sd.ksampler import in_use, sampling_sigmas
from nodes.sd.types import CondItem, ModelHandle


def mask_sigma(model: ModelHandle, scheduler: str, steps: int, strength: float) -> float:
    """The noise level diffusers' generate_mask encodes at: the schedule's sigma after steps - int(steps * strength)
    steps (its get_timesteps), e.g. the middle of a 10-step schedule at strength 0.5."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"DiffEdit strength must be in (0, 1], got {strength}")
    sigmas = sampling_sigmas(model.alphas_cumprod, scheduler, "euler", steps, 1.0)
    start = max(steps - min(int(steps * strength), steps), 0)
    if start >= steps:
        raise ValueError(f"DiffEdit strength {strength} with {steps} steps noises nothing; raise either")
    return float(sigmas[start])


def mask_noise(shape: torch.Size, seed: int, num_maps: int) -> Tensor:
    """[B * num_maps, C, h, w] standard normal draws from one CPU generator (image-major, as diffusers repeats
    each image `num_maps` times)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((shape[0] * num_maps, *shape[1:]), generator=generator, dtype=torch.float32)


def guided_eps(model: ModelHandle, denoiser_sets: Sequence[tuple[Sequence[CondItem], Sequence[CondItem]]], cfg: float,
               x: Tensor, sigma: float) -> list[Tensor]:
    """Noise predictions eps = (x - D(x, sigma)) / sigma under each (positive, negative) pair with CFG, using the
    model's patches for this call as a sampling run would."""
    unet = unet_denoiser(model)
    out = []
    s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    for positive, negative in denoiser_sets:
        guided = CFGDenoiser(unet, tuple(positive), tuple(negative), cfg)
        with patches_applied(model.patches, unet_denoiser=unet, cfg_denoiser=guided):
            out.append((x - guided(x, s)) / sigma)
    return out


def difference_map(eps_source: Tensor, eps_target: Tensor, batch: int, num_maps: int) -> Tensor:
    """|eps_target - eps_source| averaged over the draws of each image and over channels: [B, h, w]."""
    diff = (eps_target - eps_source).abs()
    return diff.reshape(batch, num_maps, *diff.shape[1:]).mean(dim=(1, 2))


def binarise(guidance_map: Tensor, threshold_ratio: float) -> Tensor:
    """diffusers' rule: clamp at mean * ratio (mean over the whole batch), divide by it, 1 where > 0.5."""
    if threshold_ratio <= 0:
        raise ValueError(f"DiffEdit threshold_ratio must be > 0, got {threshold_ratio}")
    clamp = guidance_map.mean() * threshold_ratio
    scaled = guidance_map.clamp(0, float(clamp)) / clamp
    return (scaled > 0.5).to(torch.float32)


@torch.no_grad()
def diffedit_mask(model: ModelHandle, latent: Tensor, source: tuple[Sequence[CondItem], Sequence[CondItem]],
                  target: tuple[Sequence[CondItem], Sequence[CondItem]], *, cfg: float, scheduler: str, steps: int,
                  strength: float, num_maps: int, threshold_ratio: float, seed: int,
                  image_scale: int = 8) -> tuple[Tensor, Tensor]:
    """DiffEdit's mask for a batch of image latents.

    Args:
        model: the MODEL (its patches apply).
        latent: [B, 4, h, w] image latents (UNet units).
        source: (positive, negative) conditioning describing the image as it is.
        target: (positive, negative) conditioning describing the edit.
        cfg: guidance scale of both predictions (diffusers' guidance_scale, 7.5 by default).
        scheduler, steps, strength: where the latent is noised (`mask_sigma`).
        num_maps: noise draws averaged (diffusers' num_maps_per_mask).
        threshold_ratio: diffusers' mask_thresholding_ratio.
        seed: seeds the draws.
        image_scale: pixels per latent pixel of the returned mask.

    Returns:
        (mask [B, h * scale, w * scale] of 0/1, the continuous map [B, h, w] before binarising).
    """
    if num_maps < 1:
        raise ValueError(f"DiffEdit num_maps must be >= 1, got {num_maps}")
    sigma = mask_sigma(model, scheduler, steps, strength)
    device = torch.device(model.device)
    samples = latent.detach().to(torch.float32)
    noise = mask_noise(samples.shape, seed, num_maps)
    x = (samples.repeat_interleave(num_maps, dim=0) + noise * sigma).to(device)
    with in_use(model.unet_ref):
        eps_source, eps_target = guided_eps(model, [source, target], cfg, x, sigma)
    guidance_map = difference_map(eps_source, eps_target, samples.shape[0], num_maps).float().cpu()
    mask = binarise(guidance_map, threshold_ratio)
    mask = F.interpolate(mask[:, None], scale_factor=image_scale, mode="nearest")[:, 0]
    return mask, guidance_map

