"""Single-file SD1 / SD2 / SDXL checkpoints in their original (CompVis / Stability) layouts."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from nodes.sd.loading.build import check_keys, fill, new_text_encoder, new_unet, new_vae
from nodes.sd.loading.configs import (
    family_defaults,
    nodegraph_config,
    text_config_from_weights,
    unet_config_from_ldm,
    vae_config_from_weights,
)
from nodes.sd.loading.detect import LAYOUTS, UNET_PREFIX, VAE_PREFIX, detect_family, detect_prediction, is_ignored
from nodes.sd.loading.files import PrefixView, WeightFile
from nodes.sd.loading.keymap import KeyRule, clip_rules, open_clip_rules, to_module, unet_rules, vae_rules
from nodes.sd.loading.x4_upscaler import (
    X4_KIND, X4_PREDICTION, X4_SCHEDULE, is_x4_upscaler, x4_unet_config, x4_vae_overrides,
)
from nodes.sd.types import Family

Tensors = dict[str, torch.Tensor]
logger = logging.getLogger(__name__)


def vae_from_original(
    part: Mapping[str, torch.Tensor], family: Family, overrides: Mapping[str, Any], *, device: str, dtype: torch.dtype, what: str = "VAE"
) -> torch.nn.Module:
    """An AutoencoderKL from LDM-layout (`encoder.down.N`) or diffusers-layout VAE tensors."""
    config = vae_config_from_weights(part, family, overrides)
    module = new_vae(config)
    keys = list(module.state_dict())
    if any(key.startswith("encoder.down.") for key in part):
        rules = vae_rules(keys, config)
    else:
        part = legacy_vae_attention_names(dict(part))
        rules = [KeyRule(key, key) for key in keys]
    return fill(module, rules, part, what, device=device, dtype=dtype)


def legacy_vae_attention_names(part: Mapping[str, torch.Tensor]) -> Tensors:
    """diffusers before 0.14 named VAE attention query/key/value/proj_attn; today's names are to_q/.../to_out.0."""
    renames = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for key, value in part.items():
        if ".attentions." in key:
            for old, new in renames.items():
                key = key.replace(old, new)
        out[key] = value
    return out


def _meta_like(weights: WeightFile, key: str) -> torch.Tensor:
    return torch.empty(weights.shape(key), device="meta")


def check_part(module: torch.nn.Module, rules: list[KeyRule], part: Mapping[str, Any], what: str) -> None:
    """Every key present and every shape right, from the file's header alone (meta tensors, no data read),
    so a broken checkpoint fails in its loader node, not in whichever node first uses the part."""
    check_keys({rule.source for rule in rules}, part.keys(), what)
    shapes = {name: tensor.shape for name, tensor in module.state_dict().items()}
    for rule in rules:
        to_module(rule, part[rule.source], shapes[rule.target])


class _Shapes(Mapping[str, torch.Tensor]):
    """A prefix view of a weight file whose values are meta tensors of the stored shapes."""

    def __init__(self, view: PrefixView, weights: WeightFile, prefix: str) -> None:
        self._view, self._weights, self._prefix = view, weights, prefix

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._view:
            raise KeyError(key)
        return _meta_like(self._weights, self._prefix + key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._view)

    def __len__(self) -> int:
        return len(self._view)


def _numel(weights: WeightFile, prefix: str) -> int:
    return sum(math.prod(weights.shape(key)) for key in weights if key.startswith(prefix) and not is_ignored(key))


class SingleFileCheckpoint:
    """An SD1/SD2/SDXL single-file checkpoint, inspected at once and built part by part when asked.

    Opening reads the header (and the one or two tensors prediction detection looks at), works out each
    part's config and checks every part's keys and shapes against its architecture, so a broken file fails
    here. `build(part, ...)` then reads only that part's tensors, converting one at a time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with WeightFile(path) as weights:
            self.metadata = weights.metadata
            self.config = nodegraph_config(self.metadata)
            self.family: Family = detect_family(list(weights))
            self.kind = X4_KIND if self.family == "sd2" and is_x4_upscaler(weights, UNET_PREFIX) else "sd"
            """"sd", or "sd_x4_upscaler" (an SD2-family file with the x4 upscaler's UNet, VAE and schedule)."""
            if self.kind == X4_KIND:  # its schedule and prediction show in no tensor: ComfyUI fixes them too
                self.prediction = self.config.get("prediction", X4_PREDICTION)
                self.schedule = self.config.get("schedule") or X4_SCHEDULE
                self.config = {**self.config, "vae": x4_vae_overrides(self.config.get("vae", {}))}
            else:
                self.prediction = detect_prediction(weights, self.metadata, self.family, self.config)
                self.schedule = self.config.get("schedule")
            self.layout = LAYOUTS[self.family]
            self._text_configs: list[dict[str, Any]] = []
            defaults = family_defaults(self.family)
            overrides = self.config.get("text_encoders") or [{}] * len(self.layout.text_prefixes)
            for index, (prefix, open_clip) in enumerate(zip(self.layout.text_prefixes, self.layout.open_clip)):
                part = self._text_part(weights, index)
                if open_clip:
                    config = text_config_from_weights(part, defaults["text_encoders"][index], overrides[index], open_clip=True)
                else:
                    inner = {key.removeprefix("text_model."): value for key, value in part.items()}
                    config = text_config_from_weights(inner, defaults["text_encoders"][index], overrides[index], open_clip=False)
                self._text_configs.append(config)
                module, rules = self._text_skeleton(index, part)
                check_part(module, rules, part, self._text_what(index))
            pooled_dim = int(self._text_configs[-1]["projection_dim"]) if self.family == "sdxl" else None
            unet_part = _Shapes(PrefixView(weights, UNET_PREFIX, is_ignored), weights, UNET_PREFIX)
            if self.kind == X4_KIND:
                self.unet_config = x4_unet_config(unet_part, self.config.get("unet", {}))
            else:
                self.unet_config = unet_config_from_ldm(unet_part, self.family, self.config.get("unet", {}), pooled_dim)
            unet = new_unet(self.unet_config)
            check_part(unet, unet_rules(list(unet.state_dict()), self.unet_config), unet_part, "UNet")
            vae_part = _Shapes(PrefixView(weights, VAE_PREFIX, is_ignored), weights, VAE_PREFIX)
            self.vae_config = vae_config_from_weights(vae_part, self.family, self.config.get("vae", {}))
            self._vae_ldm = any(key.startswith("encoder.down.") for key in vae_part)
            vae = new_vae(self.vae_config)
            if self._vae_ldm:
                check_part(vae, vae_rules(list(vae.state_dict()), self.vae_config), vae_part, "VAE")
            self._numel = {"unet": _numel(weights, UNET_PREFIX), "vae": _numel(weights, VAE_PREFIX)}
            for index, prefix in enumerate(self.layout.text_prefixes):
                self._numel[f"text_encoder_{index}"] = _numel(weights, prefix)
            claimed = (UNET_PREFIX, VAE_PREFIX, *self.layout.text_prefixes)
            leftover = sorted(key for key in weights if not key.startswith(claimed) and not is_ignored(key))
        if leftover:  # they cannot change what we build, so they do not make the file unusable; say so
            more = f" (+{len(leftover) - 5} more)" if len(leftover) > 5 else ""
            logger.warning("%s: ignoring keys outside the UNet, VAE and text encoders: %s%s", path.name,
                           ", ".join(leftover[:5]), more)

    def nbytes(self, part: str, dtype: torch.dtype) -> int:
        """What one part ("unet", "vae", "text_encoder_0", ...) will take in memory in `dtype`."""
        return self._numel[part] * dtype.itemsize

    def _text_what(self, index: int) -> str:
        return f"text encoder {index + 1} ({self.layout.text_prefixes[index]}*)"

    def _text_part(self, weights: Mapping[str, torch.Tensor], index: int) -> dict[str, Any]:
        prefix = self.layout.text_prefixes[index]
        meta = isinstance(weights, WeightFile)
        part = {key[len(prefix):]: (_meta_like(weights, key) if meta else weights[key])  # type: ignore[arg-type]
                for key in weights if key.startswith(prefix) and not is_ignored(key)}
        if not (self.family == "sdxl" and index == 1):
            part.pop("text_projection", None)  # SD2 stores OpenCLIP's projection but never uses it
        return part

    def _text_skeleton(self, index: int, part: Mapping[str, Any]) -> tuple[torch.nn.Module, list[KeyRule]]:
        module = new_text_encoder(self._text_configs[index], with_projection=self.family == "sdxl" and index == 1)
        keys = list(module.state_dict())
        if self.layout.open_clip[index]:
            return module, open_clip_rules(keys)
        return module, clip_rules(keys, text_model_prefix=any(key.startswith("text_model.") for key in part))

    def build_unet(self, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        unet = new_unet(self.unet_config)
        with WeightFile(self.path) as weights:
            part = PrefixView(weights, UNET_PREFIX, is_ignored)
            unet = fill(unet, unet_rules(list(unet.state_dict()), self.unet_config), part, "UNet", device=device, dtype=dtype)
            if "noise_augmentor.data_mean" in weights:  # unCLIP: the image embeddings' statistics
                from nodes.sd.unclip import attach_stats

                attach_stats(unet, weights["noise_augmentor.data_mean"], weights["noise_augmentor.data_std"])
            return unet

    def build_text_encoder(self, index: int, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        with WeightFile(self.path) as weights:
            part = {key[len(self.layout.text_prefixes[index]):]: weights[key] for key in weights
                    if key.startswith(self.layout.text_prefixes[index]) and not is_ignored(key)}
            if not (self.family == "sdxl" and index == 1):
                part.pop("text_projection", None)
            module, rules = self._text_skeleton(index, part)
            return fill(module, rules, part, self._text_what(index), device=device, dtype=dtype)

    def build_vae(self, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        with WeightFile(self.path) as weights:
            part = PrefixView(weights, VAE_PREFIX, is_ignored)
            return vae_from_original(part, self.family, self.config.get("vae", {}), device=device, dtype=dtype)
