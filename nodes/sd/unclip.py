"""unCLIP image conditioning (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP
Latents", https://arxiv.org/abs/2204.06125; Stability's SD2.1-unCLIP).

An unCLIP UNet takes a CLIP image embedding besides the text: diffusers' UNet2DConditionModel with
class_embed_type "projection" (LDM's `label_emb`, `adm_in_channels` inputs), fed as `class_labels`. The embedding is
noise-augmented first, so the model can be told how loosely to follow it: normalised by the dataset statistics the
checkpoint carries (`noise_augmentor.data_mean/std`), noised to level t of a 1000-step squared-cosine DDPM
schedule, un-normalised, and concatenated with the sinusoidal embedding of t. The same as diffusers'
StableUnCLIPImg2ImgPipeline.noise_image_embeddings; ComfyUI's unclip_adm picks t = round(999 * noise_augmentation)
and scales the vector by the entry's strength.

unCLIPConditioning appends (image embeds, strength, noise augmentation) to each conditioning entry
(`UnclipImage` records in `CondItem.extras["unclip"]`); the denoiser's conditioning batcher asks `class_labels`
for every entry when the UNet has a class embedding (an entry without any gets zeros, as in ComfyUI). Several
images are summed and, as ComfyUI does, the sum re-augmented at the merge level (0.05). The augmentation noise comes
from a CPU generator with a fixed seed (ComfyUI seeds it from the sampler's seed, which the batcher does not see).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nodes.sd.types import CondItem, Conditioning

MAX_NOISE_LEVEL = 1000
MERGE_NOISE_AUGMENTATION = 0.05
"""ComfyUI's unclip_noise_augment_merge default: how much the sum of several images is noised again."""
NOISE_SEED = 0
STATS_ATTRIBUTE = "nodegraph_unclip_stats"
"""Where a loaded unCLIP UNet keeps its (data_mean, data_std): a plain attribute, outside its state dict."""


@dataclass(frozen=True)
class UnclipImage:
    """One unCLIPConditioning application: a batch of image embeddings and how to use them."""

    image_embeds: Tensor
    """[B, dim] (CLIP_VISION_OUTPUT.image_embeds)."""
    strength: float
    noise_augmentation: float


def append_unclip(conditioning: Conditioning, image_embeds: Tensor, strength: float,
                  noise_augmentation: float) -> Conditioning:
    """unCLIPConditioning: every entry gets the image appended to its unCLIP images (strength 0 changes nothing)."""
    if strength == 0:
        return tuple(conditioning)
    image = UnclipImage(image_embeds.detach().float().cpu(), float(strength), float(noise_augmentation))
    out = []
    for item in conditioning:
        extras = dict(item.extras)
        extras["unclip"] = (*extras.get("unclip", ()), image)
        out.append(replace(item, extras=extras))
    return tuple(out)


def augmentation_alphas_cumprod() -> Tensor:
    """The noise augmentor's schedule: 1000-step squared cosine ("squaredcos_cap_v2", betas capped at 0.999),
    cumulative alphas in float64 (Nichol & Dhariwal 2021, eq. 17)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = MAX_NOISE_LEVEL
    betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                         dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def timestep_embedding(level: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [N, dim] of integer levels: cos half first (diffusers' flip_sin_to_cos, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = level.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(embedding, (0, 1)) if dim % 2 else embedding


def noise_augment(embeds: Tensor, level: int, mean: Tensor, std: Tensor, noise: Tensor, time_dim: int) -> Tensor:
    """[N, dim] embeddings -> [N, dim + time_dim]: normalised, noised to `level`, un-normalised, level embedded."""
    alphas = augmentation_alphas_cumprod()[level]
    scaled = (embeds - mean) / std
    noised = math.sqrt(float(alphas)) * scaled + math.sqrt(1 - float(alphas)) * noise
    levels = torch.full((embeds.shape[0],), level)
    return torch.cat([noised * std + mean, timestep_embedding(levels, time_dim)], dim=1)


def noise_level(augmentation: float) -> int:
    return round((MAX_NOISE_LEVEL - 1) * augmentation)


def attach_stats(unet: torch.nn.Module, mean: Tensor, std: Tensor) -> None:
    """Record an unCLIP checkpoint's embedding statistics on the UNet it loaded (once, at load time)."""
    object.__setattr__(unet, STATS_ATTRIBUTE, (mean.detach().float().cpu().reshape(1, -1),
                                               std.detach().float().cpu().reshape(1, -1)))


def class_labels(item: CondItem, unet: torch.nn.Module) -> Tensor:
    """[1, adm_in_channels]: the unCLIP UNet's class input for one conditioning entry (zeros without images)."""
    width = int(unet.config.projection_class_embeddings_input_dim)
    images: tuple[UnclipImage, ...] = item.extras.get("unclip", ())
    if not images:
        return torch.zeros(1, width)
    dim = int(images[0].image_embeds.shape[-1])
    if dim >= width:
        raise ValueError(f"unCLIP image embeds have {dim} values but the UNet's class input takes {width} in all "
                         f"(embeds plus noise level): this CLIP vision model does not fit this unCLIP model")
    stats = getattr(unet, STATS_ATTRIBUTE, None)
    mean, std = stats if stats is not None else (torch.zeros(1, dim), torch.ones(1, dim))
    generator = torch.Generator().manual_seed(NOISE_SEED)
    parts = []
    for image in images:
        for embeds in image.image_embeds.reshape(-1, dim):
            noise = torch.randn((1, dim), generator=generator.manual_seed(NOISE_SEED))
            augmented = noise_augment(embeds[None], noise_level(image.noise_augmentation), mean, std, noise, width - dim)
            parts.append(augmented * image.strength)
    if len(parts) == 1:
        return parts[0]
    summed = torch.stack(parts).sum(0)
    noise = torch.randn((1, dim), generator=generator.manual_seed(NOISE_SEED))
    return noise_augment(summed[:, :dim], noise_level(MERGE_NOISE_AUGMENTATION), mean, std, noise, width - dim)


def needs_class_labels(unet: torch.nn.Module) -> bool:
    """Whether a UNet takes class labels from unCLIP image embeddings (class_embed_type "projection")."""
    return getattr(getattr(unet, "config", None), "class_embed_type", None) == "projection"
