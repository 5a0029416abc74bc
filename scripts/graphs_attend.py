"""Workflows for Attend-and-Excite and MultiDiffusion (issue #18), merged into build_workflows.GRAPHS.

Small settings so the suite runs them quickly: 12 steps, one image, 8 x 8 attention maps for the 128 px model.
"""

from __future__ import annotations

from typing import Any

from nodes.models.embedded import EMBEDDED_NAME


def _graph(prompt: str, width: int, prefix: str, steps: int = 12) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]},
              "_meta": {"title": "Positive prompt"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": 128, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": steps, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def attend_and_excite() -> dict[str, Any]:
    """Both subject words of a two-subject prompt excited; the node encodes the prompt (its CONDITIONING)."""
    graph = _graph("a red circle and a blue square", 128, "attend_and_excite")
    del graph["6"]
    graph["20"] = {"class_type": "AttendAndExcite", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "text": "a red circle and a blue square", "words": "circle, square",
        "scale": 20.0, "max_iter_to_alter": 6, "thresholds": "0:0.05, 3:0.5", "max_refinement_steps": 5,
        "attention_downscale": 2}}
    graph["3"]["inputs"].update(model=["20", 0], positive=["20", 1])
    return graph


def panorama() -> dict[str, Any]:
    """A 512 x 128 panorama from the 128 px model (16-latent-px windows, stride 8), with a region prompt: a star
    in the right quarter (ConditioningSetArea) over the whole-image prompt."""
    graph = _graph("a red circle on a blue background", 512, "panorama")
    graph["10"] = {"class_type": "CLIPTextEncode",
                   "inputs": {"text": "a yellow star on a blue background", "clip": ["4", 1]}}
    graph["11"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["10", 0], "width": 128, "height": 128, "x": 384, "y": 0, "strength": 1.0}}
    graph["12"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0],
                                                                   "conditioning_2": ["11", 0]}}
    graph["20"] = {"class_type": "MultiDiffusion", "inputs": {"model": ["4", 0], "window": 16, "stride": 8,
                                                               "weighting": "gaussian"}}
    graph["3"]["inputs"].update(model=["20", 0], positive=["12", 0])
    return graph


GRAPHS = {"attend-and-excite": attend_and_excite, "panorama": panorama}
