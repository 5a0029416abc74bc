"""NOISE: where a sampling run's starting noise comes from (ComfyUI's RandomNoise / DisableNoise), and AddNoise.

Noise is drawn on the CPU from a generator seeded with the payload's seed, so a seed gives the same latent on
any device. The same seed also seeds every step's noise (the sampler's `noise_sampler`), so a disabled NOISE
still carries one: 0 for DisableNoise, as in ComfyUI, and the node's seed for KSamplerAdvanced's "disable".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nodes.sd.types import Latent


def prepare_noise(samples: Tensor, seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """Initial noise like `samples` from a CPU generator: draw k is batch index k's noise (ComfyUI's
    prepare_noise, drawing per item so any batch item equals a single run with its index)."""
    indices = list(range(samples.shape[0])) if batch_index is None else list(batch_index)
    if len(indices) != samples.shape[0]:
        raise ValueError(f"batch_index has {len(indices)} entries for a batch of {samples.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    wanted, draws = set(indices), {}
    for k in range(max(indices) + 1):
        noise = torch.randn((1, *samples.shape[1:]), generator=generator, dtype=torch.float32)
        if k in wanted:
            draws[k] = noise
    return torch.cat([draws[k] for k in indices])


@dataclass(frozen=True)
class Noise:
    """NOISE: a seed, and whether the run starts from seeded noise (True) or from the latent as it is."""

    seed: int = 0
    enabled: bool = True

    def initial(self, latent: Latent) -> Tensor:
        """The starting noise for `latent` (float32, CPU): seeded per batch index, or zeros when disabled."""
        samples = latent.samples
        if not self.enabled:
            return torch.zeros(samples.shape, dtype=torch.float32)
        indices = list(latent.batch_index) if latent.batch_index is not None else None
        return prepare_noise(samples, self.seed, indices)


def noise_scale_of(sigmas: Tensor) -> float:
    """How much noise AddNoise adds for a schedule: the span |sigma_first - sigma_last| (one sigma: itself)."""
    if len(sigmas) > 1:
        return abs(float(sigmas[0]) - float(sigmas[-1]))
    return float(sigmas[0])


def add_noise(noise: Noise, sigmas: Tensor, latent: Latent) -> Latent:
    """ComfyUI's AddNoise: latent + noise * |sigmas[0] - sigmas[-1]|, non-finite values set to 0.

    Our latents are stored scaled (what the UNet sees), so ComfyUI's process_latent_in/out pair is the
    identity here. An empty schedule returns the latent unchanged.
    """
    if len(sigmas) == 0:
        return latent
    samples = latent.samples.detach().to(torch.float32).cpu()
    noisy = samples + noise.initial(latent) * noise_scale_of(sigmas)
    return replace(latent, samples=torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0))
