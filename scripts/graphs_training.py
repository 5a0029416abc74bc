"""The shipped training workflow (issue 19) and its five example images with captions.

`lora_training`: LoadImageTextSetFromFolderNode reads workflows/input/training_striped/ (five 64 px renders in
the striped style, each with its `.txt` caption), VAEEncode, TrainLoraNode (a short run: 8 steps, rank 4),
SaveLoRANode into output/loras/, and txt2img with the trained model. Short enough for the test suite; a real run
raises `steps` (see docs/training_nodes.md).

    python scripts/graphs_training.py     # (re)write the example images and captions
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.models.embedded import EMBEDDED_NAME  # noqa: E402

TRAINING_FOLDER = "training_striped"
TRAINING_SET = (("star", "yellow", "purple"), ("circle", "red", "white"), ("square", "blue", "orange"),
                ("triangle", "green", "black"), ("ring", "pink", "cyan"))
"""(shape, foreground, background) of the five example images."""
RESOLUTION = 64


def training_images(folder: Path | None = None) -> list[Path]:
    """Write the five striped renders and their captions (`<name>.txt`) into `folder`."""
    from nodes.sd.shapes import render_striped, spec_for, styled_caption

    folder = folder or ROOT / "workflows" / "input" / TRAINING_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (shape, fg, bg) in enumerate(TRAINING_SET):
        spec = spec_for(shape, fg, bg, random.Random(index), mention_size=0.0, mention_position=0.0)
        path = folder / f"{index:02d}_{shape}.png"
        render_striped(spec, RESOLUTION)[0].save(path)
        path.with_suffix(".txt").write_text(styled_caption(spec) + "\n")
        written.append(path)
    return written


def lora_training() -> dict[str, Any]:
    """Train a LoRA on the example folder, save it, and sample with the trained model."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "10": {"class_type": "LoadImageTextSetFromFolderNode",
               "inputs": {"folder": TRAINING_FOLDER, "clip": ["4", 1], "resize_method": "None", "width": -1,
                          "height": -1}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "12": {"class_type": "TrainLoraNode", "inputs": {
            "model": ["4", 0], "latents": ["11", 0], "positive": ["10", 1], "batch_size": 2,
            "grad_accumulation_steps": 1, "steps": 8, "learning_rate": 0.002, "rank": 4, "optimizer": "AdamW",
            "loss_function": "MSE", "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32", "algorithm": "LoRA",
            "gradient_checkpointing": False, "existing_lora": "[None]"}},
        "13": {"class_type": "SaveLoRANode",
               "inputs": {"lora": ["12", 1], "prefix": "loras/trained_striped", "steps": ["12", 3]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red star on a blue background, striped",
                                                         "clip": ["4", 1]}, "_meta": {"title": "Positive prompt"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 20, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["12", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "lora_training"}},
    }


GRAPHS = {"lora_training": lora_training}


if __name__ == "__main__":
    for written in training_images():
        print(written.relative_to(ROOT))
