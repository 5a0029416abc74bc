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
from nodes.model_patches import sega_sag as guidance_nodes
from training.adapter_eval import NAMED_HUES, colour_fraction, rgb_to_hsv  # noqa: F401  (the tests' measure)

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

def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors taken as flat vectors."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))
