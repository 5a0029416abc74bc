"""The embedded default model and its adapters: weights, config and model card (package data)."""

from pathlib import Path
from typing import Any

MODEL_DIR = Path(__file__).parent
EMBEDDED_NAME = "nodegraph-tiny-shapes.safetensors"
EMBEDDED_PATH = MODEL_DIR / EMBEDDED_NAME
ADAPTERS: dict[str, tuple[str, str]] = {
    "lora": ("loras", "nodegraph-tiny-shapes-striped.safetensors"),
    "controlnet": ("controlnet", "nodegraph-tiny-shapes-outline.safetensors"),
    "upscale": ("upscale_models", "nodegraph-tiny-shapes-2x.safetensors"),
    "gligen": ("gligen", "nodegraph-tiny-shapes-gligen.safetensors"),
}
"""Adapter kind -> (model folder it is listed in, file name): the style LoRA (trigger ', striped') and the
outline ControlNet, both trained for the embedded model by scripts/train_adapters.py, and the 2x upscaler
(a tiny SRVGGNetCompact) trained on the same shapes by scripts/train_upscaler.py, and the text-box GLIGEN (scripts/train_gligen.py)."""


def default_adapter_path(kind: str) -> Path:
    """Where the shipped adapter of a kind ('lora', 'controlnet') lives."""
    return MODEL_DIR / ADAPTERS[kind][1]


def add_embedded_checkpoint(env: Any) -> None:
    """List the shipped model first under `checkpoints` and its adapters first under `loras`, `controlnet` and
    `upscale_models`, loaded by the same loaders as any user file."""
    if EMBEDDED_PATH.is_file():
        env.models.add_builtin("checkpoints", EMBEDDED_NAME, EMBEDDED_PATH)
    for kind, (folder, name) in ADAPTERS.items():
        if default_adapter_path(kind).is_file():
            env.models.add_builtin(folder, name, default_adapter_path(kind))
