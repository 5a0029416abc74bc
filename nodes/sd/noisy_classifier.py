"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", arXiv 2105.05233):
a small classifier p(y | x_t, sigma) trained on noisy latents, whose gradient steers sampling toward class y.

The paper shifts each reverse step's mean by s * Sigma * grad_x log p(y | x_t). In our denoiser form
(x = x0 + sigma * eps, D(x, sigma) -> x0) the score is (D(x, sigma) - x) / sigma^2, so adding
s * grad_x log p(y | x) to the score is the same as

    D'(x, sigma) = D(x, sigma) + s * sigma^2 * grad_x log p(y | x, sigma)

(k-diffusion's classifier-guidance wrapper), applied after CFG as a "guidance" ModelPatch: it composes with
every sampler, with or without CFG, and with the other guidance patches.

The classifier reads the variance-preserving input x / sqrt(sigma^2 + 1) (what the UNet reads) plus a sinusoidal
embedding of log sigma that scales and shifts each block's features (FiLM). It may have several heads (the
embedded one: shape and foreground colour); a class name picks its head. Files are safetensors with the
architecture and class names in the metadata key `nodegraph_classifier`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nodes.sd.types import ModelPatch

METADATA_KEY = "nodegraph_classifier"
PATCH_NAME = "classifier_guidance"


def sigma_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of log(sigma) / 4 (the EDM noise conditioning c_noise), [B] -> [B, dim]."""
    half = dim // 2
    frequencies = torch.exp(-math.log(1000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    angles = (sigma.float().log() / 4.0)[:, None] * frequencies[None] * 100.0
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Block(nn.Module):
    """GroupNorm, SiLU, 3x3 convolution, modulated by the noise level (scale and shift), with a residual."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * channels)

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        scale, shift = self.film(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.conv(nn.functional.silu(h))


class NoisyLatentClassifier(nn.Module):
    """A noise-aware classifier on SD latents: [B, C, H, W] x at noise level sigma -> logits per head.

    Args:
        heads: head name -> class names (e.g. {"shape": ("circle", ...)}).
        in_channels: latent channels.
        widths: channels of each resolution level (each level after the first halves the resolution).
        embed_dim: width of the noise-level embedding.
    """

    def __init__(self, heads: dict[str, tuple[str, ...]], in_channels: int = 4,
                 widths: tuple[int, ...] = (32, 64, 96), embed_dim: int = 64) -> None:
        super().__init__()
        self.config = {"heads": {k: list(v) for k, v in heads.items()}, "in_channels": in_channels,
                       "widths": list(widths), "embed_dim": embed_dim}
        self.heads_classes = {name: tuple(classes) for name, classes in heads.items()}
        self.embed_dim = embed_dim
        self.embed = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(_Block(width, embed_dim) for width in widths)
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.norm_out = nn.GroupNorm(8, widths[-1])
        self.heads = nn.ModuleDict({name: nn.Linear(widths[-1], len(classes)) for name, classes in heads.items()})

    def forward(self, x: Tensor, sigma: Tensor) -> dict[str, Tensor]:
        """Logits per head for latents x (sigma-parametrised: x0 + sigma * noise) at noise levels sigma [B]."""
        sigma = sigma.reshape(-1).to(x.device, torch.float32).expand(x.shape[0])
        scaled = x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
        embedding = self.embed(sigma_embedding(sigma, self.embed_dim))
        h = self.conv_in(scaled)
        for index, block in enumerate(self.blocks):
            if index > 0:
                h = self.downs[index - 1](h)
            h = block(h, embedding)
        pooled = nn.functional.silu(self.norm_out(h)).mean(dim=(2, 3))
        return {name: head(pooled) for name, head in self.heads.items()}

    def find_class(self, class_name: str) -> tuple[str, int]:
        """(head, index) of a class name; an error lists the names this classifier knows."""
        for head, classes in self.heads_classes.items():
            if class_name in classes:
                return head, classes.index(class_name)
        known = ", ".join(f"{head}: {'/'.join(classes)}" for head, classes in self.heads_classes.items())
        raise ValueError(f"the classifier has no class {class_name!r}; it knows {known}")


def save_classifier(classifier: NoisyLatentClassifier, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the weights (float32) with the architecture and class names in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in classifier.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(classifier.config)}
    if extra:
        metadata["training"] = json.dumps(extra)
    save_file(tensors, str(path), metadata=metadata)


def load_classifier(path: str | Path) -> NoisyLatentClassifier:
    """A classifier written by `save_classifier` (eval mode, float32, on the CPU)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: not a noisy-latent classifier (no {METADATA_KEY!r} metadata)")
    config = json.loads(metadata[METADATA_KEY])
    classifier = NoisyLatentClassifier({k: tuple(v) for k, v in config["heads"].items()}, config["in_channels"],
                                       tuple(config["widths"]), config["embed_dim"])
    classifier.load_state_dict(load_file(str(path)))
    return classifier.eval().requires_grad_(False)


@dataclass(frozen=True)
class ClassifierHandle:
    """NOISY_CLASSIFIER: a loaded classifier (or the model manager's ref to one) and where it came from."""

    classifier_ref: Any
    source: str = ""
    heads: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def classifier(self) -> NoisyLatentClassifier:
        from nodegraph.models import resolve

        return resolve(self.classifier_ref)


def log_probability_gradient(classifier: NoisyLatentClassifier, x: Tensor, sigma: Tensor, head: str,
                             index: int) -> Tensor:
    """grad_x sum_b log p(y = index | x_b, sigma_b) for one head: [B, C, H, W] (float32, like x)."""
    with torch.enable_grad():
        x_in = x.detach().float().requires_grad_(True)
        logits = classifier(x_in, sigma.detach())[head]
        log_p = torch.log_softmax(logits, dim=-1)[:, index].sum()
        (gradient,) = torch.autograd.grad(log_p, x_in)
    return gradient.to(x.dtype)


def classifier_guidance_patch(handle: ClassifierHandle, class_name: str, scale: float) -> ModelPatch:
    """A "guidance" ModelPatch: x0 += scale * sigma^2 * grad_x log p(class | x, sigma), after CFG (see module doc)."""
    classifier = handle.classifier
    head, index = classifier.find_class(class_name)

    def term(inputs: Any) -> Tensor:
        x = inputs.x
        model = handle.classifier.to(x.device)
        sigma = inputs.sigma.reshape(-1).to(x.device, torch.float32).expand(x.shape[0])
        gradient = log_probability_gradient(model, x, sigma, head, index)
        return inputs.denoised + scale * sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2 * gradient

    def apply(cfg_denoiser: Any) -> Callable[[], None] | None:
        if scale == 0.0:  # adds nothing, and a term present would make cfg 1 evaluate the negative as well
            return None
        cfg_denoiser.guidance_terms.append(term)
        return lambda: cfg_denoiser.guidance_terms.remove(term)

    return ModelPatch(kind="guidance", name=PATCH_NAME, apply=apply,
                      options={"class_name": class_name, "scale": scale, "classifier": handle.source})
