"""Union ControlNets (xinsir's ControlNet++, "ControlNet++: All-in-one ControlNet"): one ControlNet for several
control kinds, told which kind its hint is by a task embedding, loaded into diffusers' `ControlNetUnionModel`.

Files are in diffusers' key layout with the union's own keys: `task_embedding` [kinds, width], the
`transformer_layes` that mix the hint's mean feature with the task embedding, `spatial_ch_projs`, and
`control_add_embedding` (the one-hot kind vector, sinusoidally embedded, added to the time embedding).
The kind comes from SetUnionControlNetType (ComfyUI's UNION_CONTROLNET_TYPES numbering).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

UNION_CONTROLNET_TYPES: dict[str, int] = {
    "auto": -1, "openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2, "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4, "segment": 5, "tile": 6, "repaint": 7,
}  # fmt: skip
"""ComfyUI 0.3.64's union control types: the SetUnionControlNetType options and each one's task index."""


def is_union(tensors: Mapping[str, Tensor]) -> bool:
    return "task_embedding" in tensors and "control_add_embedding.linear_1.weight" in tensors


def union_config(tensors: Mapping[str, Tensor], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A ControlNetUnionModel config from diffusers-layout union tensors (the encoder read as any ControlNet's).

    The transformer's head count cannot be read from shapes: ControlNet++'s 8 unless metadata says otherwise.
    """
    from nodes.sd.controlnet import config_from_diffusers

    kinds, width = (int(n) for n in tensors["task_embedding"].shape)
    embed_in = int(tensors["control_add_embedding.linear_1.weight"].shape[1])
    if embed_in % kinds:
        raise ValueError(f"union ControlNet: control_add_embedding input {embed_in} is not a multiple of the "
                         f"{kinds} control types of task_embedding")
    layers = {int(m.group(1)) for key in tensors if (m := re.match(r"transformer_layes\.(\d+)\.", key))}
    config = config_from_diffusers(tensors, {})
    config.update(num_control_type=kinds, num_trans_channel=width, num_trans_head=8, num_trans_layer=len(layers),
                  num_proj_channel=int(tensors["spatial_ch_projs.weight"].shape[0]),
                  addition_time_embed_dim=embed_in // kinds)
    config.update(overrides)
    return config


def new_union(config: Mapping[str, Any]) -> torch.nn.Module:
    from diffusers import ControlNetUnionModel

    from nodes.sd.loading.build import empty_module

    return empty_module(lambda: ControlNetUnionModel.from_config(dict(config)))


def union_residuals(
    model: torch.nn.Module, sample: Tensor, timestep: Tensor, hint: Tensor, control_type: tuple[int, ...],
    strength: float, **extra: Any,
) -> tuple[list[Tensor], Tensor]:
    """A union ControlNet's (down, mid) residuals for `hint` read as `control_type` (ComfyUI's numbering).

    With a type, diffusers' ControlNetUnionModel runs as its pipelines call it. With none ("auto"), as ComfyUI:
    an all-zero kind vector and the hint's embedding added to conv_in's output with no task mixing; diffusers'
    forward would drop the hint then, so it is added by a hook on conv_in for this call only.
    """
    if control_type:
        down, mid = model(sample, timestep, controlnet_cond=[hint], conditioning_scale=[strength], return_dict=False,
                          **union_kwargs(model, control_type, sample.shape[0], sample.device), **extra)  # fmt: skip
        return list(down), mid
    guided = model.controlnet_cond_embedding(hint)
    hook = model.conv_in.register_forward_hook(lambda _module, _args, output: output + guided)
    try:
        down, mid = model(sample, timestep, controlnet_cond=[], conditioning_scale=[], return_dict=False,
                          control_type=torch.zeros(sample.shape[0], int(model.config.num_control_type),
                                                   device=sample.device, dtype=sample.dtype),
                          control_type_idx=[], **extra)  # fmt: skip
    finally:
        hook.remove()
    return [d * strength for d in down], mid * strength


def union_kwargs(model: torch.nn.Module, control_type: tuple[int, ...], batch: int, device: Any) -> dict[str, Any]:
    """The union forward's control-kind arguments: a one-hot [batch, kinds] vector and the kind indices."""
    kinds = int(model.config.num_control_type)
    if any(not 0 <= kind < kinds for kind in control_type):
        raise ValueError(f"union ControlNet: control type {list(control_type)} is outside its {kinds} types")
    one_hot = torch.zeros(batch, kinds, device=device)
    one_hot[:, list(control_type)] = 1.0
    return {"control_type": one_hot, "control_type_idx": list(control_type)}
