"""Workflows of the embedded InstructPix2Pix and depth-to-image models (merged into build_workflows.GRAPHS).

Both read workflows/input/example.png (a blue square on yellow) and decode in node "8" like every shipped
workflow.
"""

from __future__ import annotations

from typing import Any

from nodes.models.embedded import ADAPTERS

PIX2PIX_INSTRUCTION = "make the square green"
DEPTH_PROMPT = "a red square on a white background"


def instruct_pix2pix(instruction: str = PIX2PIX_INSTRUCTION, seed: int = 1, steps: int = 20, text_scale: float = 5.0,
                     image_scale: float = 1.5) -> dict[str, Any]:
    """Edit the example image as `instruction` says: DualCFGGuider gives the instruction's (text) and the input
    image's guidance scales over (image + text, image alone, neither), as Brooks et al. 2023, eq. 3."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ADAPTERS["instruct_pix2pix"][1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": instruction, "clip": ["4", 1]},
              "_meta": {"title": "Instruction"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "11": {"class_type": "InstructPixToPixConditioning",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0]}},
        "12": {"class_type": "DualCFGGuider", "inputs": {
            "model": ["4", 0], "cond1": ["11", 0], "cond2": ["11", 1], "negative": ["7", 0],
            "cfg_conds": text_scale, "cfg_cond2_negative": image_scale, "style": "regular"}},
        "13": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "14": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "15": {"class_type": "BasicScheduler",
               "inputs": {"model": ["4", 0], "scheduler": "simple", "steps": steps, "denoise": 1.0}},
        "3": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["13", 0], "guider": ["12", 0], "sampler": ["14", 0], "sigmas": ["15", 0],
            "latent_image": ["11", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "instruct_pix2pix"}},
    }


def depth2img(prompt: str = DEPTH_PROMPT, seed: int = 1, steps: int = 20, cfg: float = 6.0) -> dict[str, Any]:
    """Draw what `prompt` says where the example image's shape stands: its depth map (ShapesDepthMap) conditions
    the depth-to-image UNet as its 5th input channel."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ADAPTERS["depth2img"][1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "11": {"class_type": "ShapesDepthMap", "inputs": {"image": ["10", 0], "falloff": 0.05}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]},
              "_meta": {"title": "Positive prompt"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "12": {"class_type": "DepthToImageConditioning",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "depth": ["11", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 4}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["4", 0], "positive": ["12", 0], "negative": ["12", 1], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "depth2img"}},
    }


GRAPHS = {"instruct-pix2pix": instruct_pix2pix, "depth2img": depth2img}
