"""Key maps between our modules (diffusers UNet/VAE, transformers CLIP) and the original checkpoint layouts.

One table serves both directions: loading reads each module key from its original key, exporting writes
the original key from the module key. The tables are generated from the module's own key list and config,
so a module of any size (a tiny test model or SDXL) gets an exact, complete map and strict checks can
name every missing or unexpected key.

Original layouts: CompVis/Stability LDM UNet (`input_blocks`/`middle_block`/`output_blocks`) and VAE
(`encoder.down.N.block.M`), OpenAI CLIP as saved by transformers (`text_model.*`), and OpenCLIP
(`transformer.resblocks.N`, fused `attn.in_proj_weight`, `text_projection` stored as x @ P).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

Transform = Literal["same", "transpose", "conv1x1", "qkv"]


@dataclass(frozen=True)
class KeyRule:
    """Module key `target` is stored under original key `source`, possibly transformed.

    `transpose`: OpenCLIP's text_projection is the transpose of a Linear weight. `conv1x1`: LDM's VAE
    attention uses 1x1 convolutions where diffusers uses Linear. `qkv`: OpenCLIP fuses q, k and v into one
    `in_proj` tensor; `part` says which third this key is.
    """

    target: str
    source: str
    transform: Transform = "same"
    part: int = 0


_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _map_by_prefix(keys: Iterable[str], prefixes: Mapping[str, str], renames: Mapping[str, Mapping[str, str]]) -> list[KeyRule]:
    """Rewrite each key's longest known prefix; `renames[prefix]` then renames the first part of the rest."""
    rules: list[KeyRule] = []
    for key in keys:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in prefixes:
                rest = ".".join(parts[cut:])
                for old, new in renames.get(prefix, {}).items():
                    if rest.startswith(old + "."):
                        rest = new + rest[len(old) :]
                        break
                rules.append(KeyRule(key, f"{prefixes[prefix]}.{rest}" if prefixes[prefix] else rest))
                break
        else:
            raise KeyError(f"no original-layout name known for module key {key!r}")
    return rules


def unet_rules(keys: Iterable[str], config: Mapping[str, Any]) -> list[KeyRule]:
    """diffusers UNet2DConditionModel keys -> LDM `model.diffusion_model` keys (without that prefix)."""
    per_level = config["layers_per_block"]
    if not isinstance(per_level, int):
        raise ValueError("only a single layers_per_block value has an LDM layout")
    prefixes: dict[str, str] = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "class_embedding": "label_emb",  # the x4 upscaler's nn.Embedding of the noise level
        "class_embedding.linear_1": "label_emb.0.0",  # unCLIP's image-embedding input (adm_in_channels)
        "class_embedding.linear_2": "label_emb.0.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    resnets = {"mid_block.resnets.0", "mid_block.resnets.1"}
    levels = len(config["down_block_types"])
    for level in range(levels):
        for layer in range(per_level):
            block = 1 + level * (per_level + 1) + layer
            prefixes[f"down_blocks.{level}.resnets.{layer}"] = f"input_blocks.{block}.0"
            prefixes[f"down_blocks.{level}.attentions.{layer}"] = f"input_blocks.{block}.1"
            resnets.add(f"down_blocks.{level}.resnets.{layer}")
        if level < levels - 1:
            prefixes[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{1 + level * (per_level + 1) + per_level}.0.op"
    for level, block_type in enumerate(config["up_block_types"]):
        has_attention = "CrossAttn" in block_type
        for layer in range(per_level + 1):
            block = level * (per_level + 1) + layer
            prefixes[f"up_blocks.{level}.resnets.{layer}"] = f"output_blocks.{block}.0"
            prefixes[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{block}.1"
            resnets.add(f"up_blocks.{level}.resnets.{layer}")
        last = level * (per_level + 1) + per_level
        prefixes[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{last}.{2 if has_attention else 1}.conv"
    return _map_by_prefix(keys, prefixes, {prefix: _UNET_RESNET for prefix in resnets})


def vae_rules(keys: Iterable[str], config: Mapping[str, Any]) -> list[KeyRule]:
    """diffusers AutoencoderKL keys -> LDM `first_stage_model` keys (without that prefix).

    LDM numbers decoder levels from the lowest resolution up (`decoder.up.0` is the last to run), diffusers
    in running order, hence the reversed index. Attention projections are 1x1 convolutions in LDM.
    """
    levels = len(config["up_block_types"])
    prefixes: dict[str, str] = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    attention_prefixes: set[str] = set()
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.conv_in"] = f"{side}.conv_in"
        prefixes[f"{side}.conv_out"] = f"{side}.conv_out"
        prefixes[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        prefixes[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        prefixes[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        prefixes[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
        attention_prefixes.add(f"{side}.mid_block.attentions.0")
    for level in range(len(config["down_block_types"])):
        prefixes[f"encoder.down_blocks.{level}.resnets"] = f"encoder.down.{level}.block"
        prefixes[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
    for level in range(levels):
        prefixes[f"decoder.up_blocks.{level}.resnets"] = f"decoder.up.{levels - 1 - level}.block"
        prefixes[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{levels - 1 - level}.upsample.conv"
    rules = []
    for rule in _map_by_prefix(keys, prefixes, {prefix: _VAE_ATTENTION for prefix in attention_prefixes}):
        source = rule.source.replace(".conv_shortcut.", ".nin_shortcut.")
        is_projection = ".mid.attn_1." in source and source.endswith(".weight") and ".norm." not in source
        rules.append(KeyRule(rule.target, source, "conv1x1" if is_projection else "same"))
    return rules


def clip_rules(keys: Iterable[str], *, text_model_prefix: bool = True) -> list[KeyRule]:
    """transformers CLIPTextModel keys -> the `text_model.*` keys SD checkpoints store for OpenAI CLIP.

    transformers 5 drops `text_model.` from CLIPTextModel's own keys; checkpoints kept it (a few very old
    SD1 files never had it: `text_model_prefix=False`). A projection, when present, sits outside it.
    """
    rules = []
    for key in keys:
        inner = key.removeprefix("text_model.")
        prefixed = text_model_prefix and inner != "text_projection.weight"
        rules.append(KeyRule(key, f"text_model.{inner}" if prefixed else inner))
    return rules


_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": KeyRule("", "token_embedding.weight"),
    "embeddings.position_embedding.weight": KeyRule("", "positional_embedding"),
    "final_layer_norm.weight": KeyRule("", "ln_final.weight"),
    "final_layer_norm.bias": KeyRule("", "ln_final.bias"),
    "text_projection.weight": KeyRule("", "text_projection", "transpose"),
}


def open_clip_rules(keys: Iterable[str]) -> list[KeyRule]:
    """transformers CLIPTextModel(WithProjection) keys -> OpenCLIP text-tower keys."""
    rules = []
    for key in keys:
        inner = key.removeprefix("text_model.")
        if inner in _OPEN_CLIP_FIXED:
            fixed = _OPEN_CLIP_FIXED[inner]
            rules.append(KeyRule(key, fixed.source, fixed.transform))
            continue
        parts = inner.split(".")
        if parts[:2] != ["encoder", "layers"] or len(parts) < 5:
            raise KeyError(f"no OpenCLIP name known for module key {key!r}")
        block, rest = f"transformer.resblocks.{parts[2]}", ".".join(parts[3:])
        projection = parts[4] if parts[3] == "self_attn" else ""
        if projection in ("q_proj", "k_proj", "v_proj"):
            source = f"{block}.attn.in_proj_{parts[5]}"
            rules.append(KeyRule(key, source, "qkv", ("q_proj", "k_proj", "v_proj").index(projection)))
            continue
        for old, new in _OPEN_CLIP_LAYER.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        else:
            raise KeyError(f"no OpenCLIP name known for module key {key!r}")
        rules.append(KeyRule(key, f"{block}.{rest}"))
    return rules


def to_module(rule: KeyRule, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The module's tensor for `rule`, from the original tensor; shape-checked so errors name the key."""
    if rule.transform == "transpose":
        tensor = tensor.t()
    elif rule.transform == "qkv":
        if tensor.shape[0] % 3:
            raise ValueError(f"{rule.source}: fused q/k/v of shape {tuple(tensor.shape)} does not split in three")
        tensor = tensor.chunk(3, dim=0)[rule.part].clone()  # own storage: q, k, v must not alias one tensor
    elif rule.transform == "conv1x1" and tensor.numel() == shape.numel():
        tensor = tensor.reshape(shape)
    if tensor.shape != shape:
        raise ValueError(f"{rule.source}: shape {tuple(tensor.shape)} in the file, the model needs {tuple(shape)} for {rule.target}")
    return tensor.contiguous()


def to_original(rules: Iterable[KeyRule], state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout state dict for a module's state dict (the inverse of `to_module`)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor | None]] = {}
    for rule in rules:
        tensor = state_dict[rule.target]
        if rule.transform == "transpose":
            out[rule.source] = tensor.t().contiguous()
        elif rule.transform == "conv1x1":
            out[rule.source] = tensor.reshape(*tensor.shape, 1, 1).contiguous()
        elif rule.transform == "qkv":
            fused.setdefault(rule.source, [None, None, None])[rule.part] = tensor
        else:
            out[rule.source] = tensor.contiguous()
    for source, parts in fused.items():
        if any(part is None for part in parts):
            raise KeyError(f"{source}: q, k and v are not all present")
        out[source] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
    return out
