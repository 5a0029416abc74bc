"""The embedded default model: weights, config and model card (package data)."""

from pathlib import Path

MODEL_DIR = Path(__file__).parent
