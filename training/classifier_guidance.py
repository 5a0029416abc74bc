"""Training the noise-aware latent classifier for classifier guidance (Dhariwal & Nichol 2021, arXiv 2105.05233).

Data: renders of the shapes generator (their own seed stream, disjoint from the UNet's), encoded once by the
embedded model's VAE exactly as VAEEncode does (posterior mean, scaled), so the classifier sees the latents the
UNet denoises. Each step draws a fresh training timestep t per latent (uniform over SD's 1000), noises it to
x_t = x0 + sigma_t * eps and trains cross-entropy on both heads (shape and foreground colour). Everything is a
function of the seed and the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from nodes.sd.noisy_classifier import NoisyLatentClassifier
from nodes.sd.schedules import model_sigmas
from nodes.sd.shapes import COLOURS, SHAPES, ShapeSpec
from nodes.sd.types import VaeHandle
from training.data import render_specs, stream_specs

CLASSIFIER_STREAM = 9
"""Seed stream of the classifier's images (the UNet's streams are 0-7)."""
HEADS: dict[str, tuple[str, ...]] = {"shape": tuple(SHAPES), "colour": tuple(COLOURS)}


def labels(specs: list[ShapeSpec]) -> dict[str, torch.Tensor]:
    """Class indices per head for specs (shape; foreground colour)."""
    return {"shape": torch.tensor([HEADS["shape"].index(s.shape) for s in specs]),
            "colour": torch.tensor([HEADS["colour"].index(s.fg) for s in specs])}


@torch.no_grad()
def encoded_dataset(vae: VaeHandle, count: int, *, run_seed: int = 0, offset: int = 0,
                    batch_size: int = 64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(latents [N, 4, 16, 16] as the UNet sees them, labels) of `count` renders of the classifier's stream."""
    from nodes.sd.vae import encode

    specs = stream_specs(run_seed, CLASSIFIER_STREAM, offset, count)
    chunks = []
    for start in range(0, count, batch_size):
        pixels = (render_specs(specs[start:start + batch_size], 128) + 1) / 2  # IMAGE range 0..1
        chunks.append(encode(vae, pixels.permute(0, 2, 3, 1), batch_size=batch_size))
    return torch.cat(chunks), labels(specs)


def noisy_batch(latents: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, sigma) with a uniform training timestep per latent."""
    sigmas = model_sigmas(alphas_cumprod).float()
    t = torch.randint(0, sigmas.shape[0], (latents.shape[0],), generator=generator)
    sigma = sigmas[t]
    noise = torch.randn(latents.shape, generator=generator)
    return latents + sigma[:, None, None, None] * noise, sigma


def train_classifier(latents: torch.Tensor, targets: dict[str, torch.Tensor], alphas_cumprod: torch.Tensor, *,
                     minutes: float, max_steps: int = 20000, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     init: NoisyLatentClassifier | None = None,
                     log: Callable[[str], None] = print) -> tuple[NoisyLatentClassifier, dict[str, Any]]:
    """Train until `max_steps` or `minutes` (AdamW, cosine decay over the steps, EMA-free), from `init`'s weights
    when given (a further session: fresh optimiser and schedule); returns the classifier and a record of the run."""
    torch.manual_seed(seed)
    classifier = NoisyLatentClassifier(HEADS)
    if init is not None:
        classifier.load_state_dict(init.state_dict())
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    started, step, losses = time.monotonic(), 0, []
    deadline = started + minutes * 60
    while step < max_steps and time.monotonic() < deadline:
        for group in optimiser.param_groups:
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / max_steps)).item()))
        rows = torch.randint(0, latents.shape[0], (batch_size,), generator=generator)
        x, sigma = noisy_batch(latents[rows], alphas_cumprod, generator)
        logits = classifier(x, sigma)
        loss = sum(torch.nn.functional.cross_entropy(logits[head], targets[head][rows]) for head in HEADS)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if step % 200 == 0:
            log(f"step {step}: loss {sum(losses[-200:]) / 200:.4f} ({time.monotonic() - started:.0f} s)")
    record = {"steps": step, "seconds": round(time.monotonic() - started, 1), "batch_size": batch_size, "lr": lr,
              "final_loss": round(sum(losses[-200:]) / max(1, len(losses[-200:])), 4), "seed": seed}
    return classifier.eval().requires_grad_(False), record


@torch.no_grad()
def accuracy_by_sigma(classifier: NoisyLatentClassifier, latents: torch.Tensor, targets: dict[str, torch.Tensor],
                      sigmas: tuple[float, ...] = (0.1, 1.0, 3.0, 7.0, 14.6), seed: int = 1) -> dict[str, dict[str, float]]:
    """Accuracy of each head on held-out latents noised to each sigma."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    for sigma in sigmas:
        noise = torch.randn(latents.shape, generator=generator)
        logits = classifier(latents + sigma * noise, torch.full((latents.shape[0],), sigma))
        out[f"{sigma:g}"] = {head: round(float((logits[head].argmax(1) == targets[head]).float().mean()), 4)
                             for head in HEADS}
    return out
