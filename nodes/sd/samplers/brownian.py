"""Brownian-tree noise for SDE samplers, seeded the way k-diffusion and ComfyUI seed theirs.

An SDE sampler's noise over [sigma_next, sigma] must be the increment of one Brownian path W, so that
sub-steps (dpmpp_sde's midpoint) and different step counts see consistent noise. torchsde's BrownianTree
(Li et al. 2020, "Scalable Gradients for Stochastic Differential Equations", the Brownian interval of Kidger et
al. 2021) gives W at any time from a seed without storing the path. ComfyUI builds one tree per run on the CPU
over [smallest non-zero sigma, largest sigma] with w0 = 0 and entropy = seed, queries it with float32 times,
and normalises the increment by sqrt|t1 - t0|; doing the same makes a seed give ComfyUI's picture.
"""

from __future__ import annotations

import warnings

import torch
import torchsde
from torch import Tensor

from nodes.sd.samplers_multistep import to_device_async

# torchsde compares a query with its interval's ends after float rounding and warns when sigma_min or sigma_max
# itself is asked for; the value it returns is the end point's, so the warning says nothing here
warnings.filterwarnings("ignore", message="Should have t[ab]", category=UserWarning)


class BrownianTreeNoise:
    """Normalised increments (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma| of one seeded Brownian tree.

    Args:
        x: the noise's shape, device and dtype; the tree itself lives on the CPU in float32.
        sigma_min: the smallest non-zero sigma of the run (the tree's start time).
        sigma_max: the largest sigma of the run (its end time).
        seed: the tree's entropy.
    """

    def __init__(self, x: Tensor, sigma_min: float, sigma_max: float, seed: int) -> None:
        t0 = torch.tensor(min(sigma_min, sigma_max), dtype=torch.float32)
        t1 = torch.tensor(max(sigma_min, sigma_max), dtype=torch.float32)
        self.t0, self.t1, self.shape = float(t0), float(t1), tuple(x.shape)
        self.device, self.dtype = x.device, x.dtype
        # a one-point range (a single non-zero sigma) never asks for noise: no tree to build
        self.tree = (
            torchsde.BrownianTree(t0, torch.zeros(self.shape, dtype=torch.float32), t1, entropy=seed)
            if self.t1 > self.t0
            else None
        )

    def draw(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
        """The normalised increment on the CPU (float32); sigmas are host values, clamped into the tree's range."""
        a = torch.as_tensor(sigma, dtype=torch.float32).detach().cpu()
        b = torch.as_tensor(sigma_next, dtype=torch.float32).detach().cpu()
        low, high, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        low, high = low.clamp(self.t0, self.t1), high.clamp(self.t0, self.t1)
        if self.tree is None or float(high) == float(low):
            return torch.zeros(self.shape, dtype=torch.float32)
        return self.tree(low, high) * sign / (b - a).abs().sqrt()

    def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
        return to_device_async(self.draw(sigma, sigma_next), self.device, self.dtype)


def schedule_range(sigmas: Tensor) -> tuple[float, float]:
    """(smallest non-zero sigma, largest sigma) of a schedule: the interval ComfyUI builds its tree over."""
    host = sigmas.detach().cpu().to(torch.float32)
    positive = host[host > 0]
    if positive.numel() == 0:
        return 0.0, 0.0
    return float(positive.min()), float(host.max())
