"""What CheckpointSave, ModelSave, CLIPSave and VAESave write: tensors in the layouts other tools read, plus
metadata.

Layouts follow what ComfyUI writes, so files move between the two unchanged: a checkpoint in the family's
original single-file layout (`model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.` /
`conditioner.embedders.N.`), a UNet-only file with the `model.diffusion_model.` prefix, a VAE in the LDM
layout without prefix, and one file per text encoder in transformers' CLIP layout (`text_model.*`).
Metadata: ComfyUI's (`prompt` and each `extra_pnginfo` entry as JSON; ModelSpec keys for SDXL; the
prediction type), and our `nodegraph_config` (module configs, prediction, schedule), which is what lets a
tiny or unusual model reload exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nodes.sd.loading.configs import METADATA_KEY, alphas_cumprod, family_defaults
from nodes.sd.loading.export import (
    export_config,
    ldm_state_dict,
    plain_config,
    text_encoder_config,
    text_encoder_state_dict,
    unet_state_dict,
    vae_state_dict,
)
from nodes.sd.types import ClipHandle, ModelHandle, VaeHandle

logger = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]

TEXT_ENCODER_NAMES: dict[str, tuple[str, ...]] = {"sd1": ("clip_l",), "sd2": ("clip_h",), "sdxl": ("clip_l", "clip_g")}
"""ComfyUI's names for a family's text encoders, in ClipHandle order (CLIPSave file suffixes, LoRA key parts)."""
_ARCHITECTURES = {"sdxl": "stable-diffusion-xl-v1-base"}
"""ModelSpec architectures ComfyUI writes (it writes none for SD1 / SD2)."""


def run_metadata(prompt: Any, extra: Mapping[str, Any]) -> dict[str, str]:
    """ComfyUI's metadata for saved models: the API prompt and each extra_pnginfo entry, JSON-encoded."""
    metadata = {"prompt": "" if prompt is None else json.dumps(prompt)}
    metadata.update({key: json.dumps(value) for key, value in extra.items()})
    return metadata


def model_spec(model: ModelHandle, title: str) -> dict[str, str]:
    """The ModelSpec entries ComfyUI adds: architecture, spec version, implementation and title for SDXL;
    the prediction type for every model."""
    metadata = {}
    architecture = _ARCHITECTURES.get(model.family)
    if architecture is not None:
        metadata.update({"modelspec.architecture": architecture, "modelspec.sai_model_spec": "1.0.0",
                         "modelspec.implementation": "sgm", "modelspec.title": title})
    metadata["modelspec.predict_key"] = "v" if model.prediction == "v_prediction" else "epsilon"
    return metadata


def _prediction_keys(model: ModelHandle) -> Tensors:
    """ComfyUI's empty marker tensor for v-prediction models."""
    return {"v_pred": torch.zeros(0)} if model.prediction == "v_prediction" else {}


def _schedule(model: ModelHandle) -> dict[str, Any]:
    """The family's training schedule, or the x4 upscaler's (an SD2-family model with its own); a model sampled
    on another one is saved with a warning (the file format records a beta schedule, not the cumulative alphas a
    handle carries)."""
    from nodes.sd.loading.x4_upscaler import X4_SCHEDULE

    for schedule in (dict(family_defaults(model.family)["schedule"]), dict(X4_SCHEDULE)):
        expected = alphas_cumprod(schedule)
        if model.alphas_cumprod.shape == expected.shape and torch.allclose(model.alphas_cumprod.double().cpu(), expected):
            return schedule
    logger.warning("saving a %s model whose noise schedule is not the family's: the file records the "
                   "family's schedule", model.family)
    return dict(family_defaults(model.family)["schedule"])


def checkpoint_tensors(model: ModelHandle, clip: ClipHandle, vae: VaeHandle) -> tuple[Tensors, dict[str, Any]]:
    """(tensors, nodegraph_config) of a single-file checkpoint of all three parts (CheckpointSave)."""
    if clip.family != model.family:
        raise ValueError(f"CheckpointSave: the CLIP is {clip.family} but the MODEL is {model.family}; a checkpoint "
                         f"holds one family's parts")
    unet, encoders, autoencoder = model.unet, clip.encoders, vae.vae
    tensors = ldm_state_dict(model.family, unet, autoencoder, encoders)
    tensors.update(_prediction_keys(model))
    config = export_config(model.family, unet, autoencoder, encoders, prediction=model.prediction,
                           schedule=_schedule(model))
    return tensors, config


def unet_tensors(model: ModelHandle) -> tuple[Tensors, dict[str, Any]]:
    """(tensors, nodegraph_config) of a UNet-only file (ModelSave): `model.diffusion_model.*` keys."""
    unet = model.unet
    tensors = unet_state_dict(unet)
    tensors.update(_prediction_keys(model))
    config = {"family": model.family, "prediction": model.prediction, "schedule": _schedule(model),
              "unet": plain_config(unet.config)}
    return tensors, config


def vae_tensors(vae: VaeHandle) -> tuple[Tensors, dict[str, Any]]:
    """(tensors, nodegraph_config) of a standalone VAE file (VAESave): LDM keys, no prefix."""
    module = vae.vae
    config = plain_config(module.config)
    config["scaling_factor"] = vae.scaling_factor  # the latent scaling this handle decodes with
    if vae.shift_factor:
        config["shift_factor"] = vae.shift_factor
    return vae_state_dict(module), {"vae": config}


def text_encoder_files(clip: ClipHandle) -> list[tuple[str, Tensors, dict[str, Any]]]:
    """(ComfyUI's encoder name, tensors, nodegraph_config) per text encoder (CLIPSave writes one file each)."""
    names = TEXT_ENCODER_NAMES[clip.family]
    files = []
    for index, (name, encoder) in enumerate(zip(names, clip.encoders)):
        open_clip = clip.family == "sdxl" and index == 1 or clip.family == "sd2"
        config = {"family": clip.family, "text_encoder": name, "open_clip": open_clip,
                  "text_encoders": [text_encoder_config(encoder)]}
        files.append((name, text_encoder_state_dict(encoder), config))
    return files


def write_safetensors(path: Path, tensors: Tensors, metadata: Mapping[str, str], config: Mapping[str, Any]) -> None:
    """Write tensors (contiguous, on the CPU) with string metadata plus `nodegraph_config`."""
    all_metadata = {**metadata, METADATA_KEY: json.dumps(config, default=list)}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=all_metadata)
