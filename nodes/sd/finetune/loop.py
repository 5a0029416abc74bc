"""A seeded, resumable optimisation loop for fine-tuning a few tensors (LoRA layers, an embedding, K/V weights).

Reproducibility: every random draw of step `i` comes from a generator seeded by (seed, i) (`step_generator`), and
the global torch RNG (for a step function that uses it, e.g. dropout) runs forked, seeded from the seed and saved
with the state. A run resumed from its saved state therefore takes exactly the steps an uninterrupted run takes:
on the CPU the final tensors are bit-identical (tests/test_finetune_core.py checks it).

Resumability: the trainable tensors, the optimizer's state, the global RNG state, the step and the loss history
are written to one safetensors file (tensors) with a JSON part in its metadata, through a temporary file renamed
over the old one, so an interruption leaves the previous state or the new one, never half of one. The state is
written every `save_every` steps, when the run is interrupted (`check_interrupted` raising) and at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

OPTIMIZERS: tuple[str, ...] = ("AdamW", "Adam", "SGD", "RMSprop")
"""The optimizers a training node offers (ComfyUI's TrainLoraNode choices), with torch's defaults."""
STATE_FORMAT = "nodegraph-finetune-state/1"
_STATE_KEY = "finetune_state"

StepFn = Callable[[int, torch.Generator], torch.Tensor]
"""(micro-batch index, generator) -> scalar loss. The index runs 0, 1, 2... over all micro-batches
(step * grad_accumulation + k); every random draw of the step should come from the generator."""


def derived_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed derived from `seed` and `parts` (stable across processes and Python versions)."""
    text = ":".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def step_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of micro-batch `index` of a run seeded `seed`: noise, timesteps and batches drawn
    from it depend on (seed, index) only, so a resumed run draws what the uninterrupted one drew."""
    generator = torch.Generator()
    generator.manual_seed(derived_seed(seed, "step", index))
    return generator


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """One of OPTIMIZERS over `params` at learning rate `lr` (torch's other defaults)."""
    classes = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD,
               "RMSprop": torch.optim.RMSprop}  # fmt: skip
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    return classes[name](params, lr=lr)


@dataclass
class TrainResult:
    """What `train` ends with: the trained tensors' values (detached), the loss of every step so far
    (earlier sessions included), the steps done and the step this session started from."""

    params: dict[str, torch.Tensor]
    losses: list[float]
    step: int
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# -- the saved state ---------------------------------------------------------------------------------


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, fields in state["state"].items():
        for name, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], part: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in part["scalars"].items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": part["param_groups"]}


def save_state(path: str | Path, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               info: Mapping[str, Any]) -> Path:
    """Write params, optimizer state, the global torch RNG state and the JSON `info` atomically."""
    path = Path(path)
    tensors = {f"param/{name}": value.detach().cpu().contiguous().clone() for name, value in params.items()}
    optimizer_tensors, optimizer_json = _optimizer_parts(optimizer)
    tensors.update(optimizer_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    payload = {"format": STATE_FORMAT, **info, "optimizer": optimizer_json}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary), metadata={_STATE_KEY: json.dumps(payload)})
    os.replace(temporary, path)
    return path


def read_state(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensors) of a state file `save_state` wrote.

    Raises:
        ValueError: the file is no fine-tuning state.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if _STATE_KEY not in metadata:
            raise ValueError(f"{path}: not a fine-tuning state file (no {_STATE_KEY!r} metadata)")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    return json.loads(metadata[_STATE_KEY]), tensors


def _restore(path: Path, params: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             settings: Any) -> dict[str, Any]:
    info, tensors = read_state(path)
    if info.get("settings") != settings:
        raise ValueError(f"{path}: saved by a run with other settings ({info.get('settings')!r}, this run "
                         f"{settings!r}); delete it or train into another state file")
    shapes = {name: list(value.shape) for name, value in params.items()}
    saved = {key[len("param/"):]: value for key, value in tensors.items() if key.startswith("param/")}
    if {name: list(value.shape) for name, value in saved.items()} != shapes:
        raise ValueError(f"{path}: holds other trainable tensors than this run's ({len(saved)} saved, "
                         f"{len(shapes)} here, or other shapes)")
    with torch.no_grad():
        for name, value in params.items():
            value.copy_(saved[name])
    optimizer.load_state_dict(_optimizer_state(tensors, info["optimizer"]))
    torch.set_rng_state(tensors["rng/torch"])
    return info


# -- the loop ----------------------------------------------------------------------------------------


def train(
    step_fn: StepFn,
    params: Mapping[str, torch.Tensor],
    *,
    steps: int,
    seed: int,
    lr: float,
    optimizer: str = "AdamW",
    grad_accumulation: int = 1,
    max_grad_norm: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    check_interrupted: Callable[[], None] | None = None,
    state_path: str | Path | None = None,
    save_every: int = 0,
    settings: Any = None,
    step_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> TrainResult:
    """Optimise `params` (leaf tensors with requires_grad) for `steps` optimizer steps of `step_fn`'s loss.

    Args:
        step_fn: computes one micro-batch's loss (see StepFn); called `grad_accumulation` times per step, each
            loss divided by that count before backward (the mean gradient over the micro-batches).
        params: the trainable tensors by name (the names key the saved state).
        steps: optimizer steps in all (a resumed run continues from its saved step up to this).
        seed: seeds each micro-batch's generator and the forked global RNG.
        lr: constant learning rate.
        optimizer: one of OPTIMIZERS.
        max_grad_norm: clip the gradient's total norm to this (None: no clipping).
        progress: called after every step with (steps done, steps, loss of the step).
        check_interrupted: called before every step; if it (or `progress`) raises because the run was stopped,
            the state is saved first and the exception goes on to the caller.
        state_path: where the state is saved and resumed from (None: no state, no resume).
        save_every: also save every this many steps (0: only on interruption and at the end).
        settings: JSON-able description of the run (data, hyper-parameters); a saved state with other settings
            is refused rather than resumed.
        step_context: entered around each micro-batch's forward and backward pass (`loss.replaced_weights`,
            for gradient checkpointing through replaced weights).

    Returns:
        The trained values, the loss history of all sessions, and where this session started.
    """
    if steps < 1 or grad_accumulation < 1:
        raise ValueError(f"steps ({steps}) and grad_accumulation ({grad_accumulation}) must be at least 1")
    for name, value in params.items():
        if not (value.is_leaf and value.requires_grad):
            raise ValueError(f"trainable tensor {name!r} must be a leaf tensor with requires_grad=True")
    settings = json.loads(json.dumps(settings))  # compared as stored: tuples become lists
    opt = make_optimizer(optimizer, list(params.values()), lr)
    state_file = Path(state_path) if state_path is not None else None
    step, losses = 0, []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "global"))
        if state_file is not None and state_file.is_file():
            info = _restore(state_file, params, opt, settings)
            step, losses = int(info["step"]), list(info["losses"])
        resumed_from = step

        def save() -> None:
            if state_file is not None:
                save_state(state_file, params, opt, {"step": step, "losses": losses, "settings": settings,
                                                     "seed": seed, "optimizer_name": optimizer})

        while step < steps:
            if check_interrupted is not None:
                try:
                    check_interrupted()
                except BaseException:
                    save()
                    raise
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(grad_accumulation):
                index = step * grad_accumulation + micro
                with step_context() if step_context is not None else contextlib.nullcontext():
                    loss = step_fn(index, step_generator(seed, index))
                    if not torch.isfinite(loss):
                        save()
                        raise FloatingPointError(f"fine-tuning loss is {float(loss)} at step {step}; state kept")
                    (loss / grad_accumulation).backward()
                total += float(loss.detach()) / grad_accumulation
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
            opt.step()
            step += 1
            losses.append(total)
            if progress is not None:
                try:
                    progress(step, steps, total)  # a run's progress report may also be where it stops
                except BaseException:
                    save()
                    raise
            if save_every and step % save_every == 0 and step < steps:
                save()
        save()
    trained = {name: value.detach().clone() for name, value in params.items()}
    return TrainResult(trained, losses, step, resumed_from)
