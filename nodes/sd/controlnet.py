"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models"): loading,
and the residuals it adds to the UNet.

A ControlNet is a trainable copy of the UNet's encoder that sees a hint image (edges, depth, pose ...) and
returns one residual per skip connection plus one for the middle block, through zero-initialised
convolutions; the UNet adds them (diffusers' `down_block_additional_residuals` /
`mid_block_additional_residual`). We use diffusers' ControlNetModel as the module.

Files: the original layout (`control_model.input_blocks...`, `input_hint_block`, `zero_convs`,
`middle_block_out`, as in lllyasviel's ControlNet v1.0/v1.1 .pth/.safetensors), and diffusers' layout, as a
folder (config.json + weights) or a single file. The shared encoder part is mapped with the checkpoint
loader's LDM <-> diffusers UNet key map; the config is read from shapes.

A control travels with the conditioning as a `ControlApplied` in `CondItem.extras["control"]`; the
sampler's `calc_cond_batch` asks it for UNet kwargs for exactly the rows of the entries that carry it.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.loading.build import empty_module, fill
from nodes.sd.loading.configs import nodegraph_config
from nodes.sd.loading.diffusers_folder import folder_weights, read_json
from nodegraph.models import ModelManager, ModelRef, resolve
from nodes.sd.loading.files import (
    check_suffix,
    file_signature,
    folder_signature,
    read_weights,
)
from nodes.sd.loading.keymap import KeyRule, unet_rules
from nodes.sd.schedules import timestep_to_sigma

LDM_PREFIX = "control_model."
Tensors = dict[str, Tensor]


@dataclass(frozen=True)
class ControlNetHandle:
    """CONTROL_NET: the model manager's ref to a diffusers ControlNetModel (or the module itself), shared
    with the cache and other branches: never mutate it."""

    model_ref: ModelRef | torch.nn.Module
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    source: str = ""
    kind: str = "controlnet"
    """"controlnet" or "controlnet_union" (residuals per UNet call) or "t2i_adapter" (features added inside the
    down blocks)."""
    extra: tuple[tuple[str, Any], ...] = ()
    """Per-use options set by nodes (ComfyUI's set_extra_arg), e.g. ("control_type", (3,)) for a union model."""

    def with_extra(self, name: str, value: Any) -> ControlNetHandle:
        """A new handle with option `name` set (the model is shared, never copied)."""
        return replace(self, extra=tuple((k, v) for k, v in self.extra if k != name) + ((name, value),))

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.extra).get(name, default)

    @property
    def model(self) -> torch.nn.Module:
        return resolve(self.model_ref)

    @property
    def nbytes(self) -> int:  # the manager counts a managed model; a bare module is counted here
        if isinstance(self.model_ref, ModelRef):
            return 0
        return sum(p.numel() * p.element_size() for p in self.model_ref.parameters())


# -- configs from shapes ---------------------------------------------------------------------------


def _indices(tensors: Mapping[str, Tensor], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for key in tensors if (m := pattern.match(key))})


def _need(tensors: Mapping[str, Tensor], key: str, what: str) -> Tensor:
    if key not in tensors:
        raise ValueError(f"{what}: expected key {key!r} is missing; not a ControlNet layout we know")
    return tensors[key]


def _finish_config(
    tensors: Mapping[str, Tensor], levels: list[tuple[int, int]], per_level: int, *, attention_key: str | None,
    proj_in_key: str | None, time_dim: int, added_dim: int | None, hint: list[int], in_channels: int,
    cond_channels: int, overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The ControlNetModel config both layouts lead to; attention heads follow the checkpoint loader's rules
    (SD1-style conv projections: 8 heads; otherwise 64 channels a head) unless metadata names them."""
    channels, depths = [c for c, _ in levels], [d for _, d in levels]
    if attention_key is None or proj_in_key is None:
        raise ValueError("ControlNet: no cross-attention layers found")
    linear = tensors[proj_in_key].dim() == 2
    config: dict[str, Any] = {
        "in_channels": in_channels, "conditioning_channels": cond_channels, "block_out_channels": channels,
        "layers_per_block": per_level, "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "transformer_layers_per_block": [max(d, 1) for d in depths], "use_linear_projection": linear,
        "cross_attention_dim": int(tensors[attention_key].shape[1]), "conditioning_embedding_out_channels": hint,
        "attention_head_dim": 8 if not linear and added_dim is None and all(c % 8 == 0 for c in channels)
        else [max(c // 64, 1) for c in channels],
    }  # fmt: skip
    if time_dim != 4 * channels[0]:
        raise ValueError(f"ControlNet: time embedding width {time_dim} is not 4 x {channels[0]}; unsupported")
    if added_dim is not None:
        config.update(addition_embed_type="text_time", projection_class_embeddings_input_dim=added_dim,
                      addition_time_embed_dim=256)  # SDXL's; metadata may say otherwise
    config.update(overrides)
    return config


def config_from_ldm(tensors: Mapping[str, Tensor], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A ControlNetModel config from original-layout tensors (`control_model.` removed)."""
    what = "ControlNet (original layout)"
    levels: list[list[tuple[int, int]]] = [[]]
    for block in _indices(tensors, "input_blocks")[1:]:
        if f"input_blocks.{block}.0.op.weight" in tensors:
            levels.append([])
            continue
        out = int(_need(tensors, f"input_blocks.{block}.0.out_layers.3.weight", what).shape[0])
        levels[-1].append((out, len(_indices(tensors, f"input_blocks.{block}.1.transformer_blocks"))))
    sizes = {len(level) for level in levels}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"{what}: levels hold different numbers of blocks {sorted(sizes)}")
    hint_convs = _indices(tensors, "input_hint_block")
    hint = [int(tensors[f"input_hint_block.{i}.weight"].shape[0]) for i in hint_convs[:1] + hint_convs[2:-1:2]]
    attention = next((k for k in tensors if k.endswith("transformer_blocks.0.attn2.to_k.weight")), None)
    label = tensors.get("label_emb.0.0.weight")
    return _finish_config(
        tensors, [level[0] for level in levels], sizes.pop(), attention_key=attention,
        proj_in_key=attention and attention.replace("transformer_blocks.0.attn2.to_k.weight", "proj_in.weight"),
        time_dim=int(_need(tensors, "time_embed.0.weight", what).shape[0]),
        added_dim=None if label is None else int(label.shape[1]), hint=hint,
        in_channels=int(_need(tensors, "input_blocks.0.0.weight", what).shape[1]),
        cond_channels=int(_need(tensors, "input_hint_block.0.weight", what).shape[1]), overrides=overrides,
    )  # fmt: skip


def config_from_diffusers(tensors: Mapping[str, Tensor], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A ControlNetModel config from diffusers-layout tensors (a single file without its config.json)."""
    what = "ControlNet (diffusers layout)"
    levels = [
        (int(_need(tensors, f"down_blocks.{level}.resnets.0.conv2.weight", what).shape[0]),
         len(_indices(tensors, f"down_blocks.{level}.attentions.0.transformer_blocks")))
        for level in _indices(tensors, "down_blocks")
    ]  # fmt: skip
    blocks = _indices(tensors, "controlnet_cond_embedding.blocks")
    hint = [int(_need(tensors, "controlnet_cond_embedding.conv_in.weight", what).shape[0])]
    hint += [int(tensors[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]) for i in blocks[1::2]]
    attention = next((k for k in tensors if k.endswith("transformer_blocks.0.attn2.to_k.weight")), None)
    added = tensors.get("add_embedding.linear_1.weight")
    return _finish_config(
        tensors, levels, len(_indices(tensors, "down_blocks.0.resnets")), attention_key=attention,
        proj_in_key=attention and attention.replace("transformer_blocks.0.attn2.to_k.weight", "proj_in.weight"),
        time_dim=int(_need(tensors, "time_embedding.linear_1.weight", what).shape[0]),
        added_dim=None if added is None else int(added.shape[1]), hint=hint,
        in_channels=int(_need(tensors, "conv_in.weight", what).shape[1]),
        cond_channels=int(tensors["controlnet_cond_embedding.conv_in.weight"].shape[1]), overrides=overrides,
    )  # fmt: skip


# -- key maps and loading --------------------------------------------------------------------------


def controlnet_rules(keys: list[str], config: Mapping[str, Any]) -> list[KeyRule]:
    """ControlNetModel keys -> original-layout keys: the UNet encoder map plus the hint encoder and zero convs."""
    blocks = len({key.split(".")[2] for key in keys if key.startswith("controlnet_cond_embedding.blocks.")})
    own = {"controlnet_cond_embedding.conv_in": "input_hint_block.0",
           "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * (blocks + 1)}",
           "controlnet_mid_block": "middle_block_out.0"}  # fmt: skip
    own.update({f"controlnet_cond_embedding.blocks.{i}": f"input_hint_block.{2 * (i + 1)}" for i in range(blocks)})
    rules, shared = [], []
    for key in keys:
        module, _, param = key.rpartition(".")
        if module.startswith("controlnet_down_blocks."):
            rules.append(KeyRule(key, f"zero_convs.{module.split('.')[1]}.0.{param}"))
        elif module in own:
            rules.append(KeyRule(key, f"{own[module]}.{param}"))
        else:
            shared.append(key)
    return rules + unet_rules(shared, {**config, "up_block_types": []})


def new_controlnet(config: Mapping[str, Any]) -> torch.nn.Module:
    from diffusers import ControlNetModel

    return empty_module(lambda: ControlNetModel.from_config(dict(config)))


def _build(path: Path, device: str, dtype: torch.dtype) -> Any:
    from nodes.sd import control_lora, controlnet_union, t2i_adapter

    what = f"ControlNet {path.name}"
    if path.is_dir():
        config = read_json(path / "config.json")
        if "adapter_type" in config:  # diffusers' T2IAdapter folder
            from diffusers import T2IAdapter

            module = empty_module(lambda: T2IAdapter.from_config(config))
        elif config.get("_class_name") == "ControlNetUnionModel":
            module = controlnet_union.new_union(config)
        else:
            module = new_controlnet(config)
        rules = [KeyRule(key, key) for key in module.state_dict()]
        return fill(module, rules, folder_weights(path), what, device=device, dtype=dtype)
    try:
        tensors, metadata = read_weights(path)
    except Exception as error:
        raise ValueError(f"{what}: cannot read the file: {error}") from error
    overrides = nodegraph_config(metadata).get("controlnet", {})
    if control_lora.is_control_lora(tensors):  # a ControlNet as deltas: built with the sampling model's UNet
        return control_lora.control_lora_weights(tensors)
    tensors.pop("difference", None)  # a diff ControlNet's marker (DiffControlNetLoader adds the UNet's weights)
    if any(key.startswith(LDM_PREFIX) for key in tensors):  # v1.0 files may carry a whole SD model too
        tensors = {key[len(LDM_PREFIX):]: value for key, value in tensors.items() if key.startswith(LDM_PREFIX)}
    if "input_hint_block.0.weight" in tensors:
        config = config_from_ldm(tensors, overrides)
        module = new_controlnet(config)
        rules = controlnet_rules(list(module.state_dict()), config)
    elif controlnet_union.is_union(tensors):
        module = controlnet_union.new_union(controlnet_union.union_config(tensors, overrides))
        rules = [KeyRule(key, key) for key in module.state_dict()]
    elif "controlnet_cond_embedding.conv_in.weight" in tensors:
        module = new_controlnet(config_from_diffusers(tensors, overrides))
        rules = [KeyRule(key, key) for key in module.state_dict()]
    elif t2i_adapter.is_t2i_adapter(tensors):
        return t2i_adapter.build_adapter(tensors, what, overrides=nodegraph_config(metadata).get("t2i_adapter"),
                                         device=device, dtype=dtype)
    else:
        shown = ", ".join(sorted(tensors)[:5]) or "none"
        raise ValueError(f"{what}: not a ControlNet: expected control_model.*/input_hint_block (original layout), "
                         f"controlnet_cond_embedding.* (diffusers layout) or T2I-Adapter (conv_in/body.N) keys; "
                         f"found e.g. {shown}")
    return fill(module, rules, tensors, what, device=device, dtype=dtype)


def load_controlnet(path: str | Path, *, manager: ModelManager | None = None, device: str = "cpu",
                    dtype: torch.dtype = torch.float32) -> ControlNetHandle:
    """Load a ControlNet (original-layout or diffusers-layout file, or a diffusers folder) through the model
    manager (a private one when None), which keeps it by file identity and dtype.

    Raises:
        ValueError: the file is unreadable, not a ControlNet, or its weights do not fit the architecture
            its shapes describe (the message names the file and the keys).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"ControlNet {path.name}: a ControlNet folder needs a diffusers config.json")
        signature: Any = folder_signature(path)
    else:
        check_suffix(path)
        signature = file_signature(path)
    manager = manager if manager is not None else ModelManager(device, ram_budget=sys.maxsize)
    ref = manager.ref((signature, "controlnet", str(dtype)), partial(_build, path, dtype=dtype),
                      name=f"ControlNet {path.name} ({str(dtype).removeprefix('torch.')})")
    module = ref.get()  # build now, so a broken file fails in its loader node
    kind = {"T2IAdapter": "t2i_adapter", "ControlNetUnionModel": "controlnet_union",
            "ControlLoraWeights": "control_lora"}.get(type(module).__name__, "controlnet")
    return ControlNetHandle(ref, dtype, manager.device, str(path), kind)


# -- applying a control while sampling ------------------------------------------------------------------


def percent_to_sigma(percent: float, sigmas: Tensor) -> float:
    """ComfyUI's percent -> sigma: 0 is above any sigma, 1 is 0, else the sigma at timestep (1 - p) * 999."""
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    return float(timestep_to_sigma(torch.tensor((1.0 - percent) * (len(sigmas) - 1)), sigmas))


def resize_hint(hint: Tensor, height: int, width: int) -> Tensor:
    """Centre-crop the hint [B, C, h, w] to the target's aspect ratio, then resize (nearest-exact), as ComfyUI."""
    if tuple(hint.shape[-2:]) == (height, width):
        return hint
    h, w = hint.shape[-2:]
    if h * width != w * height:
        if h * width > w * height:  # too tall
            keep = round(w * height / width)
            hint = hint[..., (h - keep) // 2 : (h - keep) // 2 + keep, :]
        else:
            keep = round(h * width / height)
            hint = hint[..., (w - keep) // 2 : (w - keep) // 2 + keep]
    return F.interpolate(hint, size=(height, width), mode="nearest-exact")


def _moved(value: Any, device: str, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, dict):
        return {key: _moved(item, device, dtype) for key, item in value.items()}
    return value


@dataclass(frozen=True, eq=False)
class ControlApplied:
    """One ControlNet applied to conditioning (ComfyUI's ControlNet object after set_cond_hint).

    `previous` is the control this one was chained onto; residuals of a chain sum. Identity matters:
    entries that carry the same object batch into one UNet call (and one ControlNet call).
    """

    control_net: ControlNetHandle
    hint: Tensor
    """[B, 3, H, W] in 0..1 (the IMAGE, channels first)."""
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: ControlApplied | None = None

    def active(self, sigma: float, sigmas: Tensor) -> bool:
        """Whether sigma lies in [sigma(end_percent), sigma(start_percent)] (ComfyUI's timestep_range)."""
        return percent_to_sigma(self.end_percent, sigmas) <= sigma <= percent_to_sigma(self.start_percent, sigmas)

    def residuals(
        self, model: Any, x: Tensor, sigma: Tensor, kwargs: dict[str, Any], entries: int
    ) -> dict[str, list[Tensor]] | None:
        """This chain's summed UNet residuals for rows x at sigma, by UNet kwarg (ControlNets: down and mid;
        T2I-Adapters: intrablock), or None when no control is active."""
        before = self.previous.residuals(model, x, sigma, kwargs, entries) if self.previous is not None else None
        if not self.active(float(sigma.reshape(-1)[0]), model.sigmas):
            return before
        own = self._adapter(x, entries) if self.control_net.kind == "t2i_adapter" else self._controlnet(
            model, x, sigma, kwargs, entries)
        if before is None:
            return own
        merged = dict(before)
        for name, tensors in own.items():
            previous = merged.get(name)
            merged[name] = tensors if previous is None else [a + b for a, b in zip(previous, tensors)]
        return merged

    def _rows(self, hint: Tensor, rows: int, entries: int) -> Tensor:
        """The hint's batch spread over `rows` made of `entries` equal blocks (ComfyUI's broadcast_image_to)."""
        per_entry = rows // entries
        return hint.repeat(math.ceil(per_entry / hint.shape[0]), 1, 1, 1)[:per_entry].repeat(entries, 1, 1, 1)

    def _controlnet(
        self, model: Any, x: Tensor, sigma: Tensor, kwargs: dict[str, Any], entries: int
    ) -> dict[str, list[Tensor]]:
        net = self.control_net
        hint = resize_hint(self.hint.to(torch.float32), x.shape[-2] * 8, x.shape[-1] * 8)
        hint = self._rows(hint, x.shape[0], entries)
        sigma_b = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        scaled = x / (sigma_b**2 + 1) ** 0.5  # the UNet's own input scaling (UNetDenoiser.__call__)
        extra = {k: _moved(v, net.device, net.dtype) for k, v in kwargs.items()
                 if k in ("encoder_hidden_states", "added_cond_kwargs")}  # fmt: skip
        hint = hint.to(net.device, net.dtype)
        module = net.model if net.kind != "control_lora" else self._control_lora(model)
        if net.kind == "controlnet_union":
            from nodes.sd.controlnet_union import union_residuals

            down, mid = union_residuals(module, scaled.to(net.device, net.dtype), model.timestep(sigma).to(net.device),
                                        hint, tuple(net.option("control_type", ())), float(self.strength), **extra)
        else:
            down, mid = module(scaled.to(net.device, net.dtype), model.timestep(sigma).to(net.device),
                               controlnet_cond=hint, conditioning_scale=float(self.strength), return_dict=False,
                               **extra)  # fmt: skip
        return {"down_block_additional_residuals": [d.to(x.dtype) for d in down],
                "mid_block_additional_residual": [mid.to(x.dtype)]}

    def _control_lora(self, model: Any) -> torch.nn.Module:
        """The ControlNet this control-lora makes with the sampling model's UNet, built once per run (kept by
        the denoiser, which lives for one run)."""
        from nodes.sd.control_lora import build_control_lora

        key = ("control_lora", id(self.control_net.model), id(model.unet))
        built = model.cond_plans.get(key)
        if built is None:
            net = self.control_net
            built = model.cond_plans[key] = build_control_lora(net.model, model.unet, device=net.device,
                                                               dtype=net.dtype)
        return built

    def _adapter(self, x: Tensor, entries: int) -> dict[str, list[Tensor]]:
        from nodes.sd.t2i_adapter import adapter_features, adapter_hint

        net = self.control_net
        adapter = net.model
        hint = adapter_hint(self.hint.to(torch.float32), adapter, x.shape[-2] * 8, x.shape[-1] * 8)
        features = adapter_features(adapter, hint.to(net.device, net.dtype), float(self.strength))
        return {"down_intrablock_additional_residuals": [self._rows(f, x.shape[0], entries).to(x.dtype)
                                                         for f in features]}

    def unet_kwargs(
        self, model: Any, x: Tensor, sigma: Tensor, kwargs: dict[str, Any], entries: int
    ) -> dict[str, Any]:
        """denoisers.RowKwargs: the residuals as the UNet's additional-residual kwargs (none when inactive).

        Adapter features go as a fresh list each call: diffusers' UNet pops them as it uses them."""
        found = self.residuals(model, x, sigma, kwargs, entries)
        if found is None:
            return {}
        out: dict[str, Any] = {}
        if "down_block_additional_residuals" in found:
            out["down_block_additional_residuals"] = tuple(found["down_block_additional_residuals"])
            out["mid_block_additional_residual"] = found["mid_block_additional_residual"][0]
        if "down_intrablock_additional_residuals" in found:
            out["down_intrablock_additional_residuals"] = list(found["down_intrablock_additional_residuals"])
        return out
