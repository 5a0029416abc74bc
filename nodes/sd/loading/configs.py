"""Module configs: the shipped family templates, corrected by what a state dict's shapes reveal.

Shapes tell channel counts, depths, vocabulary and projection sizes, so tiny test models and odd
fine-tunes build correctly from the same templates as SD1.5, SD2.1 and SDXL. Attention head counts leave
no trace in shapes: they come from the file's `nodegraph_config` metadata when our own exporter wrote
it, else from the family's rule (SD1: 8 heads; SD2/SDXL/CLIP: heads of 64 channels).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from nodes.sd.types import Family

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
METADATA_KEY = "nodegraph_config"
StateDict = Mapping[str, torch.Tensor]


@lru_cache(maxsize=None)
def _read_json(name: str) -> str:
    return (CONFIG_DIR / name).read_text(encoding="utf-8")


def template(name: str) -> dict[str, Any]:
    """A fresh copy of a shipped config (callers may edit it)."""
    return json.loads(_read_json(name))


def family_defaults(family: Family) -> dict[str, Any]:
    """The family's template names, schedule, prediction, VAE scaling source and default CLIP layer."""
    families = template("families.json")
    if family not in families:
        raise ValueError(f"unknown model family {family!r}")
    return families[family]


def nodegraph_config(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The `nodegraph_config` JSON our exporter stores in safetensors metadata ({} when absent)."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"safetensors metadata {METADATA_KEY!r} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"safetensors metadata {METADATA_KEY!r} must be a JSON object")
    return value


def _indices(state_dict: StateDict, prefix: str) -> list[int]:
    """Sorted integers N of keys `prefix.N.*` (how many blocks a layout stores)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for key in state_dict if (m := pattern.match(key))})


def _require(state_dict: StateDict, key: str, what: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"{what}: expected key {key!r} is missing")
    return state_dict[key]


def _heads(channels: list[int], family: Family, current: Any, template_channels: list[int], what: str) -> Any:
    """Attention heads per level when no metadata names them (SD1 fixes 8, later models fix 64 channels a head)."""
    if channels == template_channels:
        return current
    if family == "sd1":
        head_count = current if isinstance(current, int) else 8
        if all(c % head_count == 0 for c in channels):
            return head_count
    elif all(c % 64 == 0 for c in channels):
        return [c // 64 for c in channels]
    raise ValueError(
        f"{what}: cannot tell attention heads for channels {channels}; store them in the file's "
        f"{METADATA_KEY!r} metadata"
    )


def unet_config_from_ldm(
    state_dict: StateDict, family: Family, overrides: Mapping[str, Any], pooled_dim: int | None = None
) -> dict[str, Any]:
    """A UNet2DConditionModel config for LDM UNet weights (keys without `model.diffusion_model.`).

    Args:
        state_dict: the UNet's original-layout tensors.
        family: picks the template and the head rule.
        overrides: config values from metadata; they win over the template, shapes win over both.
        pooled_dim: SDXL's pooled text size, which together with `label_emb` gives the time-id embedding size.
    """
    config = template(family_defaults(family)["unet"])
    template_channels = list(config["block_out_channels"])
    config.update(overrides)
    conv_in = _require(state_dict, "input_blocks.0.0.weight", "UNet")
    config["in_channels"] = int(conv_in.shape[1])
    config["out_channels"] = int(_require(state_dict, "out.2.weight", "UNet").shape[0])

    levels: list[list[tuple[int, int]]] = [[]]  # per level: (channels, transformer depth) of each layer
    for block in _indices(state_dict, "input_blocks")[1:]:
        if f"input_blocks.{block}.0.op.weight" in state_dict:
            levels.append([])
            continue
        channels = int(_require(state_dict, f"input_blocks.{block}.0.out_layers.3.weight", "UNet").shape[0])
        depth = len(_indices(state_dict, f"input_blocks.{block}.1.transformer_blocks"))
        levels[-1].append((channels, depth))
    per_level = {len(level) for level in levels}
    if len(per_level) != 1 or 0 in per_level:
        raise ValueError(f"UNet: levels hold different numbers of blocks {sorted(per_level)}; not an SD layout")
    channels = [level[0][0] for level in levels]
    depths = [level[0][1] for level in levels]
    config["layers_per_block"] = per_level.pop()
    config["block_out_channels"] = channels
    config["down_block_types"] = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths]
    config["up_block_types"] = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)]
    config["transformer_layers_per_block"] = [max(d, 1) for d in depths]
    attention = next((k for k in state_dict if k.endswith("transformer_blocks.0.attn2.to_k.weight")), None)
    if attention is None:
        raise ValueError("UNet: no cross-attention layers found")
    config["cross_attention_dim"] = int(state_dict[attention].shape[1])
    proj_in = attention.replace("transformer_blocks.0.attn2.to_k.weight", "proj_in.weight")
    config["use_linear_projection"] = state_dict[proj_in].dim() == 2
    time_embed_dim = int(_require(state_dict, "time_embed.0.weight", "UNet").shape[0])
    config["time_embedding_dim"] = None if time_embed_dim == 4 * channels[0] else time_embed_dim
    if "label_emb.0.0.weight" in state_dict and family != "sdxl":  # SD2.1-unCLIP: image embeds + noise level
        config["class_embed_type"] = "projection"
        config["projection_class_embeddings_input_dim"] = int(state_dict["label_emb.0.0.weight"].shape[1])
        for key in ("addition_embed_type", "addition_time_embed_dim"):
            config.pop(key, None)
    elif "label_emb.0.0.weight" in state_dict:
        if pooled_dim is None:
            raise ValueError("UNet has SDXL's label_emb but no pooled text size was given")
        added = int(state_dict["label_emb.0.0.weight"].shape[1])
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = added
        config["addition_time_embed_dim"] = (added - pooled_dim) // 6
    else:
        for key in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            config.pop(key, None)
    if "attention_head_dim" not in overrides:
        config["attention_head_dim"] = _heads(channels, family, config["attention_head_dim"], template_channels, "UNet")
    return config


def vae_config_from_weights(state_dict: StateDict, family: Family, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """An AutoencoderKL config for VAE weights in either the LDM or the diffusers key layout."""
    config = template(family_defaults(family)["vae"])
    config.update(overrides)
    ldm = any(key.startswith("encoder.down.") for key in state_dict)
    down, block = ("encoder.down", "block") if ldm else ("encoder.down_blocks", "resnets")
    levels = _indices(state_dict, down)
    if not levels:
        raise ValueError("VAE: no encoder blocks found")
    config["block_out_channels"] = [
        int(_require(state_dict, f"{down}.{level}.{block}.0.conv2.weight", "VAE").shape[0]) for level in levels
    ]
    config["layers_per_block"] = len(_indices(state_dict, f"{down}.0.{block}"))
    config["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    config["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    config["in_channels"] = int(_require(state_dict, "encoder.conv_in.weight", "VAE").shape[1])
    config["out_channels"] = int(_require(state_dict, "decoder.conv_out.weight", "VAE").shape[0])
    config["latent_channels"] = int(_require(state_dict, "decoder.conv_in.weight", "VAE").shape[1])
    attention = "encoder.mid.attn_1.q.weight" if ldm else "encoder.mid_block.attentions.0.to_q.weight"
    config["mid_block_add_attention"] = attention in state_dict
    return config


def text_config_from_weights(
    state_dict: StateDict, template_name: str, overrides: Mapping[str, Any], *, open_clip: bool
) -> dict[str, Any]:
    """A CLIPTextConfig dict for text-encoder weights (OpenAI CLIP `text_model.*`-less keys, or OpenCLIP keys)."""
    config = template(template_name)
    template_hidden = config["hidden_size"]
    config.update(overrides)
    if open_clip:
        tokens = _require(state_dict, "token_embedding.weight", "OpenCLIP text encoder")
        positions = _require(state_dict, "positional_embedding", "OpenCLIP text encoder")
        layers = _indices(state_dict, "transformer.resblocks")
        fc1 = _require(state_dict, "transformer.resblocks.0.mlp.c_fc.weight", "OpenCLIP text encoder")
        projection = state_dict.get("text_projection")
        projection_dim = None if projection is None else int(projection.shape[1])
    else:
        tokens = _require(state_dict, "embeddings.token_embedding.weight", "CLIP text encoder")
        positions = _require(state_dict, "embeddings.position_embedding.weight", "CLIP text encoder")
        layers = _indices(state_dict, "encoder.layers")
        fc1 = _require(state_dict, "encoder.layers.0.mlp.fc1.weight", "CLIP text encoder")
        projection = state_dict.get("text_projection.weight")
        projection_dim = None if projection is None else int(projection.shape[0])
    config["vocab_size"], config["hidden_size"] = (int(n) for n in tokens.shape)
    config["max_position_embeddings"] = int(positions.shape[0])
    config["num_hidden_layers"] = len(layers)
    config["intermediate_size"] = int(fc1.shape[0])
    if projection_dim is not None:
        config["projection_dim"] = projection_dim
    hidden = config["hidden_size"]
    if "num_attention_heads" not in overrides and hidden != template_hidden:
        if hidden % 64:
            raise ValueError(
                f"text encoder: cannot tell attention heads for hidden size {hidden}; store them in the "
                f"file's {METADATA_KEY!r} metadata"
            )
        config["num_attention_heads"] = hidden // 64
    return config


def alphas_cumprod(schedule: Mapping[str, Any]) -> torch.Tensor:
    """Cumulative alphas (float64) of a DDPM beta schedule; SD trained with scaled_linear 0.00085..0.012."""
    steps = int(schedule.get("num_train_timesteps", 1000))
    start, end = float(schedule.get("beta_start", 0.00085)), float(schedule.get("beta_end", 0.012))
    kind = schedule.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r} (scaled_linear or linear)")
    return torch.cumprod(1.0 - betas, dim=0)
