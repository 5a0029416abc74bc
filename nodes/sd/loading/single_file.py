"""Single-file SD1 / SD2 / SDXL checkpoints in their original (CompVis / Stability) layouts."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nodes.sd.loading.build import fill, new_text_encoder, new_unet, new_vae
from nodes.sd.loading.configs import (
    family_defaults,
    nodegraph_config,
    text_config_from_weights,
    unet_config_from_ldm,
    vae_config_from_weights,
)
from nodes.sd.loading.detect import LAYOUTS, UNET_PREFIX, VAE_PREFIX, detect_family, detect_prediction, is_ignored
from nodes.sd.loading.files import read_weights
from nodes.sd.loading.handles import LoadedCheckpoint, assemble
from nodes.sd.loading.keymap import KeyRule, clip_rules, open_clip_rules, unet_rules, vae_rules
from nodes.sd.types import Family

Tensors = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


def _take(tensors: Tensors, prefix: str, claimed: set[str]) -> Tensors:
    """The component under `prefix` (prefix removed), minus keys no module needs; marks them claimed."""
    part = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            claimed.add(key)
            if not is_ignored(key):
                part[key[len(prefix) :]] = value
    return part


def text_encoder_from_original(
    part: Tensors,
    template_name: str,
    overrides: Mapping[str, Any],
    *,
    open_clip: bool,
    with_projection: bool,
    what: str,
    device: str,
    dtype: torch.dtype,
) -> torch.nn.Module:
    """A CLIP text encoder from OpenAI-CLIP (`text_model.*`) or OpenCLIP (`transformer.resblocks.*`) tensors."""
    if not with_projection:
        part.pop("text_projection", None)  # SD2 stores OpenCLIP's projection but never uses it
    if open_clip:
        config = text_config_from_weights(part, template_name, overrides, open_clip=True)
    else:
        inner = {key.removeprefix("text_model."): value for key, value in part.items()}
        config = text_config_from_weights(inner, template_name, overrides, open_clip=False)
    module = new_text_encoder(config, with_projection=with_projection)
    keys = list(module.state_dict())
    if open_clip:
        rules = open_clip_rules(keys)
    else:
        rules = clip_rules(keys, text_model_prefix=any(key.startswith("text_model.") for key in part))
    return fill(module, rules, part, what, device=device, dtype=dtype)


def vae_from_original(
    part: Tensors, family: Family, overrides: Mapping[str, Any], *, device: str, dtype: torch.dtype, what: str = "VAE"
) -> torch.nn.Module:
    """An AutoencoderKL from LDM-layout (`encoder.down.N`) or diffusers-layout VAE tensors."""
    config = vae_config_from_weights(part, family, overrides)
    module = new_vae(config)
    keys = list(module.state_dict())
    if any(key.startswith("encoder.down.") for key in part):
        rules = vae_rules(keys, config)
    else:
        part = legacy_vae_attention_names(part)
        rules = [KeyRule(key, key) for key in keys]
    return fill(module, rules, part, what, device=device, dtype=dtype)


def legacy_vae_attention_names(part: Tensors) -> Tensors:
    """diffusers before 0.14 named VAE attention query/key/value/proj_attn; today's names are to_q/.../to_out.0."""
    renames = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for key, value in part.items():
        if ".attentions." in key:
            for old, new in renames.items():
                key = key.replace(old, new)
        out[key] = value
    return out


def load_single_file(path: Path, *, device: str, dtype: torch.dtype) -> LoadedCheckpoint:
    """Load an SD1/SD2/SDXL single-file checkpoint.

    Each component's keys must match its module exactly; keys outside every component are logged.
    """
    tensors, metadata = read_weights(path)
    config = nodegraph_config(metadata)
    family = detect_family(list(tensors))
    layout = LAYOUTS[family]
    defaults = family_defaults(family)
    claimed: set[str] = set()
    text_overrides = config.get("text_encoders") or [{}] * len(layout.text_prefixes)
    encoders = []
    for index, (prefix, open_clip) in enumerate(zip(layout.text_prefixes, layout.open_clip)):
        encoders.append(
            text_encoder_from_original(
                _take(tensors, prefix, claimed),
                defaults["text_encoders"][index],
                text_overrides[index],
                open_clip=open_clip,
                with_projection=family == "sdxl" and index == 1,
                what=f"text encoder {index + 1} ({prefix}*)",
                device=device,
                dtype=dtype,
            )
        )
    pooled_dim = int(encoders[-1].config.projection_dim) if family == "sdxl" else None
    unet_part = _take(tensors, UNET_PREFIX, claimed)
    unet_config = unet_config_from_ldm(unet_part, family, config.get("unet", {}), pooled_dim)
    unet = new_unet(unet_config)
    unet = fill(unet, unet_rules(list(unet.state_dict()), unet_config), unet_part, "UNet", device=device, dtype=dtype)
    vae_part = _take(tensors, VAE_PREFIX, claimed)
    vae = vae_from_original(vae_part, family, config.get("vae", {}), device=device, dtype=dtype)
    leftover = sorted(key for key in tensors if key not in claimed and not is_ignored(key))
    if leftover:  # they cannot change what we built, so they do not make the file unusable; say so
        more = f" (+{len(leftover) - 5} more)" if len(leftover) > 5 else ""
        logger.warning("%s: ignoring keys outside the UNet, VAE and text encoders: %s%s", path.name, ", ".join(leftover[:5]), more)
    return assemble(
        family=family,
        prediction=detect_prediction(tensors, metadata, family, config),
        schedule=config.get("schedule"),
        unet=unet,
        vae=vae,
        encoders=encoders,
        open_clip=layout.open_clip,
        device=device,
        dtype=dtype,
        source=str(path),
        metadata=metadata,
        clip_layer_idx=config.get("clip_layer_idx"),
    )
