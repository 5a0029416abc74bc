"""Workflows of TIME model editing and classifier guidance (merged into build_workflows.GRAPHS)."""

from __future__ import annotations

from typing import Any

from nodes.models.embedded import ADAPTERS


def base(prompt: str) -> dict[str, Any]:
    """build_workflows.base (imported when called: build_workflows imports this module)."""
    from build_workflows import base as default_graph

    return default_graph(prompt)


def model_editing() -> dict[str, Any]:
    """TIME edit "circle" -> "square" (lambda 100 suits the embedded model's 64-wide text encoder), sampled with a
    circle prompt (it draws squares) and saved as a new checkpoint (output/checkpoints/edited_00001_.safetensors)."""
    graph = base("a red circle on a blue background")
    graph["20"] = {"class_type": "TextToImageModelEdit", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "source_prompt": "circle", "destination_prompt": "square",
        "lamb": 100.0, "edit_keys": True, "augment": True, "preserve_prompts": ""}}
    graph["21"] = {"class_type": "CheckpointSave", "inputs": {
        "model": ["20", 0], "clip": ["4", 1], "vae": ["4", 2], "filename_prefix": "checkpoints/edited"}}
    graph["3"]["inputs"]["model"] = ["20", 0]
    graph["9"]["inputs"]["filename_prefix"] = "model_editing"
    return graph


def classifier_guidance() -> dict[str, Any]:
    """Classifier guidance toward "star" on an empty prompt, with CFG off (cfg 1): the shipped noise-aware
    classifier alone decides the shape."""
    graph = base("")
    graph["20"] = {"class_type": "NoisyClassifierLoader", "inputs": {"classifier_name": ADAPTERS["classifier"][1]}}
    graph["21"] = {"class_type": "ClassifierGuidance", "inputs": {
        "model": ["4", 0], "classifier": ["20", 0], "class_name": "star", "scale": 10.0}}
    graph["3"]["inputs"].update(model=["21", 0], cfg=1.0)
    graph["9"]["inputs"]["filename_prefix"] = "classifier_guidance"
    return graph


GRAPHS = {"model-editing": model_editing, "classifier-guidance": classifier_guidance}
