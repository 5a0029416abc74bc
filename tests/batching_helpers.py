"""Prompts on the embedded model for the cross-prompt batching and scale-out tests (ComfyUI's API format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nodes.models.embedded import EMBEDDED_NAME

PROMPTS = ["a red circle on a blue background", "a green square on a white background",
           "a yellow triangle on a black background", "a blue star on a pink background",
           "a purple ring on a yellow background", "an orange circle on a cyan background"]


def embedded_prompt(seed: int, text: str, *, steps: int = 4, size: int = 64, sampler: str = "euler",
                    prefix: str = "batch") -> dict[str, Any]:
    """txt2img on the embedded model: loader, two prompts, sampler, decode, save."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": sampler, "scheduler": "simple", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def saved_pixels(output_dir: Path, ui: dict[str, Any]) -> np.ndarray:
    """The pixels of the first image a SaveImage ui lists."""
    entry = ui["images"][0]
    return np.asarray(Image.open(Path(output_dir) / entry.get("subfolder", "") / entry["filename"]).convert("RGB"))
