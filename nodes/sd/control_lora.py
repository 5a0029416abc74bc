"""Control-LoRA (Stability AI's control-lora files, ComfyUI's ControlLora): a ControlNet stored as low-rank deltas
over the UNet it is used with.

The file holds the ControlNet's own layers in full (hint encoder `input_hint_block`, `zero_convs`,
`middle_block_out`) plus the encoder copy's small tensors (biases, norms), and for each large weight of that
copy a pair `<layer>.up` [out, rank] / `<layer>.down` [rank, in, ...]: the layer's weight is the sampling
model's own weight plus up @ down (reshaped). A `lora_controlnet` tensor marks the format. Keys are in the
original ControlNet layout without the `control_model.` prefix.

So the ControlNet exists only once a model is known: it is built at sampling time from that model's UNet
(`ControlNetModel.from_unet`, then every file tensor or delta applied through the ControlNet key map) and
kept for the run by the denoiser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

MARKER = "lora_controlnet"


def is_control_lora(tensors: Mapping[str, Tensor]) -> bool:
    return MARKER in tensors


@dataclass(frozen=True, eq=False)
class ControlLoraWeights:
    """A control-lora file's tensors (marker removed), as the model manager keeps them."""

    tensors: Mapping[str, Tensor]

    @property
    def hint_channels(self) -> list[int]:
        """The hint encoder's conv widths (diffusers' conditioning_embedding_out_channels)."""
        convs = sorted({int(key.split(".")[1]) for key in self.tensors if key.startswith("input_hint_block.")})
        widths = [convs[0]] + convs[2:-1:2]
        return [int(self.tensors[f"input_hint_block.{i}.weight"].shape[0]) for i in widths]


def control_lora_weights(tensors: Mapping[str, Tensor]) -> ControlLoraWeights:
    if "input_hint_block.0.weight" not in tensors:
        raise ValueError("control-lora: no input_hint_block.0.weight; not a control-lora file we know")
    return ControlLoraWeights({key: value for key, value in tensors.items() if key != MARKER})


def build_control_lora(weights: ControlLoraWeights, unet: torch.nn.Module, *, device: Any = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The ControlNet a control-lora file makes with `unet`: its encoder weights, each plus its up @ down delta,
    and the file's full tensors in place of the UNet's.

    Raises:
        ValueError: a file tensor or delta that fits no layer of this UNet's ControlNet (the wrong base model).
    """
    from diffusers import ControlNetModel

    from nodes.sd.controlnet import controlnet_rules

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(weights.hint_channels))
    state = controlnet.state_dict()
    rules = controlnet_rules(list(state), controlnet.config)
    used: set[str] = set()
    new_state: dict[str, Tensor] = {}
    for rule in rules:
        target, shape = rule.target, state[rule.target].shape
        if rule.source in weights.tensors:
            value = weights.tensors[rule.source]
            used.add(rule.source)
        elif rule.source.endswith(".weight") and f"{rule.source[:-7]}.up" in weights.tensors:
            up, down = (weights.tensors[f"{rule.source[:-7]}.{part}"] for part in ("up", "down"))
            used.update({f"{rule.source[:-7]}.up", f"{rule.source[:-7]}.down"})
            delta = up.flatten(1).float() @ down.flatten(1).float()
            if delta.numel() != state[target].numel():
                raise ValueError(f"control-lora: delta for {rule.source} has {delta.numel()} values, the layer "
                                 f"{tuple(shape)}: made for another base model")
            value = state[target].float() + delta.reshape(shape)
        else:
            continue  # the UNet's own tensor, as copied by from_unet
        if value.numel() != state[target].numel():
            raise ValueError(f"control-lora: {rule.source} has shape {tuple(value.shape)}, the layer "
                             f"{tuple(shape)}: made for another base model")
        new_state[target] = value.reshape(shape)
    unused = sorted(set(weights.tensors) - used)
    if unused:
        raise ValueError(f"control-lora: {len(unused)} tensors fit no ControlNet layer of this model, e.g. "
                         f"{', '.join(unused[:4])}")
    controlnet.load_state_dict(new_state, strict=False)
    return controlnet.to(device=device, dtype=dtype).eval().requires_grad_(False)
