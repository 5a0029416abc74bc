"""LoRA files: their key formats, and the weight updates they make to our UNet and text encoders.

A LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") stores, per adapted layer,
two thin matrices whose product is a weight update: W' = W + strength * (alpha / rank) * up @ down.
Convolutions are adapted the same way with `down` a k x k convolution into `rank` channels and `up` a
1 x 1 convolution out of them (LyCORIS' "LoCon"), so up.flatten(1) @ down.flatten(1) is a k x k kernel.

File layouts read here:
- kohya-ss: `lora_unet_<module>` / `lora_te_` (SD1, SD2) / `lora_te1_`, `lora_te2_` (SDXL) +
  `.lora_up.weight`, `.lora_down.weight`, `.alpha`. The UNet module name is either diffusers' (SD1 trainers:
  `lora_unet_down_blocks_0_attentions_0_...`) or the LDM one (SDXL: `lora_unet_input_blocks_4_1_...`); the
  LDM names come from the checkpoint loader's own LDM <-> diffusers key map, so any UNet size maps exactly.
- diffusers / PEFT: `unet.<module>`, `text_encoder.`, `text_encoder_2.` + `.lora_A.weight`, `.lora_B.weight`;
  alpha from the `lora_adapter_metadata` diffusers writes (else alpha = rank, PEFT's convention), and
  the older diffusers spellings `.lora.up/down.weight`, `.lora_linear_layer.up/down.weight` and attention
  processors' `processor.to_q_lora.up.weight`.

Keys we cannot place are reported (a count and a few names, as ComfyUI's "lora key not loaded"), never
dropped silently. Applying the updates never touches a loaded module: `with_updated_weights` returns a
copy that shares every untouched tensor with the original and owns the updated ones, and the model manager
keeps that copy as a model derived from its base (built once, counted as only the weights it replaced).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nodegraph.models import ModelManager, ModelRef, as_ref
from nodes.sd.loading.files import file_signature, read_weights
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.types import ClipHandle, ModelHandle

logger = logging.getLogger(__name__)

_SHOWN = 5
_PAIRS: tuple[tuple[str, str, str], ...] = (
    (".lora_up.weight", ".lora_down.weight", "kohya"),
    (".lora_B.weight", ".lora_A.weight", "peft"),
    (".lora.up.weight", ".lora.down.weight", "diffusers"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", "diffusers"),
    ("_lora.up.weight", "_lora.down.weight", "diffusers"),
)
"""(up suffix, down suffix, format) of each low-rank layer spelling we read."""
_UNSUPPORTED = (".lora_mid.weight", ".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight")
"""Parts that change what up @ down means (LoCon's Tucker core, DoRA's magnitude): such layers are reported
as not loaded rather than applied wrongly."""
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")
_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te1"),
    ("unet.", "unet"), ("diffusion_model.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te1"),
    ("text_encoders.clip_l.transformer.", "te1"), ("text_encoders.clip_h.transformer.", "te1"),
    ("text_encoders.clip_g.transformer.", "te2"),
)  # fmt: skip
"""Layer-name prefixes and the component they adapt (te1 = the first text encoder, te2 = SDXL's second);
`text_encoders.clip_*` is how ComfyUI's LoraSave names text-encoder layers."""


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank update of one weight: delta = scale * up @ down, scale = alpha / rank already applied."""

    up: Tensor
    down: Tensor
    scale: float

    param: str = "weight"
    """Which tensor of the layer it updates (a low-rank pair always updates the weight)."""

    @property
    def numel(self) -> int:
        """How many weights the update covers (out * in * kernel), for checking it fits its target."""
        return self.up.shape[0] * self.down[0].numel()

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        return self.up, self.down

    def delta(self, shape: torch.Size, device: torch.device) -> Tensor:
        """The float32 weight update, reshaped to the target weight's shape (Linear or Conv2d)."""
        up = self.up.to(device, torch.float32).flatten(1)
        down = self.down.to(device, torch.float32).flatten(1)
        return (up @ down).mul_(self.scale).reshape(shape)


@dataclass(frozen=True)
class DiffLayer:
    """A whole-tensor update stored as is: ComfyUI's `.diff` (a weight, e.g. a norm's, or every weight of a
    full_diff LoRA) and `.diff_b` (a bias), as its LoraSave writes them; delta = scale * diff."""

    diff: Tensor
    param: str
    """"weight" or "bias"."""
    module: str
    """The file's layer name (the dict key of a bias update carries a suffix to stay apart from its weight's)."""
    scale: float = 1.0

    @property
    def numel(self) -> int:
        return self.diff.numel()

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        return (self.diff,)

    def delta(self, shape: torch.Size, device: torch.device) -> Tensor:
        return self.diff.to(device, torch.float32).reshape(shape).mul(self.scale)


_DIFF_SUFFIXES = ((".diff", "weight"), (".diff_b", "bias"))


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file's layers by the name the file gives them, plus the keys that are no LoRA layer we know."""

    name: str
    layers: dict[str, LoraLayer | DiffLayer]
    unrecognised: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        """What the model manager counts for it (its tensors stay in CPU RAM)."""
        return sum(t.numel() * t.element_size() for layer in self.layers.values() for t in layer.tensors)


@dataclass(frozen=True)
class WeightUpdates:
    """Per parameter name of one module: the LoRA layers (with their strengths) to add to it."""

    by_param: dict[str, tuple[tuple[LoraLayer | DiffLayer, float], ...]] = field(default_factory=dict)

    def plus(self, other: WeightUpdates) -> WeightUpdates:
        merged = dict(self.by_param)
        for name, layers in other.by_param.items():
            merged[name] = merged.get(name, ()) + layers
        return WeightUpdates(merged)


def _shown(names: Sequence[str]) -> str:
    more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(sorted(names)[:_SHOWN]) + more


def _peft_alphas(metadata: Mapping[str, str]) -> dict[str, Any]:
    """diffusers' `lora_adapter_metadata`: each component's LoraConfig, keys prefixed `unet.`, `text_encoder.`..."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _scale(layer_name: str, rank: int, alpha: float | None, peft: Mapping[str, Any]) -> float:
    """alpha / rank; PEFT files take alpha (and rsLoRA's alpha / sqrt(rank)) from their adapter metadata."""
    component = next((prefix for prefix, _ in _COMPONENTS if layer_name.startswith(prefix) and "." in prefix), "")
    config_alpha = peft.get(f"{component}lora_alpha")
    if alpha is None and config_alpha is not None:
        module = layer_name[len(component):]
        pattern = peft.get(f"{component}alpha_pattern") or {}
        alpha = next((float(v) for k, v in pattern.items() if module == k or module.endswith("." + k)), float(config_alpha))
        if peft.get(f"{component}use_rslora"):
            return alpha / math.sqrt(rank)
    return 1.0 if alpha is None else alpha / rank


def parse_lora(tensors: Mapping[str, Tensor], metadata: Mapping[str, str], name: str) -> LoraFile:
    """Group a LoRA file's tensors into layers.

    Raises:
        ValueError: the file holds no low-rank layer pair at all (not a LoRA, or a type we do not read),
            or a layer's up and down matrices do not fit together.
    """
    peft = _peft_alphas(metadata)
    used: set[str] = set()
    layers: dict[str, LoraLayer | DiffLayer] = {}
    for key in tensors:
        for up_suffix, down_suffix, _ in _PAIRS:
            if not key.endswith(up_suffix):
                continue
            layer = key[: -len(up_suffix)]
            down_key = layer + down_suffix
            if down_key not in tensors or any(layer + part in tensors for part in _UNSUPPORTED):
                break
            up, down = tensors[key], tensors[down_key]
            if up.dim() < 2 or down.dim() < 2 or up.shape[1] != down.shape[0]:
                raise ValueError(f"LoRA {name}: layer {layer} has up {tuple(up.shape)} and down {tuple(down.shape)}, "
                                 f"which do not multiply (rank mismatch)")
            alpha_key = layer + ".alpha"
            alpha = float(tensors[alpha_key]) if alpha_key in tensors else None
            used.update(k for k in (key, down_key, alpha_key) if k in tensors)
            layer = _PROCESSOR.sub(lambda m: "." + ("to_out.0" if m.group(1) == "to_out" else m.group(1)), layer)
            layer = layer.removeprefix("base_model.model.")
            layers[layer] = LoraLayer(up, down, _scale(layer, down.shape[0], alpha, peft))
            break
    for key, tensor in tensors.items():
        for suffix, param in _DIFF_SUFFIXES:
            if key.endswith(suffix) and key not in used:
                layer = key[: -len(suffix)]
                used.add(key)
                layers[layer if param == "weight" else key] = DiffLayer(tensor, param, layer)
    if not layers:
        raise ValueError(f"LoRA {name}: no LoRA layers found (expected kohya .lora_up/.lora_down or PEFT "
                         f".lora_A/.lora_B weight pairs); keys are e.g. {_shown(list(tensors)) or 'none'}")
    return LoraFile(name, layers, tuple(sorted(k for k in tensors if k not in used)))


def read_lora(path: str | Path, *, manager: ModelManager | None = None) -> LoraFile:
    """Read and parse a LoRA file; with a manager it is kept by file identity (path, size, mtime), so
    switching between LoRAs re-reads none. Errors name the file."""
    path = Path(path)

    def load(device: str = "cpu") -> LoraFile:
        try:
            tensors, metadata = read_weights(path)
        except Exception as error:  # a truncated or foreign file: say which and why
            raise ValueError(f"LoRA {path.name}: cannot read the file: {error}") from error
        return parse_lora(tensors, metadata, path.name)

    if manager is None:
        return load()
    return manager.ref((file_signature(path), "lora"), load, name=f"LoRA file {path.name}").get()


# -- where each layer goes ---------------------------------------------------------------------------


def _weight_names(module: torch.nn.Module) -> list[str]:
    return [name for name, param in module.named_parameters() if name.endswith(".weight")]


def unet_targets(unet: torch.nn.Module) -> dict[str, str]:
    """LoRA layer names (dotted and kohya-underscored, diffusers and LDM naming) -> our UNet weight names."""
    names = _weight_names(unet)
    table: dict[str, str] = {}
    for name in names:
        module = name.removesuffix(".weight")
        table.setdefault(module, name)
    try:
        ldm = {rule.target: rule.source for rule in unet_rules(names, unet.config)}
    except (KeyError, ValueError, TypeError):  # an unusual UNet without an LDM layout: diffusers names only
        ldm = {}
    for name, source in ldm.items():
        table.setdefault(source.removesuffix(".weight"), name)
    for module, name in list(table.items()):
        table.setdefault(module.replace(".", "_"), name)
    return table


def text_targets(encoder: torch.nn.Module) -> dict[str, str]:
    """LoRA layer names -> text-encoder weight names, with or without transformers' `text_model.` level."""
    table: dict[str, str] = {}
    for name in _weight_names(encoder):
        inner = name.removesuffix(".weight").removeprefix("text_model.")
        for module in (inner, f"text_model.{inner}"):
            table.setdefault(module, name)
            table.setdefault(module.replace(".", "_"), name)
    return table


@dataclass(frozen=True)
class MatchedLora:
    """A LoRA file placed on one model: updates per component, and what could not be placed."""

    unet: WeightUpdates
    encoders: tuple[WeightUpdates, ...]
    not_loaded: tuple[str, ...]


def match_lora(
    lora: LoraFile, unet: torch.nn.Module | None, encoders: Sequence[torch.nn.Module], *,
    strength_model: float = 1.0, strength_clip: float = 1.0,
) -> MatchedLora:
    """Place each layer of `lora` on a weight of `unet` or `encoders` (None / () skips that side).

    A layer whose name or size fits no weight is reported in `not_loaded` (and logged by the caller).
    """
    tables: dict[str, tuple[dict[str, str], dict[str, torch.Size]]] = {}
    if unet is not None:
        tables["unet"] = (unet_targets(unet), {n: p.shape for n, p in unet.named_parameters()})
    for index, encoder in enumerate(encoders):
        tables[f"te{index + 1}"] = (text_targets(encoder), {n: p.shape for n, p in encoder.named_parameters()})
    found: dict[str, dict[str, tuple[tuple[LoraLayer | DiffLayer, float], ...]]] = {key: {} for key in tables}
    not_loaded = list(lora.unrecognised)
    for key, layer in lora.layers.items():
        layer_name = getattr(layer, "module", key)
        prefix, component = next(((p, c) for p, c in _COMPONENTS if layer_name.startswith(p)), ("", "unet"))
        if component not in tables:
            if unet is None and component == "unet" or not encoders and component != "unet":
                continue  # the side the caller left out (LoraLoaderModelOnly's CLIP layers)
            not_loaded.append(key)
            continue
        table, shapes = tables[component]
        target = table.get(layer_name[len(prefix):])
        if target is not None and layer.param == "bias":
            target = target.removesuffix("weight") + "bias"
        if target is None or target not in shapes or shapes[target].numel() != layer.numel:
            not_loaded.append(key)
            continue
        strength = strength_model if component == "unet" else strength_clip
        found[component][target] = found[component].get(target, ()) + ((layer, strength),)
    empty = WeightUpdates()
    return MatchedLora(
        unet=WeightUpdates(found["unet"]) if "unet" in found else empty,
        encoders=tuple(WeightUpdates(found[f"te{i + 1}"]) for i in range(len(encoders))),
        not_loaded=tuple(not_loaded),
    )


# -- applying updates without touching the cached modules -------------------------------------------


@torch.no_grad()
def with_updated_weights(root: torch.nn.Module, updates: WeightUpdates) -> torch.nn.Module:
    """A copy of `root` whose updated weights are new tensors W + sum(strength * delta); the rest is shared.

    Only the modules on the path to an updated weight are copied (shallowly, with their own parameter and
    child dicts), so the original and everyone sharing it keep their exact tensors: nothing to restore,
    nothing that `W + dW - dW != W` could corrupt. The sum is formed in float32 and cast once.
    """
    if not updates.by_param:
        return root
    copies: dict[str, torch.nn.Module] = {}

    def copy_of(path: str) -> torch.nn.Module:
        if path in copies:
            return copies[path]
        parent_path, _, child = path.rpartition(".")
        parent = copy_of(parent_path) if path else None
        original = root if parent is None else parent._modules[child]
        assert original is not None
        clone = copy.copy(original)
        clone._modules = dict(original._modules)  # type: ignore[assignment]
        clone._parameters = dict(original._parameters)  # type: ignore[assignment]
        if parent is not None:
            parent._modules[child] = clone
        copies[path] = clone
        return clone

    for name, layers in updates.by_param.items():
        module_path, _, param_name = name.rpartition(".")
        owner = copy_of(module_path)
        weight = owner._parameters[param_name]
        assert weight is not None
        total = weight.detach().to(torch.float32).clone()
        for layer, strength in layers:
            total.add_(layer.delta(weight.shape, weight.device), alpha=strength)
        owner._parameters[param_name] = torch.nn.Parameter(total.to(weight.dtype), requires_grad=False)
    return copies[""]


def _describe(loras: Iterable[tuple[str, float, Any]]) -> str:
    return " + ".join(f"{name}@{strength:g}" for name, strength, _ in loras)


@dataclass(frozen=True)
class LoraTag:
    """What a LoRA-merged model derives from its base by: the LoRAs in stacking order, each as
    (file name, strength, file identity). Equal tags on one base are one merged model: the manager merges
    once and keeps it while it is used (switching A -> B -> A merges A again only if it was evicted)."""

    loras: tuple[tuple[str, float, Any], ...]
    updates: tuple[WeightUpdates, ...] = field(compare=False, hash=False)


def _lora_parts(ref: ModelRef) -> tuple[ModelRef, tuple[tuple[str, float, Any], ...], tuple[WeightUpdates, ...]]:
    """(base ref, LoRAs, updates) of a LoRA-merged ref; (ref, (), ()) for any other."""
    tag = ref.key[1] if isinstance(ref.key, tuple) and len(ref.key) == 2 else None
    if ref.base is not None and isinstance(tag, LoraTag):
        return ref.base, tag.loras, tag.updates
    return ref, (), ()


def _updated_bytes(updates: WeightUpdates, module: torch.nn.Module) -> int:
    """What a merged copy adds to its base: only the weights it replaced."""
    parameters = dict(module.named_parameters())
    return sum(parameters[name].numel() * parameters[name].element_size() for name in updates.by_param)


def with_lora(model_ref: Any, name: str, file_key: Any, updates: WeightUpdates, strength: float) -> ModelRef:
    """A ref to `model_ref`'s module with these LoRA updates merged in (derived from the unpatched base, so
    directly stacked LoRAs merge into one copy)."""
    base, loras, previous = _lora_parts(as_ref(model_ref))
    total = previous[0].plus(updates) if previous else updates
    loras = (*loras, (name, strength, file_key))
    tag = LoraTag(loras, (total,))
    return base.derive(tag, partial(_merged, total), name=f"{base.name} + LoRA {_describe(loras)}",
                       size=partial(_updated_bytes, total))


def _merged(updates: WeightUpdates, module: torch.nn.Module) -> torch.nn.Module:
    return with_updated_weights(module, updates)


def add_model_lora(model: ModelHandle, name: str, updates: WeightUpdates, strength: float,
                   file_key: Any = None) -> ModelHandle:
    """A new MODEL handle whose UNet has these LoRA updates merged (by the model manager, once)."""
    return replace(model, unet_ref=with_lora(model.unet_ref, name, file_key, updates, strength))


def add_clip_lora(clip: ClipHandle, name: str, updates: tuple[WeightUpdates, ...], strength: float,
                  file_key: Any = None) -> ClipHandle:
    """A new CLIP handle whose text encoders have these LoRA updates merged (one update set per encoder)."""
    refs = tuple(ref if not encoder_updates.by_param else with_lora(ref, name, file_key, encoder_updates, strength)
                 for ref, encoder_updates in zip(clip.encoder_refs, updates))
    return replace(clip, encoder_refs=refs)


def warn_not_loaded(lora: str, names: Sequence[str]) -> None:
    """ComfyUI's "lora key not loaded", once per file with a count and a few names."""
    if names:
        logger.warning("LoRA %s: %d key(s) not loaded (no matching weight in this model): %s",
                       lora, len(names), _shown(list(names)))
