"""Shared by the SEGA and SAG tests: a tiny SD1 engine with the guidance nodes, graph builders, and a
colour-fraction measure for tests that check what an image shows (e.g. "adding 'red' makes it redder")."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tiny_models import SD_SCHEDULE, TinyModules, engine_at, sd1_modules, write_checkpoint

from nodegraph import Engine
from nodegraph.registry import default_registry
from nodes import guidance_nodes

PROMPT = "a red circle on a blue background"


def tiny_engine(root: Path) -> tuple[Engine, TinyModules]:
    """An engine over a models folder holding one tiny random SD1 checkpoint (the same one as
    test_pipeline_vs_diffusers.py), with the guidance nodes registered if the library does not yet."""
    (root / "models" / "checkpoints").mkdir(parents=True)
    modules = sd1_modules(seed=3, text_hidden=64)
    write_checkpoint(modules, root / "models" / "checkpoints" / "tiny.safetensors")
    registry = default_registry()
    for node in guidance_nodes.NODES:
        if node.schema.type_id not in registry:
            registry.register(node)
    return engine_at(root, registry=registry), modules


def base_graph(*, sampler: str = "euler", scheduler: str = "normal", steps: int = 10, cfg: float = 5.0,
               seed: int = 42, size: int = 64) -> dict[str, Any]:
    """API-format txt2img graph up to the latent: loader "4", prompts "6"/"7", sampler "3" (no decode)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
    }


def add_plain_branch(graph: dict[str, Any], sampler_id: str = "30") -> dict[str, Any]:
    """A second KSampler on the unpatched MODEL of loader "4", with sampler "3"'s settings."""
    plain = {**graph["3"], "inputs": {**graph["3"]["inputs"], "model": ["4", 0]}}
    return {**graph, sampler_id: plain}


# -- what an image shows -----------------------------------------------------------------------------

NAMED_HUES: dict[str, float] = {"red": 0.0, "orange": 30.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0,
                                "blue": 240.0, "purple": 275.0, "magenta": 300.0}
"""Hue centres in degrees for `colour_fraction`."""


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """[..., 3] RGB in 0..1 to [..., 3] HSV: hue in degrees [0, 360), saturation and value in 0..1."""
    r, g, b = image.unbind(-1)
    value, _ = image.max(-1)
    low, _ = image.min(-1)
    spread = value - low
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    hue = torch.where(value == r, ((g - b) / safe) % 6, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(spread > 0, hue * 60.0, torch.zeros_like(hue))
    saturation = torch.where(value > 0, spread / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return torch.stack([hue, saturation, value], -1)


def colour_fraction(image: torch.Tensor, colour: str, *, hue_tolerance: float = 25.0, min_saturation: float = 0.35,
                    min_value: float = 0.25) -> float:
    """Fraction of pixels of an IMAGE ([B, H, W, 3] or [H, W, 3], 0..1) that show `colour`.

    A chromatic colour (NAMED_HUES) counts pixels within `hue_tolerance` degrees of its hue that are saturated
    and bright enough; "white", "black" and "grey" count unsaturated pixels by brightness. Hue is judged in
    HSV rather than by RGB distance so shading ("dark red", "light red") still counts as the colour.
    """
    hsv = rgb_to_hsv(image.float().clamp(0, 1))
    hue, saturation, value = hsv.unbind(-1)
    if colour == "white":
        hit = (saturation < min_saturation) & (value > 0.75)
    elif colour == "black":
        hit = value < min_value
    elif colour in ("grey", "gray"):
        hit = (saturation < min_saturation) & (value >= min_value) & (value <= 0.75)
    elif colour in NAMED_HUES:
        distance = (hue - NAMED_HUES[colour]).abs()
        distance = torch.minimum(distance, 360.0 - distance)
        hit = (distance <= hue_tolerance) & (saturation >= min_saturation) & (value >= min_value)
    else:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(NAMED_HUES)} or white/black/grey")
    return float(hit.float().mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors taken as flat vectors."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))
