"""Shared by tests/test_model_patches_*.py: the embedded model through the engine, with a patch node (or a chain
of them) between the checkpoint loader and KSampler, and image measures for "the effect goes the paper's way"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodegraph.formats.api import from_api
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH

PROMPT = "a red circle on a blue background"
HAS_EMBEDDED = EMBEDDED_PATH.is_file()

Patch = tuple[str, dict[str, Any]]


def graph(*patches: Patch, steps: int = 6, cfg: float = 7.0, seed: int = 1, size: int = 128,
          sampler: str = "euler", scheduler: str = "normal", decode: bool = False,
          ckpt: str = EMBEDDED_NAME) -> dict[str, Any]:
    """API-format txt2img graph: loader "4", prompts "6"/"7", sampler "3", decode "8"; patch nodes "20", "21", ...
    chained in order on the MODEL (a patch whose inputs name "clip" goes on the CLIP instead)."""
    g: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
    }
    model, clip = ["4", 0], ["4", 1]
    for k, (class_type, inputs) in enumerate(patches):
        node = str(20 + k)
        if class_type == "CLIPAttentionMultiply":
            g[node] = {"class_type": class_type, "inputs": {"clip": clip, **inputs}}
            clip = [node, 0]
        else:
            g[node] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
            model = [node, 0]
    g["3"]["inputs"]["model"] = model
    g["6"]["inputs"]["clip"] = clip
    g["7"]["inputs"]["clip"] = clip
    if decode:
        g["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    return g


def latent(engine: Any, g: dict[str, Any]) -> torch.Tensor:
    return engine.run(from_api(g), outputs=["3"]).values["3"][0].samples


def image(engine: Any, g: dict[str, Any]) -> torch.Tensor:
    """The decoded image [B, H, W, C], unclamped (values outside 0..1 are what saturation measures count)."""
    return engine.run(from_api(g), outputs=["8"]).values["8"][0]


def clipped_fraction(img: torch.Tensor) -> float:
    """Share of channel values at or beyond the 0..1 range (over-saturated pixels)."""
    return float(((img <= 0.0) | (img >= 1.0)).float().mean())


def high_frequency_energy(img: torch.Tensor) -> float:
    """Mean squared 4-neighbour Laplacian of the grey image: fine structure and edges."""
    grey = img.clamp(0, 1).mean(-1)
    lap = 4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
    return float((lap**2).mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def engine_for(root: Path) -> Any:
    from tiny_models import engine_at

    return engine_at(root)
