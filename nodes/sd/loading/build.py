"""Build modules from configs and fill them strictly from original-layout tensors.

Modules are constructed with their parameters on the meta device (no random init of hundreds of millions
of weights just to overwrite them), then the file's tensors are assigned in place. Every key must be
accounted for: a missing or unexpected key is an error naming it, never a silently random weight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.sd.loading.keymap import KeyRule, to_module

_META_LOCK = threading.Lock()
_SHOWN = 5


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Put every parameter registered inside on the meta device; buffers stay real (CLIP's position_ids).

    This is what accelerate's `init_empty_weights(include_buffers=False)` does; the lock keeps two
    threads from patching `register_parameter` at once.
    """
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    with _META_LOCK:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def empty_module(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Construct a module without allocating or initialising its parameters."""
    with _parameters_on_meta():
        return factory()


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
    module.to(device)
    module.requires_grad_(False)
    return module.eval()
