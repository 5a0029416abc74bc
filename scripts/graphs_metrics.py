"""The metrics example workflow: the embedded model draws a small batch, and every metric node measures it with the
shipped networks only (the tiny CLIP vision tower, the embedded text encoder, the analytic shapes classifier),
against a folder of procedural renders of the prompt (workflows/input/metrics_reference/, written here).

Imported by scripts/build_workflows.py (GRAPHS and the example inputs).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from nodes.models.embedded import ADAPTERS, EMBEDDED_NAME

PROMPT = "a red circle on a blue background"
REFERENCE_FOLDER = "metrics_reference"
REFERENCE_COUNT = 8


def write_reference_images(input_dir: Path) -> None:
    """REFERENCE_COUNT renders of PROMPT (sizes and positions vary) as the FID/KID/precision-recall reference."""
    from nodes.sd.shapes import render, spec_for

    folder = input_dir / REFERENCE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(REFERENCE_COUNT):
        spec = spec_for("circle", "red", "blue", random.Random(index))
        render(spec)[0].save(folder / f"red_circle_{index}.png")


def metrics() -> dict[str, Any]:
    """txt2img (4 images, 10 steps) measured by FID, KID, IS, precision/recall, LPIPS, CLIP score and conditional
    accuracy; each number shows on its node."""
    tower = ADAPTERS["clip_vision"][1]
    batch = ["8", 0]
    reference = {"reference_folder": REFERENCE_FOLDER}
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 4}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 10, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": batch, "filename_prefix": "metrics"}},
        "10": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": tower}},
        "11": {"class_type": "CLIPVisionFeatureModel", "inputs": {
            "clip_vision": ["10", 0], "clip": ["4", 1], "class_prompts": _class_prompts()}},
        "12": {"class_type": "MetricFID", "inputs": {"images": batch, "feature_model": ["11", 0], **reference}},
        "13": {"class_type": "MetricKID", "inputs": {"images": batch, "feature_model": ["11", 0], **reference,
                                                     "subsets": 20, "subset_size": 4, "seed": 0}},
        "14": {"class_type": "MetricInceptionScore", "inputs": {"images": batch, "feature_model": ["11", 0],
                                                                "splits": 1}},
        "15": {"class_type": "MetricPrecisionRecall", "inputs": {"images": batch, "feature_model": ["11", 0],
                                                                 **reference, "k": 3}},
        "16": {"class_type": "LPIPSLoader", "inputs": {"lpips_name": tower}},
        "17": {"class_type": "MetricLPIPS", "inputs": {"images": batch, "lpips_model": ["16", 0],
                                                       "mode": "diversity"}},
        "18": {"class_type": "MetricCLIPScore", "inputs": {"images": batch, "clip_vision": ["10", 0],
                                                           "clip": ["4", 1], "prompt": PROMPT}},
        "19": {"class_type": "MetricConditionalAccuracy", "inputs": {"images": batch, "prompt": PROMPT,
                                                                     "attribute": "all"}},
    }


def _class_prompts() -> str:
    """The 50 foreground colour x shape captions on the prompt's background (the node's default has all 500
    captions; 50 keep this example fast)."""
    from nodes.metrics.networks import SHAPES_CLASS_PROMPTS

    return SHAPES_CLASS_PROMPTS.rsplit(" on ", 1)[0] + " on a blue background"


GRAPHS = {"metrics": metrics}
