"""Exponential moving average of model weights: the weights we ship.

Averaging over the last ~1/(1-decay) steps removes most of the step-to-step noise of a small batch,
which for diffusion models is worth far more than the last few hundred steps of training.
"""

from __future__ import annotations

import torch


class EMA:
    """Shadow copies of a module's floating-point parameters, updated after each optimizer step.

    The decay warms up as min(decay, (1 + step) / (10 + step)), so a short run (or the first thousand
    steps of a long one) is not dominated by the random initialisation.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = self.current_decay(step)
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Write the averaged weights into `module` (buffers are left as they are)."""
        for name, param in module.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        unexpected = set(state) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")  # fmt: skip
        for name, value in state.items():
            self.shadow[name].copy_(value)
