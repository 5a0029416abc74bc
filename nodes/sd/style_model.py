"""Style models: T2I-Adapter's style adapter (Mou et al. 2023, "T2I-Adapter", https://arxiv.org/abs/2302.08453,
section 3.3), which turns a CLIP vision tower's tokens into extra text tokens appended to the conditioning.

The adapter appends `num_token` learned query tokens to the image's tokens, runs a few CLIP-style transformer
blocks (pre-norm, fused-projection multi-head attention, quick-GELU MLP) over them all, and keeps the query tokens,
normalised and projected to the UNet's cross-attention width. Files keep the original layout
(t2iadapter_style_sd14v1, coadapter-style): `style_embedding` [1, tokens, width], `ln_pre`, `ln_post`,
`proj` [width, context], `transformer_layes.N.{attn.in_proj_*, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}`
(the "layes" spelling is the original's). The head count is not in the shapes: 8 (the original's), or the file's
`nodegraph_config` metadata.

StyleModelApply's strength either scales the tokens ("multiply") or biases the attention every image position pays
them by log(strength) ("attn_bias", ComfyUI's Redux option): in SD's cross-attention that is a per-key additive
bias, passed to the UNet as a float `encoder_attention_mask` m, which diffusers turns into the bias (1 - m) * -10000,
so m = 1 + log(strength) / 10000 gives exactly log(strength).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nodegraph.models import ModelManager, ModelRef, resolve
from nodes.sd.loading.files import file_signature, read_raw
from nodes.sd.types import CondItem, Conditioning

METADATA_KEY = "nodegraph_config"
MASK_SCALE = 10000.0
"""diffusers' UNet turns an encoder_attention_mask m into the attention bias (1 - m) * -MASK_SCALE."""


class QuickGELU(nn.Module):
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """A pre-norm transformer block in CLIP's layout (sequence-first input, as nn.MultiheadAttention's default)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


@dataclass(frozen=True)
class StyleAdapterConfig:
    width: int = 1024
    context_dim: int = 768
    heads: int = 8
    layers: int = 3
    tokens: int = 8
    """t2iadapter_style_sd14v1's values (as ComfyUI builds it)."""


class StyleAdapter(nn.Module):
    """CLIP vision tokens [B, N, width] -> style tokens [B, tokens, context_dim]."""

    def __init__(self, config: StyleAdapterConfig) -> None:
        super().__init__()
        self.config = config
        scale = config.width**-0.5
        self.transformer_layes = nn.Sequential(*[ResidualAttentionBlock(config.width, config.heads)
                                                 for _ in range(config.layers)])
        self.style_embedding = nn.Parameter(torch.randn(1, config.tokens, config.width) * scale)
        self.ln_post = nn.LayerNorm(config.width)
        self.ln_pre = nn.LayerNorm(config.width)
        self.proj = nn.Parameter(scale * torch.randn(config.width, config.context_dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.config.width:
            raise ValueError(f"style model expects CLIP vision tokens of width {self.config.width}, got {x.shape[-1]}")
        queries = self.style_embedding.expand(x.shape[0], -1, -1).to(x.dtype)
        h = self.ln_pre(torch.cat([x, queries], dim=1)).permute(1, 0, 2)
        h = self.transformer_layes(h).permute(1, 0, 2)
        return self.ln_post(h[:, -self.config.tokens :]) @ self.proj


@dataclass(frozen=True)
class StyleModelHandle:
    """STYLE_MODEL: the manager's ref to a StyleAdapter. Shared: never mutate the module."""

    model_ref: ModelRef | nn.Module
    source: str = ""

    @property
    def model(self) -> nn.Module:
        return resolve(self.model_ref)


def style_config(tensors: Mapping[str, Tensor], overrides: Mapping[str, Any] | None = None) -> StyleAdapterConfig:
    """The adapter's sizes from its tensors (heads from `overrides`, else 8)."""
    embedding, proj = tensors["style_embedding"], tensors["proj"]
    layers = 1 + max((int(k.split(".")[1]) for k in tensors if k.startswith("transformer_layes.")), default=-1)
    config = StyleAdapterConfig(width=int(embedding.shape[-1]), context_dim=int(proj.shape[1]), layers=layers,
                                tokens=int(embedding.shape[1]))
    return replace(config, **dict(overrides or {}))


def build_style_model(tensors: Mapping[str, Tensor], what: str, overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """A StyleAdapter holding a file's weights.

    Raises:
        ValueError: not a style adapter (no `style_embedding`), or weights that do not fit one.
    """
    if "style_embedding" not in tensors or "proj" not in tensors:
        shown = ", ".join(sorted(tensors)[:5]) or "none"
        raise ValueError(f"{what}: not a T2I-Adapter style model (no style_embedding/proj); found keys e.g. {shown}")
    config = style_config(tensors, overrides)
    if config.width % config.heads:
        raise ValueError(f"{what}: width {config.width} is not divisible by {config.heads} heads")
    with torch.device("meta"):
        model = StyleAdapter(config)
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{what}: the weights do not fit a style adapter {config}: {error}") from error
    model.requires_grad_(False)
    return model.eval()


def load_style_model(path: str | Path, *, manager: ModelManager) -> StyleModelHandle:
    """StyleModelLoader: a handle whose adapter the model manager loads."""
    path = Path(path)
    what = f"style model {path.name}"

    def load(device: str) -> nn.Module:
        tensors, metadata = read_raw(path)
        if not isinstance(tensors, dict):
            raise ValueError(f"{what}: expected a dict of tensors, found {type(tensors).__name__}")
        raw = (metadata or {}).get(METADATA_KEY)
        overrides = json.loads(raw).get("style_model", {}) if raw else {}
        return build_style_model({k: v for k, v in tensors.items() if isinstance(v, Tensor)}, what,
                                 overrides).to(device)

    ref = manager.ref((file_signature(path), "style_model"), load, name=f"{path.name} style model")
    ref.get()  # fail in the loader, not in a later node
    return StyleModelHandle(model_ref=ref, source=str(path))


@dataclass(frozen=True)
class AttentionBias:
    """A CondItem extra (key "attention_bias"): an additive cross-attention bias per token of the entry's embeds,
    given to the UNet as diffusers' float encoder_attention_mask (see the module docstring)."""

    bias: Tensor
    """[tokens] float: 0 for ordinary tokens, log(strength) for style tokens."""

    def unet_kwargs(self, model: Any, x: Tensor, sigma: Tensor, kwargs: dict[str, Any], entries: int
                    ) -> dict[str, Any]:
        """cond_batch.RowKwargs: the mask for every row of the UNet call."""
        mask = (1.0 + self.bias.double() / MASK_SCALE).float()
        return {"encoder_attention_mask": mask.to(x.device).expand(x.shape[0], -1)}


@torch.no_grad()
def style_tokens(model: nn.Module, last_hidden_state: Tensor) -> Tensor:
    """The adapter's tokens for a batch of images, flattened into one sequence [1, B * tokens, context]
    (ComfyUI concatenates a batch's tokens into one conditioning)."""
    parameter = next(model.parameters())
    tokens = model(last_hidden_state.to(parameter.device, parameter.dtype)).float().cpu()
    return tokens.flatten(0, 1).unsqueeze(0)


def apply_style(conditioning: Conditioning, tokens: Tensor, strength: float, strength_type: str) -> Conditioning:
    """StyleModelApply: append the style tokens to every entry's embeddings.

    "multiply" scales the tokens by `strength`. "attn_bias" leaves them and biases attention to them by
    log(strength) (strength 0 hides them: a bias of -inf); an entry that already carries a bias keeps it for its
    earlier tokens and gets 0 added for none.
    """
    if strength_type not in ("multiply", "attn_bias"):
        raise ValueError(f"StyleModelApply: unknown strength_type {strength_type!r} (multiply or attn_bias)")
    if strength_type == "multiply":
        tokens = tokens * strength
    out = []
    for item in conditioning:
        if tokens.shape[-1] != item.embeds.shape[-1]:
            raise ValueError(f"StyleModelApply: style tokens have width {tokens.shape[-1]} but the conditioning "
                             f"has {item.embeds.shape[-1]}: the style model does not fit this text encoder")
        extras = dict(item.extras)
        previous = extras.get("attention_bias")
        if previous is not None or (strength_type == "attn_bias" and strength != 1.0):
            old = previous.bias if previous is not None else torch.zeros(item.embeds.shape[1])
            value = math.log(strength) if strength_type == "attn_bias" and strength > 0 else (
                0.0 if strength_type == "multiply" else -math.inf)
            extras["attention_bias"] = AttentionBias(torch.cat([old, torch.full((tokens.shape[1],), value)]))
        embeds = torch.cat([item.embeds, tokens.to(item.embeds.dtype)], dim=1)
        out.append(replace(item, embeds=embeds, extras=extras))
    return tuple(out)
