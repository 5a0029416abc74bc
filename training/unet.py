"""The embedded model's denoiser: a small SD1-shaped UNet, a small CLIP text encoder, and the diffusion loss.

The text encoder uses CLIP's real 49,408-token vocabulary (so any prompt tokenizes as in SD1) but only
the few dozen tokens our captions use are ever trained. During training the token table is a compact
`CompactTokenEmbedding` over those rows (a dense 49,408-row table would cost an Adam update of 3 M
parameters every step for nothing); the exported encoder gets the full table with every other row zero,
so unknown words contribute nothing and the file compresses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from nodes.sd.tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID, MAX_LENGTH, VOCAB_SIZE
from training.config import SD_SCHEDULE, UnetSettings


def build_unet(settings: UnetSettings, latent_size: int) -> UNet2DConditionModel:
    """An SD1-layout UNet: one level per channel count, cross-attention where `settings.cross_attention` says."""
    if len(settings.channels) != len(settings.cross_attention):
        raise ValueError("unet channels and cross_attention need one entry per level")
    if not any(settings.cross_attention):
        raise ValueError("the UNet needs cross-attention in at least one level to follow the prompt")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in settings.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(settings.cross_attention))
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(settings.channels),
        layers_per_block=settings.layers_per_block,
        cross_attention_dim=settings.text_hidden,
        attention_head_dim=settings.heads,  # diffusers' SD1 naming: this is the number of heads
        norm_num_groups=32,
    )


class CompactTokenEmbedding(torch.nn.Module):
    """A token table holding only the rows of `token_ids`; every other id embeds to zero.

    Args:
        token_ids: the vocabulary ids that get trainable rows.
        dim: embedding width.
        vocab_size: the full vocabulary (ids at or above it are an error, as in nn.Embedding).
    """

    def __init__(self, token_ids: Sequence[int], dim: int, vocab_size: int = VOCAB_SIZE) -> None:
        super().__init__()
        ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        lookup = torch.full((vocab_size,), len(ids), dtype=torch.long)
        lookup[ids] = torch.arange(len(ids))
        self.register_buffer("token_ids", ids)
        self.register_buffer("lookup", lookup)
        self.weight = torch.nn.Parameter(torch.randn(len(ids), dim) * 0.02)  # CLIP's initializer range

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.weight, self.weight.new_zeros(1, self.weight.shape[1])])
        return F.embedding(self.lookup[input_ids], table)

    def full_table(self) -> torch.Tensor:
        """The [vocab_size, dim] table this module stands for (zero outside `token_ids`)."""
        table = self.weight.new_zeros(self.lookup.shape[0], self.weight.shape[1])
        table[self.token_ids] = self.weight.detach()
        return table


def text_config(settings: UnetSettings) -> CLIPTextConfig:
    """CLIP-L's text architecture, shrunk: same vocabulary, 77 positions, quick-GELU, causal attention."""
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=settings.text_hidden,
        intermediate_size=settings.text_intermediate,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=settings.text_heads,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=settings.text_hidden,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
    )


def build_text_encoder(settings: UnetSettings, token_ids: Iterable[int]) -> CLIPTextModel:
    """A CLIPTextModel whose token table is compact over `token_ids` (plus bos/eos, always used)."""
    model = CLIPTextModel(text_config(settings))
    ids = sorted({*token_ids, BOS_TOKEN_ID, EOS_TOKEN_ID})
    _embeddings(model).token_embedding = CompactTokenEmbedding(ids, settings.text_hidden)
    return model


def _embeddings(model: CLIPTextModel) -> torch.nn.Module:
    """The embeddings module (transformers 5 flattened CLIPTextModel; 4.x nests it under `text_model`)."""
    return getattr(model, "text_model", model).embeddings


def exportable_text_encoder(model: CLIPTextModel) -> CLIPTextModel:
    """A copy with an ordinary nn.Embedding over the full vocabulary, zero outside the trained rows."""
    compact = _embeddings(model).token_embedding
    out = copy.deepcopy(model)
    if isinstance(compact, CompactTokenEmbedding):
        table = compact.full_table()
        embedding = torch.nn.Embedding(table.shape[0], table.shape[1], device=table.device, dtype=table.dtype)
        with torch.no_grad():
            embedding.weight.copy_(table)
        _embeddings(out).token_embedding = embedding
    return out


def alphas_cumprod() -> torch.Tensor:
    """SD's scaled_linear schedule (beta 0.00085..0.012, 1000 steps) as cumulative alphas, float64."""
    start, end, steps = SD_SCHEDULE["beta_start"], SD_SCHEDULE["beta_end"], SD_SCHEDULE["num_train_timesteps"]
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def diffusion_loss(
    unet: UNet2DConditionModel,
    text_states: torch.Tensor,
    latents: torch.Tensor,
    settings: UnetSettings,
    generator: torch.Generator,
    alphas: torch.Tensor,
    residuals: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]] | None = None,
) -> torch.Tensor:
    """Epsilon-prediction loss with offset noise and min-SNR-gamma weighting.

    `residuals(noisy, timesteps)`, when given, returns extra UNet keyword arguments (a ControlNet's
    `down_block_additional_residuals` and `mid_block_additional_residual`).

    Offset noise (a per-image, per-channel constant added to the noise) lets the model learn to change an
    image's mean colour, which plain noise at SD's non-zero terminal SNR hides. Min-SNR weighting
    (weight min(SNR, gamma) / SNR for epsilon) stops the nearly-clean timesteps from dominating.
    """
    batch = latents.shape[0]
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator)
    noise += settings.offset_noise * torch.randn((batch, latents.shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(0, alphas.shape[0], (batch,), generator=generator)
    alpha_bar = alphas[timesteps].float()
    noise, alpha_bar, timesteps = noise.to(device), alpha_bar.to(device), timesteps.to(device)
    noisy = alpha_bar.sqrt().view(-1, 1, 1, 1) * latents + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * noise
    extra = residuals(noisy, timesteps) if residuals is not None else {}
    prediction = unet(noisy, timesteps, encoder_hidden_states=text_states, **extra).sample.float()
    snr = alpha_bar / (1 - alpha_bar)
    weight = torch.clamp(snr, max=settings.min_snr_gamma) / snr
    per_item = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
    return (weight * per_item).mean()
