"""Writing our modules back as single-file checkpoints in the original SD layouts.

A model trained or merged here should open in ComfyUI, A1111 and in this loader alike, so we write the
CompVis/Stability layout those tools read, and record what shapes cannot tell (attention heads,
prediction type, schedule) as JSON in the safetensors metadata under `nodegraph_config`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nodes.sd.loading.configs import METADATA_KEY, family_defaults
from nodes.sd.loading.detect import LAYOUTS, UNET_PREFIX, VAE_PREFIX
from nodes.sd.loading.keymap import KeyRule, clip_rules, open_clip_rules, to_original, unet_rules, vae_rules
from nodes.sd.types import Family, Prediction

_TEXT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "layer_norm_eps", "projection_dim",
    "bos_token_id", "eos_token_id", "pad_token_id",
)  # fmt: skip


def _prefixed(prefix: str, rules: list[KeyRule], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {key: value.detach().to("cpu") for key, value in module.state_dict().items()}
    return {prefix + key: value for key, value in to_original(rules, state).items()}


def ldm_state_dict(family: Family, unet: torch.nn.Module, vae: torch.nn.Module, encoders: Sequence[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The original-layout tensors of a UNet, VAE and the family's text encoder(s), on the CPU."""
    layout = LAYOUTS[family]
    if len(encoders) != len(layout.text_prefixes):
        raise ValueError(f"{family} needs {len(layout.text_prefixes)} text encoder(s), got {len(encoders)}")
    out = _prefixed(UNET_PREFIX, unet_rules(list(unet.state_dict()), unet.config), unet)
    out.update(_prefixed(VAE_PREFIX, vae_rules(list(vae.state_dict()), vae.config), vae))
    for prefix, open_clip, encoder in zip(layout.text_prefixes, layout.open_clip, encoders):
        keys = list(encoder.state_dict())
        out.update(_prefixed(prefix, open_clip_rules(keys) if open_clip else clip_rules(keys), encoder))
    return out


def unet_state_dict(unet: torch.nn.Module, prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """A UNet's tensors in the LDM layout (`input_blocks...`) under `prefix` (ModelSave / UNet-only files)."""
    return _prefixed(prefix, unet_rules(list(unet.state_dict()), unet.config), unet)


def vae_state_dict(vae: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A VAE's tensors in the LDM layout (`encoder.down.N...`), as standalone VAE files store them."""
    return _prefixed(prefix, vae_rules(list(vae.state_dict()), vae.config), vae)


def text_encoder_state_dict(encoder: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A text encoder's tensors in transformers' CLIP layout (`text_model.*`, `text_projection.weight`): the
    layout standalone text-encoder files use, OpenCLIP towers included (ComfyUI's CLIPSave writes this too)."""
    return _prefixed(prefix, clip_rules(list(encoder.state_dict())), encoder)


def text_encoder_config(encoder: torch.nn.Module) -> dict[str, Any]:
    """What shapes cannot tell about a text encoder (heads, activation, token ids), for `nodegraph_config`."""
    return {k: getattr(encoder.config, k) for k in _TEXT_CONFIG_KEYS}


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as JSON-ready values, without the library's private `_` keys."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, default=list))


def export_config(
    family: Family,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    encoders: Sequence[torch.nn.Module],
    *,
    prediction: Prediction = "epsilon",
    schedule: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `nodegraph_config` our loader reads back: full module configs plus prediction and schedule."""
    return {
        "family": family,
        "prediction": prediction,
        "schedule": dict(schedule or family_defaults(family)["schedule"]),
        "unet": plain_config(unet.config),
        "vae": plain_config(vae.config),
        "text_encoders": [text_encoder_config(e) for e in encoders],
    }


def save_checkpoint(
    path: str | Path,
    *,
    family: Family,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    encoders: Sequence[torch.nn.Module],
    prediction: Prediction = "epsilon",
    schedule: Mapping[str, Any] | None = None,
    config_metadata: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a single-file `.safetensors` checkpoint in the family's original layout.

    Args:
        path: where to write; must end in `.safetensors`.
        family: "sd1", "sd2" or "sdxl" (encoders in ClipHandle order).
        unet, vae, encoders: diffusers / transformers modules.
        prediction: recorded in metadata; v-prediction also writes ComfyUI's empty `v_pred` marker key.
        schedule: the training beta schedule, when not the family's.
        config_metadata: extra entries merged into `nodegraph_config` (e.g. training details).
        metadata: extra plain string metadata (e.g. ModelSpec keys).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: checkpoints are written as .safetensors")
    tensors = ldm_state_dict(family, unet, vae, encoders)
    if prediction == "v_prediction":
        tensors["v_pred"] = torch.zeros(0)
    config = export_config(family, unet, vae, encoders, prediction=prediction, schedule=schedule)
    config.update(config_metadata or {})
    all_metadata = {**(metadata or {}), METADATA_KEY: json.dumps(config)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=all_metadata)
    return path


def save_sd1_checkpoint(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    path: str | Path,
    config_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write an SD1-layout single file (what a model trained here is saved as).

    `config_metadata` may set "prediction" and "schedule" as well as any extra entries.
    """
    extra = dict(config_metadata or {})
    prediction = extra.pop("prediction", "epsilon")
    schedule = extra.pop("schedule", None)
    return save_checkpoint(
        path,
        family="sd1",
        unet=unet,
        vae=vae,
        encoders=[text_encoder],
        prediction=prediction,
        schedule=schedule,
        config_metadata=extra,
    )


def save_controlnet_ldm(
    controlnet: torch.nn.Module,
    path: str | Path,
    *,
    prefix: str = "control_model.",
    record_config: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a diffusers ControlNetModel in the original ControlNet layout (`control_model.input_blocks...`,
    `input_hint_block`, `zero_convs`, `middle_block_out`), as ComfyUI and A1111 read it.

    `record_config` stores what shapes cannot tell (attention heads, SDXL's time-id width) under
    `nodegraph_config`; `metadata` adds other string entries.
    """
    from nodes.sd.controlnet import controlnet_rules  # controlnet imports the loader: no cycle at import time

    state = {key: value.detach().cpu().contiguous() for key, value in controlnet.state_dict().items()}
    tensors = to_original(controlnet_rules(list(state), controlnet.config), state)
    all_metadata = dict(metadata or {})
    if record_config:
        keep = ("attention_head_dim", "addition_time_embed_dim")
        all_metadata[METADATA_KEY] = json.dumps({"controlnet": {k: controlnet.config[k] for k in keep}}, default=list)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + key: value for key, value in tensors.items()}, str(path), metadata=all_metadata or None)
    return path
