"""The embedded model's VAE: a small diffusers AutoencoderKL, its loss, and the latent centring folded into it.

The VAE is SD-shaped (4 latent channels, 8x downsampling, GroupNorm 32, mid-block attention) so the
exported file is an ordinary SD1 VAE. Its latents are not centred and their channels have uneven spread
(trials: per-channel std 3.8/3.5/2.4/2.7, mean -0.59), which hurts flat colours at sampling time; rather
than adding a shift the SD1 format cannot store, `fold_latent_statistics` rewrites quant_conv and
post_quant_conv so the encoder itself emits centred latents with SD1's expected spread.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from training.config import SD1_SCALING_FACTOR, VaeSettings


def build_vae(settings: VaeSettings, resolution: int = 128) -> AutoencoderKL:
    """A fresh AutoencoderKL; each level after the first halves the resolution, so 4 levels downsample by 8."""
    levels = len(settings.channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(settings.channels),
        layers_per_block=settings.layers_per_block,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=resolution,
        scaling_factor=SD1_SCALING_FACTOR,
    )


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of [B, C, H, W] images."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def vae_loss(
    vae: AutoencoderKL, images: torch.Tensor, settings: VaeSettings, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE + weighted L1 on image gradients + a small KL term, on images in -1..1.

    The shapes data are flat colours with hard edges: L1/MSE get the colours right and the gradient
    term keeps edges sharp; the KL only keeps the latent scale bounded (as in SD's VAE, weight ~1e-6..1e-4).
    """
    posterior = vae.encode(images).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device)
    latents = posterior.mean + posterior.std * noise
    reconstruction = vae.decode(latents).sample.float()
    images = images.float()
    l1 = (reconstruction - images).abs().mean()
    mse = F.mse_loss(reconstruction, images)
    gradient = sum((a - b).abs().mean() for a, b in zip(image_gradients(reconstruction), image_gradients(images)))
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    loss = l1 + mse + settings.gradient_weight * gradient + settings.kl_weight * kl
    figures = {"l1": l1, "mse": mse, "grad": gradient, "kl": kl}
    return loss, {name: float(value.detach()) for name, value in figures.items()}


@torch.no_grad()
def encode_means(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Posterior means of images in -1..1, batched (what SD encodes for training data; the std is tiny)."""
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        outputs.append(vae.encode(images[start : start + batch_size]).latent_dist.mean)
    return torch.cat(outputs)


def latent_statistics(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over a [N, 4, h, w] set of raw latents."""
    flat = latents.transpose(0, 1).reshape(latents.shape[1], -1).double()
    return flat.mean(dim=1), flat.std(dim=1)


@torch.no_grad()
def fold_latent_statistics(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor,
                           scaling_factor: float = SD1_SCALING_FACTOR) -> torch.Tensor:
    """Make the encoder emit z' = (z - mean) / std / scaling_factor (SD1's 0.18215 unless given), and the decoder
    accept it, in place.

    quant_conv's mean rows are scaled and shifted, its log-variance rows shifted by 2 log(scale), and
    post_quant_conv absorbs the inverse map, so decode(encode(x)) is unchanged and the file stays a plain
    SD1 VAE whose latents, times SD1's 0.18215, have zero mean and unit variance per channel.

    Returns:
        The per-channel scale applied (for the record).
    """
    channels = mean.shape[0]
    scale = (1.0 / (std.double() * scaling_factor)).to(torch.float64)
    mean = mean.double()
    quant, post = vae.quant_conv, vae.post_quant_conv
    weight, bias = quant.weight.double(), quant.bias.double()
    weight[:channels] *= scale.view(-1, 1, 1, 1)
    bias[:channels] = (bias[:channels] - mean) * scale
    bias[channels:] += 2.0 * torch.log(scale)
    quant.weight.copy_(weight)
    quant.bias.copy_(bias)
    post_weight, post_bias = post.weight.double(), post.bias.double()
    post_bias += post_weight[:, :, 0, 0] @ mean
    post_weight /= scale.view(1, -1, 1, 1)
    post.weight.copy_(post_weight)
    post.bias.copy_(post_bias)
    return scale.float()


def reconstruction_l1(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean absolute error in 0..255 of decode(encode-mean(x)) (the figure the trials report)."""
    with torch.no_grad():
        latents = encode_means(vae, images)
        outputs = []
        for start in range(0, latents.shape[0], 32):
            outputs.append(vae.decode(latents[start : start + 32]).sample.clamp(-1, 1))
        reconstruction = torch.cat(outputs)
    return float((reconstruction - images).abs().mean() * 127.5)
