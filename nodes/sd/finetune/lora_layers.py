"""Trainable LoRA layers on a UNet, without PEFT and without touching the cached module.

Hu et al. 2021 ("LoRA: Low-Rank Adaptation of Large Language Models"): each adapted weight W gets a trainable
update scale * up @ down with `down` [rank, in] and `up` [out, rank], scale = alpha / rank; `up` starts at zero,
so training starts from the base model exactly. A convolution is adapted the same way with `down` a k x k
convolution into `rank` channels and `up` a 1 x 1 convolution out of them (LyCORIS' "LoCon").

The layers live as plain tensors keyed by the UNet's module name; `overrides` turns them into the replacement
weights `loss.unet_with` runs the UNet with. `to_kohya` writes them in kohya-ss's layout (`lora_unet_<module
with underscores>.lora_up.weight` / `.lora_down.weight` / `.alpha`), which nodes/sd/lora.py (LoraLoader) reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

DEFAULT_TARGETS = r"(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|\.(proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2)$"
"""Module names adapted by default: every transformer linear layer (attention, projections, feed-forward)."""
_DOWN, _UP = ".lora_down", ".lora_up"


def target_modules(unet: torch.nn.Module, pattern: str = DEFAULT_TARGETS) -> list[str]:
    """Names of the UNet's Linear / Conv2d modules matching `pattern` (re.search), in module order."""
    found = [name for name, module in unet.named_modules()
             if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and re.search(pattern, name)]
    if not found:
        raise ValueError(f"no Linear or Conv2d module of this UNet matches {pattern!r}")
    return found


def create_lora_layers(unet: torch.nn.Module, rank: int, generator: torch.Generator, *,
                       pattern: str = DEFAULT_TARGETS) -> dict[str, torch.Tensor]:
    """Fresh trainable layers {"<module>.lora_down": [r, in(, k, k)], "<module>.lora_up": [out, r(, 1, 1)]}.

    `down` is drawn like torch's default Linear init (Kaiming-uniform, a = sqrt(5)) from `generator`;
    `up` is zero, so the adapted model starts equal to the base.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    modules = dict(unet.named_modules())
    layers: dict[str, torch.Tensor] = {}
    for name in target_modules(unet, pattern):
        weight = modules[name].weight
        fan_in = weight[0].numel()
        bound = math.sqrt(6.0 / ((1 + 5.0) * fan_in))  # kaiming_uniform_(a=sqrt(5))
        kernel = tuple(weight.shape[2:])
        down = (torch.rand((rank, weight.shape[1], *kernel), generator=generator) * 2 - 1) * bound
        up = torch.zeros((weight.shape[0], rank, *([1] * len(kernel))))
        layers[name + _DOWN] = down.requires_grad_()
        layers[name + _UP] = up.requires_grad_()
    return layers


def lora_modules(layers: Mapping[str, torch.Tensor]) -> list[str]:
    return [key[: -len(_DOWN)] for key in layers if key.endswith(_DOWN)]


def overrides(unet: torch.nn.Module, layers: Mapping[str, torch.Tensor], alpha: float,
              strength: float = 1.0) -> dict[str, torch.Tensor]:
    """The adapted weights {"<module>.weight": W + strength * alpha / rank * up @ down} for `loss.unet_with`."""
    weights = dict(unet.named_parameters())
    out = {}
    for module in lora_modules(layers):
        down, up = layers[module + _DOWN], layers[module + _UP]
        base = weights[module + ".weight"].detach()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(base.shape)
        out[module + ".weight"] = base + (strength * alpha / down.shape[0]) * delta.to(base.dtype)
    return out


def to_kohya(layers: Mapping[str, torch.Tensor], alpha: float,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The layers in kohya-ss's UNet layout (diffusers module names, dots as underscores), `dtype` tensors."""
    out: dict[str, torch.Tensor] = {}
    for module in lora_modules(layers):
        key = "lora_unet_" + module.replace(".", "_")
        out[key + ".lora_down.weight"] = layers[module + _DOWN].detach().to(dtype).contiguous().clone()
        out[key + ".lora_up.weight"] = layers[module + _UP].detach().to(dtype).contiguous().clone()
        out[key + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


def from_lora_file(unet: torch.nn.Module, tensors: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Trainable layers continuing a LoRA file's UNet layers (any layout nodes/sd/lora.py reads).

    Each file layer's scale (its alpha / rank) is folded into `up`, so the layers run at alpha = rank (scale 1,
    how `lora_train` runs them) reproduce the file exactly.

    Raises:
        ValueError: the file holds no low-rank layer this UNet has, or layers of different ranks.
    """
    from nodes.sd.lora import LoraLayer, match_lora, parse_lora

    matched = match_lora(parse_lora(tensors, {}, name), unet, ())
    layers: dict[str, torch.Tensor] = {}
    for weight_name, entries in matched.unet.by_param.items():
        layer = entries[0][0]
        if not isinstance(layer, LoraLayer) or len(entries) != 1:
            continue
        module = weight_name.removesuffix(".weight")
        layers[module + _DOWN] = layer.down.float().clone().requires_grad_()
        layers[module + _UP] = (layer.up.float() * layer.scale).requires_grad_()
    if not layers:
        raise ValueError(f"LoRA {name}: none of its layers fits this model's UNet")
    if len({v.shape[0] for k, v in layers.items() if k.endswith(_DOWN)}) > 1:
        raise ValueError(f"LoRA {name}: its layers have different ranks; continue training needs one rank")
    return layers
