"""The optimisation loop both phases share: LR schedule, EMA, progress bar, time budget, checkpoints.

A phase is its modules, their EMAs, an optimizer and a `loss_at(step)` function computing one step's
loss from the step number alone (data and noise are seeded by the step), so a run resumed from its
checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from training.checkpointing import load_training_state, save_training_state
from training.ema import EMA

CALIBRATION_STEPS = 30
"""Steps timed (after 2 warm-up steps) to turn a time budget into a step count."""
BUDGET_SAFETY = 0.92
"""Share of the remaining budget the fitted step count may use: the machine may slow down later."""


def lr_at(step: int, total: int, peak: float, warmup: int, min_fraction: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to `min_fraction * peak` at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class Phase:
    """One training phase.

    `relative_cost(step, total)` says how expensive a step is compared with the first ones (the VAE's
    full-resolution steps cost more than its crop steps), for turning a budget into a step count.
    """

    name: str
    modules: dict[str, torch.nn.Module]
    emas: dict[str, EMA]
    optimizer: torch.optim.Optimizer
    loss_at: Callable[[int, int], tuple[torch.Tensor, dict[str, float]]]
    """(step, total_steps) -> (loss to backpropagate, figures to log)."""
    peak_lr: float
    warmup: int
    min_lr_fraction: float
    settings: dict[str, Any]
    """Written into the checkpoint; a resume with different settings is refused."""
    relative_cost: Callable[[int, int], float] = lambda step, total: 1.0
    max_grad_norm: float = 1.0


@dataclass
class PhaseResult:
    step: int
    total_steps: int
    done: bool
    seconds: float
    """Training seconds over all sessions of this phase."""
    steps_per_second: float
    """Measured in this session (0 if it ran no steps)."""
    last_figures: dict[str, float]


def _steps_for_budget(phase: Phase, seconds_left: float, seconds_per_step: float, step: int, cap: int) -> int:
    """The largest total whose remaining steps fit `seconds_left`, weighting steps by their relative cost."""
    low, high = step, cap
    while low < high:
        middle = (low + high + 1) // 2
        cost = sum(phase.relative_cost(s, middle) for s in range(step, middle)) * seconds_per_step
        low, high = (middle, high) if cost <= seconds_left else (low, middle - 1)
    return low


def run_phase(
    phase: Phase,
    checkpoint: Path,
    *,
    total_steps: int,
    seconds: float | None = None,
    checkpoint_every: float = 600.0,
    progress: bool = True,
    stop_at: int | None = None,
) -> PhaseResult:
    """Train `phase` up to its total steps, resuming from `checkpoint` when it exists.

    Args:
        total_steps: the planned steps (the cap, when `seconds` sets the count).
        seconds: wall-clock budget of this session. On a fresh phase the step count is fitted to it
            after `CALIBRATION_STEPS` timed steps and then fixed (saved), so the LR schedule completes;
            on any session the phase stops, checkpointed, when the budget runs out.
        checkpoint_every: seconds between checkpoints (plus one at the end).
        stop_at: end this session after this step (checkpointed), as an interruption would.
    """
    step, spent, fixed = 0, 0.0, seconds is None
    phase.settings = json.loads(json.dumps(phase.settings))  # compare as stored (tuples become lists)
    if checkpoint.exists():
        state = load_training_state(checkpoint, modules=phase.modules, emas=phase.emas, optimizer=phase.optimizer)
        if state["settings"] != phase.settings:
            raise ValueError(f"{checkpoint}: saved with other {phase.name} settings; use a new run folder")
        step, total_steps, spent = state["step"], state["total_steps"], state["seconds"]
        fixed = fixed or state["steps_fixed"]  # a session that ended before calibrating leaves it to this one
    started = last_save = time.perf_counter()
    deadline = None if seconds is None else started + seconds
    figures: dict[str, float] = {}
    timed_from: tuple[int, float] | None = None

    def save() -> None:
        state = {"settings": phase.settings, "step": step, "total_steps": total_steps, "done": step >= total_steps,
                 "seconds": spent + time.perf_counter() - started, "figures": figures, "steps_fixed": fixed}  # fmt: skip
        save_training_state(checkpoint, modules=phase.modules, emas=phase.emas, optimizer=phase.optimizer, state=state)

    session_start_step = step
    bar = tqdm(total=total_steps, initial=step, desc=phase.name, disable=not progress, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip  (a log file gets a line every 30 s)
    for module in phase.modules.values():
        module.train()
    while step < total_steps:
        if (deadline is not None and time.perf_counter() >= deadline) or (stop_at is not None and step >= stop_at):
            break
        lr = lr_at(step, total_steps, phase.peak_lr, phase.warmup, phase.min_lr_fraction)
        for group in phase.optimizer.param_groups:
            group["lr"] = lr
        phase.optimizer.zero_grad(set_to_none=True)
        loss, figures = phase.loss_at(step, total_steps)
        if not torch.isfinite(loss):
            save()
            raise FloatingPointError(f"{phase.name}: loss is {float(loss)} at step {step}; checkpoint kept")
        loss.backward()
        parameters = [p for m in phase.modules.values() for p in m.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(parameters, phase.max_grad_norm)
        phase.optimizer.step()
        for name, ema in phase.emas.items():
            ema.update(phase.modules[name], step)
        step += 1
        figures = {"loss": float(loss.detach()), **figures, "lr": lr}
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in figures.items() if k in ("loss", "l1", "lr")})
        if step - session_start_step == 2:
            timed_from = (step, time.perf_counter())
        if not fixed and timed_from and step - timed_from[0] == CALIBRATION_STEPS:
            per_step = (time.perf_counter() - timed_from[1]) / CALIBRATION_STEPS
            seconds_left = BUDGET_SAFETY * (deadline - time.perf_counter())
            total_steps = _steps_for_budget(phase, seconds_left, per_step, step, total_steps)
            bar.total, fixed = total_steps, True
            bar.write(f"{phase.name}: {1 / per_step:.2f} it/s -> {total_steps} steps fit the budget")
        if time.perf_counter() - last_save >= checkpoint_every:
            save()
            last_save = time.perf_counter()
    bar.close()
    save()
    session_steps = step - session_start_step
    session_seconds = time.perf_counter() - started
    speed = session_steps / session_seconds if session_steps else 0.0
    return PhaseResult(step, total_steps, step >= total_steps, spent + session_seconds, speed, figures)
