"""Graph builders for the X/Y/Z plot examples (API format, for scripts/build_workflows.py and the study)."""

from __future__ import annotations

from typing import Any

from nodes.models.embedded import EMBEDDED_NAME

STUDY_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m")
STUDY_STEPS = (2, 4, 8, 12, 20)
STUDY_PROMPT = "a yellow star on a purple background"

X_STRING, Y_INT, PLOT = 2, 3, 9
"""XYZ Plot's output slots used here: x as STRING, y as INT, the plot."""


def samplers_steps(samplers: tuple[str, ...] = STUDY_SAMPLERS, steps: tuple[int, ...] = STUDY_STEPS,
                   prompt: str = STUDY_PROMPT, batch_size: int = 4, seed: int = 7, prompts: tuple[str, ...] = (),
                   scheduler: str = "simple", cfg: float = 6.0) -> dict[str, Any]:
    """Samplers (x) x steps (y) on the embedded model at 128 px, one KSampler call per cell, laid out by XYZ Grid.

    With `prompts`, a z axis sweeps the prompt as well (the study script uses it for per-cell metrics)."""
    graph: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]},
              "_meta": {"title": "Positive prompt"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": batch_size}},
        "20": {"class_type": "XYZSamplerValues", "inputs": {"widget": "sampler_name", "values": ", ".join(samplers)}},
        "21": {"class_type": "XYZValueList", "inputs": {"title": "steps", "kind": "INT",
                                                        "values": ", ".join(str(s) for s in steps)}},
        "22": {"class_type": "XYZPlot", "inputs": {"x": ["20", 0], "y": ["21", 0]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": ["22", Y_INT], "cfg": cfg, "sampler_name": ["22", X_STRING],
            "scheduler": scheduler, "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "23": {"class_type": "XYZGrid", "inputs": {"images": ["8", 0], "plot": ["22", PLOT],
                                                   "filename_prefix": "xyz_samplers_steps", "z_layout": "side by side",
                                                   "font_size": 0, "gap": 4}},
    }
    if prompts:
        graph["24"] = {"class_type": "XYZValueList", "inputs": {"title": "prompt", "kind": "STRING",
                                                                "values": "\n".join(prompts)}}
        graph["22"]["inputs"]["z"] = ["24", 0]
        graph["6"]["inputs"]["text"] = ["22", 8]  # z as STRING
    return graph


GRAPHS = {"xyz-samplers-steps": samplers_steps}
