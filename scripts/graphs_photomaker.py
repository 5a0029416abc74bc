"""The shipped PhotoMaker workflow and its reference images.

`photomaker`: LoadImageSetFromFolderNode reads workflows/input/photomaker_triangle/ (four renders of a red
triangle at other sizes, places and backgrounds), PhotoMakerLoader loads the shipped tiny ID encoder, and
PhotoMakerEncode writes their fused ID embeddings into "a photograph of shape photomaker on a blue background"
(the word "shape" is the class word); the embedded model then draws four images of it.

    python scripts/graphs_photomaker.py     # (re)write the reference images
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.models.embedded import ADAPTERS, EMBEDDED_NAME  # noqa: E402

REFERENCE_FOLDER = "photomaker_triangle"
REFERENCE_SHAPE, REFERENCE_COLOUR = "triangle", "red"
REFERENCE_BACKGROUNDS = ("white", "green", "yellow", "black")
PROMPT = "a photograph of shape photomaker on a blue background"


def reference_images(folder: Path | None = None) -> list[Path]:
    """Write the four reference renders into `folder` (workflows/input/photomaker_triangle by default)."""
    from nodes.sd.shapes import render, spec_for

    folder = folder or ROOT / "workflows" / "input" / REFERENCE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(17)
    written = []
    for index, bg in enumerate(REFERENCE_BACKGROUNDS):
        path = folder / f"{index:02d}_{REFERENCE_COLOUR}_{REFERENCE_SHAPE}.png"
        render(spec_for(REFERENCE_SHAPE, REFERENCE_COLOUR, bg, rng))[0].save(path)
        written.append(path)
    return written


def photomaker(prompt: str = PROMPT, seed: int = 1) -> dict[str, Any]:
    """Four images of the references' shape and colour, on the background the prompt names."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "10": {"class_type": "LoadImageSetFromFolderNode",
               "inputs": {"folder": REFERENCE_FOLDER, "resize_method": "None"},
               "_meta": {"title": "Reference images (the identity)"}},
        "11": {"class_type": "PhotoMakerLoader", "inputs": {"photomaker_model_name": ADAPTERS["photomaker"][1]}},
        "6": {"class_type": "PhotoMakerEncode", "inputs": {"photomaker": ["11", 0], "image": ["10", 0],
                                                           "clip": ["4", 1], "text": prompt},
              "_meta": {"title": "Positive prompt ('shape' is the class word)"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 4}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 20, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "photomaker"}},
    }  # fmt: skip


GRAPHS = {"photomaker": photomaker}


if __name__ == "__main__":
    for written in reference_images():
        print(written.relative_to(ROOT))
