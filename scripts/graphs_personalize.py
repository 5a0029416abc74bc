"""The shipped personalization workflow (issue 19) and the five images of the new concept it learns.

`textual_inversion`: LoadImageSetFromFolderNode reads workflows/input/concept_heart/ (five renders of a heart,
a shape the embedded model never saw, each with its `.txt` caption), VAEEncode, TextualInversionTrain (a short
run: 6 steps, so the test suite stays fast; docs/personalization.md trains 300), then txt2img with
`embedding:heart` through the CLIP the trainer returns.

    python scripts/graphs_personalize.py     # (re)write the concept images and captions
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.models.embedded import EMBEDDED_NAME  # noqa: E402

CONCEPT_FOLDER = "concept_heart"
CONCEPT_IMAGES = 5


def concept_images(folder: Path | None = None) -> list[Path]:
    """Write the five heart renders (`nodes.sd.shapes.concept_spec(0..4)`) and their captions into `folder`."""
    from nodes.sd.shapes import concept_caption, concept_spec, render_concept

    folder = folder or ROOT / "workflows" / "input" / CONCEPT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(CONCEPT_IMAGES):
        spec = concept_spec(index)
        path = folder / f"{index:02d}_heart.png"
        render_concept(spec)[0].save(path)
        path.with_suffix(".txt").write_text(concept_caption(spec) + "\n")
        written.append(path)
    return written


def captions() -> str:
    from nodes.sd.shapes import concept_caption, concept_spec

    return "\n".join(concept_caption(concept_spec(index)) for index in range(CONCEPT_IMAGES))


def textual_inversion() -> dict[str, Any]:
    """Learn `embedding:heart` from the five images, then draw a heart in new colours with it."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "20": {"class_type": "LoadImageSetFromFolderNode", "inputs": {"folder": CONCEPT_FOLDER, "resize_method": "None"}},
        "21": {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["4", 2]}},
        "22": {"class_type": "TextualInversionTrain", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "latents": ["21", 0], "captions": captions(), "token": "heart",
            "init_word": "circle", "num_vectors": 2, "steps": 6, "learning_rate": 0.005, "seed": 0,
            "embedding_name": "heart"}, "_meta": {"title": "Train Textual Inversion (raise steps to 300)"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red embedding:heart on a blue background",
                                                         "clip": ["22", 0]}, "_meta": {"title": "Positive prompt"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 4}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 20, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "textual_inversion"}},
    }  # fmt: skip


GRAPHS = {"textual_inversion": textual_inversion}


if __name__ == "__main__":
    for written in concept_images():
        print(written.relative_to(ROOT))
