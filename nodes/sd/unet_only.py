"""A diffusion model alone (UNETLoader): SD1 / SD2 / SDXL UNet files in the original LDM or the diffusers key
layout, optionally stored in 8-bit floating point.

A UNet-only file has no text encoder to tell its family by, so the UNet's own structure does: SDXL's has the
`label_emb` added embedding (pooled text plus size/crop ids), SD2's attention blocks use linear projections
(`proj_in` a Linear), SD1's use 1x1 convolutions. Our own `nodegraph_config` metadata, when present, says it
outright. A diffusers-layout file (`down_blocks.*`) is renamed to the LDM layout through the same key map the
checkpoint loader uses (nodes/sd/loading/keymap.py), its block structure read from its keys, so both layouts
share one config reader and one strict builder.

fp8 storage (ComfyUI's weight_dtype fp8_e4m3fn / fp8_e5m2): the weights of every Linear and Conv2d are kept in
8-bit floats (a quarter of fp32's memory) and each layer casts its weight up to the input's dtype when it
runs, so the arithmetic is the compute dtype's. Norms, embeddings and biases stay in the compute dtype.
ComfyUI's fp8_e4m3fn_fast multiplies in fp8 on GPUs with fp8 tensor cores; here it stores e4m3fn and computes
upcast like fp8_e4m3fn (the same numbers, without that speed-up).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nodes.sd.loading.build import check_keys, fill, new_unet
from nodes.sd.loading.configs import family_defaults, nodegraph_config, unet_config_from_ldm
from nodes.sd.loading.detect import UNET_PREFIX, detect_prediction, is_ignored
from nodes.sd.loading.files import WeightFile
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.loading.x4_upscaler import X4_KIND, X4_PREDICTION, X4_SCHEDULE, is_x4_upscaler, x4_unet_config
from nodes.sd.types import Family, Prediction

WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None),
    "fp8_e4m3fn_fast": getattr(torch, "float8_e4m3fn", None),
    "fp8_e5m2": getattr(torch, "float8_e5m2", None),
}
"""UNETLoader's weight_dtype choices (ComfyUI's) and the storage dtype each gives (None: the compute dtype)."""
SDXL_TIME_EMBED_DIM = 256
"""SDXL's per-id Fourier embedding size: with six size/crop ids it fixes the pooled text width (2816 - 1536)."""


def storage_dtype(weight_dtype: str) -> torch.dtype | None:
    """The storage dtype of a weight_dtype choice, refusing one this torch cannot cast to.

    Raises:
        ValueError: an unknown choice, or an fp8 one this torch build lacks (named with the torch version).
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown weight_dtype {weight_dtype!r}; expected one of {', '.join(WEIGHT_DTYPES)}")
    dtype = WEIGHT_DTYPES[weight_dtype]
    if weight_dtype != "default":
        try:
            torch.ones(2).to(dtype).to(torch.float32)
        except (TypeError, RuntimeError) as error:
            raise ValueError(f"weight_dtype {weight_dtype}: torch {torch.__version__} cannot store 8-bit floats "
                             f"here ({error}); choose 'default'") from error
    return dtype


class _UpcastLinear(torch.nn.Linear):
    """A Linear whose (fp8) weight is cast to the input's dtype for each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class _UpcastConv2d(torch.nn.Conv2d):
    """A Conv2d whose (fp8) weight is cast to the input's dtype for each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)


def store_weights_as(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Keep every Linear and Conv2d weight of a freshly built module in `dtype`, cast up per layer at run time.

    The module's keys and shapes are unchanged (a LoRA or an exporter sees the same names); only those layers'
    classes become upcasting subclasses. Call it only on a module nothing else holds yet.
    """
    for layer in module.modules():
        if type(layer) is torch.nn.Linear:
            layer.__class__ = _UpcastLinear
        elif type(layer) is torch.nn.Conv2d:
            layer.__class__ = _UpcastConv2d
        else:
            continue
        layer.weight = torch.nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    return module


def _strip_prefix(keys: list[str]) -> str:
    """The prefix a UNet's keys carry in this file: LDM checkpoints' `model.diffusion_model.`, or none."""
    return UNET_PREFIX if any(key.startswith(UNET_PREFIX) for key in keys) else ""


def diffusers_skeleton(keys: list[str]) -> dict[str, Any]:
    """The block structure of diffusers UNet keys: what `unet_rules` needs to name their LDM counterparts."""

    def count(pattern: str) -> list[int]:
        return sorted({int(m.group(1)) for key in keys if (m := re.match(pattern, key))})

    levels = count(r"down_blocks\.(\d+)\.")
    if not levels:
        raise ValueError("UNet: no down_blocks.* keys; not a diffusers-layout UNet")
    per_level = len(count(r"down_blocks\.0\.resnets\.(\d+)\."))
    down = ["CrossAttnDownBlock2D" if any(k.startswith(f"down_blocks.{level}.attentions.") for k in keys)
            else "DownBlock2D" for level in levels]
    up = ["CrossAttnUpBlock2D" if any(k.startswith(f"up_blocks.{level}.attentions.") for k in keys) else "UpBlock2D"
          for level in count(r"up_blocks\.(\d+)\.")]
    return {"down_block_types": down, "up_block_types": up, "layers_per_block": per_level}


class _LdmView(Mapping[str, torch.Tensor]):
    """A UNet file's tensors under LDM names (prefix removed, diffusers names renamed), read on demand;
    `meta=True` gives meta tensors of the stored shapes (for configs and checks, no data read)."""

    def __init__(self, weights: WeightFile, names: dict[str, str], meta: bool) -> None:
        self._weights, self._names, self._meta = weights, names, meta

    def __getitem__(self, key: str) -> torch.Tensor:
        stored = self._names[key]
        if self._meta:
            return torch.empty(self._weights.shape(stored), device="meta")
        return self._weights[stored]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _ldm_names(keys: list[str]) -> tuple[dict[str, str], str]:
    """LDM key -> stored key for every UNet tensor of a file, and the layout found ("ldm" or "diffusers")."""
    prefix = _strip_prefix(keys)
    own = [key for key in keys if key.startswith(prefix) and not is_ignored(key)]
    inner = [key[len(prefix):] for key in own]
    if any(key.startswith("input_blocks.") for key in inner):
        return {key: prefix + key for key in inner}, "ldm"
    if any(key.startswith("down_blocks.") for key in inner):
        rules = unet_rules(inner, diffusers_skeleton(inner))
        return {rule.source: prefix + rule.target for rule in rules}, "diffusers"
    shown = ", ".join(sorted(keys)[:5]) or "none"
    raise ValueError(f"not a UNet file: neither LDM (input_blocks.*) nor diffusers (down_blocks.*) keys "
                     f"(found e.g. {shown})")


def family_from_structure(ldm: Mapping[str, torch.Tensor]) -> Family:
    """SDXL by its added embedding, SD2 by its linear attention projections, else SD1."""
    if "label_emb.0.0.weight" in ldm:
        return "sdxl"
    proj_in = next((key for key in ldm if key.endswith(".proj_in.weight")), None)
    if proj_in is None:
        raise ValueError("UNet: no attention blocks (proj_in) found; not an SD1/SD2/SDXL UNet")
    return "sd2" if ldm[proj_in].dim() == 2 else "sd1"


class UnetFile:
    """A UNet-only file, inspected from its header: family, prediction and config; `build` reads the weights."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with WeightFile(path) as weights:
            self.metadata = weights.metadata
            config = nodegraph_config(self.metadata)
            self.names, self.layout = _ldm_names(list(weights))
            shapes = _LdmView(weights, self.names, meta=True)
            self.family: Family = config.get("family") or family_from_structure(shapes)
            if self.family not in ("sd1", "sd2", "sdxl"):
                raise ValueError(f"{path.name}: nodegraph_config family {self.family!r} is not sd1, sd2 or sdxl")
            overrides = dict(config.get("unet", {}))
            self.kind = X4_KIND if self.family == "sd2" and is_x4_upscaler(shapes) else "sd"
            if self.kind == X4_KIND:  # the x4 upscaler's UNet (nodes/sd/loading/x4_upscaler.py)
                self.config = x4_unet_config(shapes, overrides)
            else:
                self.config = unet_config_from_ldm(shapes, self.family, overrides, self._pooled_dim(shapes, overrides))
            rules = unet_rules(list(new_unet(self.config).state_dict()), self.config)
            check_keys({rule.source for rule in rules}, self.names, f"UNet ({path.name})")
            tells = ("input_blocks.0.0.weight", "output_blocks.11.1.transformer_blocks.0.norm1.bias")
            probe = {UNET_PREFIX + key: weights[self.names[key]] for key in tells if key in self.names}
            probe.update({key: weights[key] for key in ("v_pred",) if key in weights})
            if self.kind == X4_KIND:  # its schedule and prediction show in no tensor
                self.prediction: Prediction = config.get("prediction", X4_PREDICTION)
                self.schedule = config.get("schedule") or dict(X4_SCHEDULE)
            else:
                self.prediction = detect_prediction(probe, self.metadata, self.family, config)
                self.schedule = config.get("schedule") or family_defaults(self.family)["schedule"]

    def _pooled_dim(self, shapes: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> int | None:
        if "label_emb.0.0.weight" not in shapes:
            return None
        added = int(shapes["label_emb.0.0.weight"].shape[1])
        pooled = added - 6 * int(overrides.get("addition_time_embed_dim", SDXL_TIME_EMBED_DIM))
        if pooled <= 0:
            raise ValueError(f"{self.path.name}: SDXL added embedding of {added} inputs leaves no room for pooled "
                             f"text; store addition_time_embed_dim in the file's nodegraph_config metadata")
        return pooled

    def nbytes(self, dtype: torch.dtype, weight_dtype: str = "default") -> int:
        """What the built UNet will hold: matrices and kernels (every tensor of 2+ dimensions: SD UNets have no
        embedding tables) in the storage dtype, the rest in `dtype`."""
        storage = storage_dtype(weight_dtype) or dtype
        with WeightFile(self.path) as weights:
            total = 0
            for stored in self.names.values():
                shape = weights.shape(stored)
                total += math.prod(shape) * (storage if len(shape) >= 2 else dtype).itemsize
            return total

    def build(self, *, device: str, dtype: torch.dtype, weight_dtype: str = "default") -> torch.nn.Module:
        """The UNet2DConditionModel in `dtype` on `device`, its Linear/Conv2d weights stored as weight_dtype says."""
        storage = storage_dtype(weight_dtype)
        unet = new_unet(self.config)
        with WeightFile(self.path) as weights:
            view = _LdmView(weights, self.names, meta=False)
            unet = fill(unet, unet_rules(list(unet.state_dict()), self.config), view, f"UNet ({self.path.name})",
                        device=device, dtype=dtype)
        return unet if storage is None else store_weights_as(unet, storage)
