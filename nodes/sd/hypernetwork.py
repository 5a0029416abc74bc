"""Hypernetworks in the AUTOMATIC1111 layout: small MLPs that transform attention's key and value inputs.

A hypernetwork (NovelAI's, popularised by AUTOMATIC1111's web UI) holds, per attention width d, two MLPs
(for the key and the value). In every attention layer whose context has width d (self-attention: the
layer's own channels; cross-attention: the text width), the projections read a changed context instead:

    k = to_k(c + strength * mlp_k(c)),   v = to_v(c + strength * mlp_v(c)),   q = to_q(x) unchanged.

The file is a pickled dict: integer widths -> [key MLP state dict, value MLP state dict], each holding the
`linear.N.weight/bias` of an `nn.Sequential`, plus options saying how that Sequential was built:
`activation_func` (after every Linear but the last, unless `activate_output`), `is_layer_norm` (a LayerNorm
after each Linear, stored as the next `.weight`), `use_dropout`/`last_layer_dropout` (dropout, a training
device: at inference it is the identity, so we build none, as AUTOMATIC1111 infers; ComfyUI's source builds
Dropout(0.3) layers and never switches them to evaluation mode, so its results with such files can vary from
run to run). ComfyUI applies the same maths as attn1/attn2 patches; here it is an "attention" ModelPatch that installs an attention processor on the run's UNet only for
the length of each call (nodes/sd/denoisers.py), so the shared, cached UNet is never changed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.types import ModelPatch

PATCH_NAME = "hypernetwork"
ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
    "softsign": torch.nn.Softsign, "mish": torch.nn.Mish,
}  # fmt: skip
"""The `activation_func` values A1111 files use, as ComfyUI reads them ("swish" is built as Hardswish there)."""


def _ordered_layers(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the weighted layers (`linear.0`, `linear.1`, ...) in Sequential order."""
    names = [key.removesuffix(".weight") for key in state if key.endswith(".weight")]

    def index(name: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", name))

    return sorted(names, key=index)


def build_mlp(state: Mapping[str, Tensor], options: Mapping[str, Any], what: str) -> torch.nn.Sequential:
    """One key or value MLP from its state dict and the file's options (A1111's HypernetworkModule layout)."""
    activation = str(options.get("activation_func", "linear"))
    if activation not in ACTIVATIONS:
        expected = ", ".join(ACTIVATIONS)
        raise ValueError(f"{what}: unsupported activation_func {activation!r}; expected one of {expected}")
    layer_norm, activate_output = bool(options.get("is_layer_norm", False)), bool(options.get("activate_output", False))
    names = _ordered_layers(state)
    linears = names[::2] if layer_norm else names
    if not linears or (layer_norm and len(names) % 2):
        raise ValueError(f"{what}: expected Linear{' + LayerNorm pairs' if layer_norm else ' layers'}, found {names}")
    layers: list[torch.nn.Module] = []
    for position, name in enumerate(linears):
        weight, bias = state[f"{name}.weight"], state.get(f"{name}.bias")
        if weight.dim() != 2 or bias is None:
            raise ValueError(f"{what}: {name} is not a Linear layer (weight {tuple(weight.shape)}, "
                             f"bias {'present' if bias is not None else 'missing'})")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        layers.append(linear)
        if activation != "linear" and (position < len(linears) - 1 or activate_output):
            layers.append(ACTIVATIONS[activation]())
        if layer_norm:
            norm_name = names[2 * position + 1]
            norm = torch.nn.LayerNorm(state[f"{norm_name}.weight"].shape[0])
            norm.load_state_dict({"weight": state[f"{norm_name}.weight"], "bias": state[f"{norm_name}.bias"]})
            layers.append(norm)
    mlp = torch.nn.Sequential(*layers)
    width_in, width_out = state[f"{linears[0]}.weight"].shape[1], state[f"{linears[-1]}.weight"].shape[0]
    if width_in != width_out:
        raise ValueError(f"{what}: maps width {width_in} to {width_out}; a hypernetwork must keep the width")
    return mlp.eval().requires_grad_(False)


def build_hypernetwork(data: Mapping[Any, Any], name: str = "hypernetwork") -> torch.nn.ModuleDict:
    """The MLPs of an A1111 hypernetwork file's dict: {str(width): ModuleList([key_mlp, value_mlp])}.

    Raises:
        ValueError: no width entries, an entry that is not two state dicts, or an unsupported activation.
    """
    nets = torch.nn.ModuleDict()
    for entry, value in data.items():
        try:
            width = int(entry)
        except (TypeError, ValueError):
            continue  # options and bookkeeping (name, step, sd_checkpoint, layer_structure, ...)
        if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(v, Mapping) for v in value[:2]):
            raise ValueError(f"{name}: width {width} must hold [key state dict, value state dict]")
        pair = [build_mlp(value[index], data, f"{name} width {width} {side}")
                for index, side in ((0, "key"), (1, "value"))]
        for mlp in pair:
            if mlp[0].in_features != width:
                raise ValueError(f"{name}: width {width} holds an MLP for width {mlp[0].in_features}")
        nets[str(width)] = torch.nn.ModuleList(pair)
    if not len(nets):
        raise ValueError(f"{name}: not a hypernetwork (no integer width keys such as 768 or 320)")
    return nets


class HypernetworkAttention:
    """A diffusers attention processor: scaled dot-product attention whose key and value projections read
    `c + strength * mlp(c)` where the hypernetwork has an MLP pair for the context's width."""

    def __init__(self, nets: torch.nn.ModuleDict, strength: float) -> None:
        self.nets, self.strength = nets, strength
        self._placed: dict[tuple[str, torch.device, torch.dtype], torch.nn.Module] = {}

    def mlps(self, width: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
        """The key/value MLP pair for a context width, as a copy on the UNet's device and dtype (the manager's
        module stays as loaded); None when the hypernetwork has no pair for that width."""
        if str(width) not in self.nets:
            return None
        key = (str(width), device, dtype)
        if key not in self._placed:
            self._placed[key] = copy.deepcopy(self.nets[str(width)]).to(device, dtype)
        return self._placed[key]

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any) -> Tensor:
        if hidden_states.dim() != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("hypernetworks patch SD's transformer attention ([B, tokens, C] inputs) only")
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key_in = value_in = context
        pair = self.mlps(context.shape[-1], context.device, context.dtype)
        if pair is not None:
            key_in = context + pair[0](context) * self.strength
            value_in = context + pair[1](context) * self.strength
        query, key, value = attn.to_q(hidden_states), attn.to_k(key_in), attn.to_v(value_in)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def transformer_attention(unet: torch.nn.Module) -> list[Any]:
    """The self- and cross-attention layers of the UNet's transformer blocks (ComfyUI's attn1 and attn2)."""
    return [module for name, module in unet.named_modules() if name.endswith((".attn1", ".attn2"))]


def hypernetwork_patch(nets: Callable[[], torch.nn.ModuleDict], strength: float, name: str) -> ModelPatch:
    """An "attention" ModelPatch applying a hypernetwork at `strength` (ComfyUI's attn1 + attn2 patches).

    Args:
        nets: gives the hypernetwork's MLPs (the model manager's ref `get`), asked for when a run starts.
        strength: multiplies each MLP's output; 0 leaves attention exactly as it was.
        name: the file, for messages and the patch's options.
    """

    def apply(unet_denoiser: Any) -> Callable[[], None] | None:
        if strength == 0.0:
            return None
        processor = HypernetworkAttention(nets(), strength)

        def wrapper(call: Any, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
            layers = transformer_attention(unet_denoiser.unet)  # per call: a weights patch may swap the UNet
            previous = [layer.processor for layer in layers]
            for layer in layers:
                layer.set_processor(processor)
            try:
                return call(sample, timestep, kwargs)
            finally:
                for layer, old in zip(layers, previous):
                    layer.set_processor(old)

        unet_denoiser.wrappers.append(wrapper)
        return lambda: unet_denoiser.wrappers.remove(wrapper)

    return ModelPatch(kind="attention", name=PATCH_NAME, apply=apply, options={"file": name, "strength": strength})
