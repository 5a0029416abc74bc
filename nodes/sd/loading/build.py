"""Build modules from configs and fill them strictly from original-layout tensors.

Modules are constructed on the meta device (no random init of hundreds of millions of weights just to
overwrite them), then the file's tensors are assigned in place. Every key must be accounted for: a missing
or unexpected key is an error naming it, never a silently random weight.

Construction runs under `with torch.device("meta")`, a torch function mode, which is thread-local: a model
building here never changes what another thread's `torch.nn.Linear(...)` allocates (patching
`torch.nn.Module.register_parameter` process-wide, as accelerate's `init_empty_weights` does, would).
The mode puts buffers on meta too. Persistent buffers are in the state dict, so the file supplies them;
non-persistent ones (CLIP's `position_ids`) are computed at construction and never saved, so
`empty_module` recomputes each from a recipe here, and refuses a module whose buffer it has no recipe for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.sd.loading.keymap import KeyRule, to_module

_SHOWN = 5


def _positions(shape: torch.Size) -> torch.Tensor:
    """transformers' `torch.arange(max_position_embeddings).expand((1, -1))` (CLIP text and vision)."""
    return torch.arange(shape[-1]).expand(shape)


BUFFER_RECIPES: dict[str, Callable[[torch.Size], torch.Tensor]] = {"position_ids": _positions}
"""How to recompute each non-persistent buffer the supported modules have, by its attribute name.

UNet2DConditionModel, AutoencoderKL and ControlNetModel as SD configures them have no buffers at all;
CLIPTextModel(WithProjection) has only `embeddings.position_ids`.
"""


def _non_persistent_meta_buffers(module: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Module, str]]:
    """(full name, owning module, attribute) of each buffer on meta that no state dict carries."""
    for owner_name, owner in module.named_modules():
        for attribute, buffer in owner.named_buffers(recurse=False):
            if buffer is not None and buffer.is_meta and attribute in owner._non_persistent_buffers_set:
                yield (f"{owner_name}.{attribute}" if owner_name else attribute), owner, attribute


def _restore_computed_buffers(module: torch.nn.Module) -> None:
    """Recompute non-persistent buffers on the CPU (`fill` later moves them with the module)."""
    unknown = []
    for name, owner, attribute in list(_non_persistent_meta_buffers(module)):
        recipe = BUFFER_RECIPES.get(attribute)
        if recipe is None:
            unknown.append(f"{name} ({type(owner).__name__})")
            continue
        meta = owner._buffers[attribute]
        value = recipe(meta.shape)
        if value.shape != meta.shape or value.dtype != meta.dtype:
            raise RuntimeError(f"buffer {name}: recipe gave {tuple(value.shape)} {value.dtype}, the module built "
                               f"{tuple(meta.shape)} {meta.dtype}")
        owner._buffers[attribute] = value
    if unknown:
        raise NotImplementedError(
            f"{type(module).__name__}: cannot restore buffers computed at construction: {_named(unknown)}; "
            "add a recipe to nodes/sd/loading/build.py BUFFER_RECIPES"
        )


def empty_module(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Construct a module without allocating or initialising what the file will supply.

    Parameters and persistent buffers are left on meta for `fill`; non-persistent buffers are recomputed
    on the CPU. Thread-safe: only this thread's tensor factories see the meta device.
    """
    with torch.device("meta"):
        module = factory()
    _restore_computed_buffers(module)
    return module


def meta_tensors(module: torch.nn.Module) -> list[str]:
    """Names of parameters and buffers still on the meta device (none, once `fill` is done)."""
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    return sorted(name for name, tensor in tensors if tensor is not None and tensor.is_meta)


def new_unet(config: Mapping[str, Any]) -> torch.nn.Module:
    return empty_module(lambda: UNet2DConditionModel.from_config(dict(config)))


def new_vae(config: Mapping[str, Any]) -> torch.nn.Module:
    return empty_module(lambda: AutoencoderKL.from_config(dict(config)))


def new_text_encoder(config: Mapping[str, Any], *, with_projection: bool) -> torch.nn.Module:
    """A CLIP text encoder; `with_projection` gives SDXL's bigG its pooled projection."""
    values = {k: v for k, v in config.items() if not k.startswith("_")}
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return empty_module(lambda: cls(CLIPTextConfig(**values)))


def _named(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def check_keys(expected: Iterable[str], found: Iterable[str], what: str) -> None:
    """Raise if the file's keys for a component differ from what the module needs."""
    expected, found = set(expected), set(found)
    missing, unexpected = expected - found, found - expected
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {_named(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_named(unexpected)}")
        raise ValueError(f"{what} weights do not match its architecture; " + "; ".join(problems))


def fill(
    module: torch.nn.Module,
    rules: list[KeyRule],
    tensors: Mapping[str, torch.Tensor],
    what: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Load `tensors` (original layout, component prefix removed) into `module` through `rules`, strictly.

    Returns the module in eval mode, frozen, on `device` in `dtype`.
    """
    check_keys({rule.source for rule in rules}, tensors.keys(), what)
    shapes = {name: tensor.shape for name, tensor in module.state_dict().items()}
    state = {}
    for rule in rules:
        tensor = to_module(rule, tensors[rule.source], shapes[rule.target])
        state[rule.target] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:  # rules come from the module's own keys, so this is a bug, not a bad file
        raise RuntimeError(f"{what}: key map incomplete; missing {_named(missing)}, unexpected {_named(unexpected)}")
    left_empty = meta_tensors(module)
    if left_empty:  # a tensor neither the file nor a buffer recipe gave: using it would fail or be garbage
        raise RuntimeError(f"{what}: {len(left_empty)} tensors have no values after loading: {_named(left_empty)}")
    module.to(device)
    module.requires_grad_(False)
    return module.eval()
