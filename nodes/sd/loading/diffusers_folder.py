"""diffusers-format pipeline folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `text_encoder_2/`).

Each component folder carries its own config.json, so nothing is inferred; the configs are read as plain
JSON and modules built from them (never `from_pretrained`, which may try the network). The tokenizer
folder is ignored: we always build CLIP's tokenizer from the bundled vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nodes.sd.loading.build import fill, new_text_encoder, new_unet, new_vae
from nodes.sd.loading.detect import is_ignored
from nodes.sd.loading.files import read_weights

from nodes.sd.loading.keymap import KeyRule, clip_rules
from nodes.sd.loading.single_file import legacy_vae_attention_names
from nodes.sd.loading.x4_upscaler import (
    X4_KIND, X4_PREDICTION, X4_SCALING_FACTOR, X4_SCHEDULE, check_low_res_scheduler, is_x4_folder,
)
from nodes.sd.types import Family, Prediction

_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path.parent.name}/{path.name} is missing") from None


def folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A component folder's tensors: the standard file, a sharded index, or its only weight file."""
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return read_weights(folder / name)[0]
    for index in sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.bin.index.json")):
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(read_json(index)["weight_map"].values())):
            tensors.update(read_weights(folder / shard)[0])
        return tensors
    candidates = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if len(candidates) == 1:  # e.g. only an fp16 variant was downloaded
        return read_weights(candidates[0])[0]
    found = ", ".join(p.name for p in sorted(folder.iterdir())) if folder.is_dir() else "no folder"
    raise FileNotFoundError(f"{folder}: no single weight file to load (found: {found})")


def _identity(module: torch.nn.Module) -> list[KeyRule]:
    return [KeyRule(key, key) for key in module.state_dict()]


def unet_from_folder(folder: Path, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
    unet = new_unet(read_json(folder / "config.json"))
    return fill(unet, _identity(unet), folder_weights(folder), f"UNet ({folder.name}/)", device=device, dtype=dtype)


def vae_from_folder(folder: Path, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
    vae = new_vae(read_json(folder / "config.json"))
    tensors = legacy_vae_attention_names(folder_weights(folder))
    return fill(vae, _identity(vae), tensors, f"VAE ({folder.name}/)", device=device, dtype=dtype)


def text_encoder_from_folder(folder: Path, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """transformers saves CLIPTextModel with or without `text_model.` depending on its version: accept both."""
    config = read_json(folder / "config.json")
    architecture = (config.get("architectures") or ["CLIPTextModel"])[0]
    module = new_text_encoder(config, with_projection=architecture.endswith("WithProjection"))
    tensors = {key: value for key, value in folder_weights(folder).items() if not is_ignored(key)}
    prefixed = any(key.startswith("text_model.") for key in tensors)
    rules = clip_rules(list(module.state_dict()), text_model_prefix=prefixed)
    return fill(module, rules, tensors, f"text encoder ({folder.name}/)", device=device, dtype=dtype)


def _family(root: Path, index: dict[str, Any]) -> Family:
    if (root / "text_encoder_2").is_dir() or "XL" in str(index.get("_class_name", "")):
        return "sdxl"
    text_config = read_json(root / "text_encoder" / "config.json")
    # OpenCLIP (SD2) uses GELU; OpenAI's CLIP-L (SD1) uses QuickGELU.
    return "sd2" if text_config.get("hidden_act") == "gelu" else "sd1"


class DiffusersFolderCheckpoint:
    """A diffusers StableDiffusion(XL)Pipeline folder: family, prediction and schedule read at once from its
    configs; each part built from its own subfolder when asked."""

    def __init__(self, root: Path) -> None:
        self.path = root
        index = read_json(root / "model_index.json")
        self.family: Family = _family(root, index)
        self.text_folders = ["text_encoder", "text_encoder_2"] if self.family == "sdxl" else ["text_encoder"]
        for name in ("unet", "vae", *self.text_folders):
            if not (root / name / "config.json").is_file():
                raise ValueError(f"{root.name}: the pipeline folder has no {name}/config.json")
        scheduler_path = root / "scheduler" / "scheduler_config.json"
        scheduler = read_json(scheduler_path) if scheduler_path.is_file() else {}
        prediction = scheduler.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"{root.name}: unsupported prediction_type {prediction!r}")
        self.prediction: Prediction = prediction
        keys = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")
        self.schedule = {k: scheduler[k] for k in keys if k in scheduler} or None
        self.open_clip = (True,) if self.family == "sd2" else (False, True) if self.family == "sdxl" else (False,)
        self.metadata = {key: json.dumps(value) if not isinstance(value, str) else value for key, value in index.items()}
        self.vae_config = read_json(root / "vae" / "config.json")
        self.kind = X4_KIND if is_x4_folder(index, read_json(root / "unet" / "config.json")) else "sd"
        if self.kind == X4_KIND:  # StableDiffusionUpscalePipeline: its scheduler config holds the x4 schedule
            self.schedule = self.schedule or dict(X4_SCHEDULE)
            self.vae_config.setdefault("scaling_factor", X4_SCALING_FACTOR)  # old folders lack it (diffusers sets it too)
            if "prediction_type" not in scheduler:
                self.prediction = X4_PREDICTION
            low_res = root / "low_res_scheduler" / "scheduler_config.json"
            if low_res.is_file():
                check_low_res_scheduler(read_json(low_res), low_res)

    def build_unet(self, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        return unet_from_folder(self.path / "unet", device=device, dtype=dtype)

    def build_text_encoder(self, index: int, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        return text_encoder_from_folder(self.path / self.text_folders[index], device=device, dtype=dtype)

    def build_vae(self, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        return vae_from_folder(self.path / "vae", device=device, dtype=dtype)
