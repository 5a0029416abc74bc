"""The embedded default model: weights, config and model card (package data)."""

from pathlib import Path
from typing import Any

MODEL_DIR = Path(__file__).parent
EMBEDDED_NAME = "nodegraph-tiny-shapes.safetensors"
EMBEDDED_PATH = MODEL_DIR / EMBEDDED_NAME


def add_embedded_checkpoint(env: Any) -> None:
    """List the shipped model first under `checkpoints`, loaded by the same loader as any user file."""
    if EMBEDDED_PATH.is_file():
        env.models.add_builtin("checkpoints", EMBEDDED_NAME, EMBEDDED_PATH)
