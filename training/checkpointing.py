"""Resumable training checkpoints: one safetensors file, written atomically, never a pickle.

Tensors (model weights, EMA shadows, optimizer moments, RNG states) are safetensors entries; everything
else (step, optimizer hyper-parameters, settings, metrics) is JSON in the file's metadata. A checkpoint
is written to a temporary file in the same folder and renamed over the old one, so an interrupted
session leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from training.ema import EMA

STATE_KEY = "training_state"


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer's state into tensors `optimizer/<param>/<field>` plus a JSON part."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, fields in state["state"].items():
        for name, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = _cpu(value)
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], json_part: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in json_part["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": json_part["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    """The global torch (and CUDA) RNG states as uint8 tensors."""
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda/{index}"] = state
    return out


def save_training_state(
    path: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    emas: Mapping[str, EMA],
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
) -> Path:
    """Write modules, EMA shadows, optimizer, RNG states and the JSON `state` (step, settings...) atomically."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        tensors.update({f"model/{name}/{k}": _cpu(v) for k, v in module.state_dict().items()})
    for name, ema in emas.items():
        tensors.update({f"ema/{name}/{k}": _cpu(v) for k, v in ema.state_dict().items()})
    optimizer_tensors, optimizer_json = _optimizer_tensors(optimizer)
    tensors.update(optimizer_tensors)
    tensors.update(rng_tensors())
    payload = {**state, "optimizer": optimizer_json, "python_random": random.getstate()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary), metadata={STATE_KEY: json.dumps(payload)})
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """Only the JSON part of a checkpoint (cheap: no tensors are read)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if STATE_KEY not in metadata:
        raise ValueError(f"{path}: not a training checkpoint (no {STATE_KEY!r} metadata)")
    return json.loads(metadata[STATE_KEY])


def read_tensors(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors under `prefix` (e.g. 'ema/unet/'), with the prefix removed; all of them by default."""
    with safe_open(str(path), framework="pt") as handle:
        keys = [key for key in handle.keys() if key.startswith(prefix)]  # noqa: SIM118 (safe_open is no dict)
        return {key[len(prefix) :]: handle.get_tensor(key) for key in keys}


def load_training_state(
    path: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    emas: Mapping[str, EMA],
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Restore everything `save_training_state` wrote; returns the JSON state. Shapes must match exactly."""
    state = read_state(path)
    tensors = read_tensors(path)
    for name, module in modules.items():
        prefix = f"model/{name}/"
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, ema in emas.items():
        prefix = f"ema/{name}/"
        ema.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    optimizer.load_state_dict(_optimizer_state(tensors, state.pop("optimizer")))
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = state.pop("python_random")
    random.setstate((version, tuple(internal), gauss))
    return state
