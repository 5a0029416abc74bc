"""The embedded default model and its adapters: weights, config and model card (package data)."""

from pathlib import Path
from typing import Any

MODEL_DIR = Path(__file__).parent
EMBEDDED_NAME = "nodegraph-tiny-shapes.safetensors"
EMBEDDED_PATH = MODEL_DIR / EMBEDDED_NAME
ADAPTERS: dict[str, tuple[str, str]] = {
    "lora": ("loras", "nodegraph-tiny-shapes-striped.safetensors"),
    "controlnet": ("controlnet", "nodegraph-tiny-shapes-outline.safetensors"),
    "upscale": ("upscale_models", "nodegraph-tiny-shapes-2x.safetensors"),
    "t2i_adapter": ("controlnet", "nodegraph-tiny-shapes-silhouette-t2i.safetensors"),
    "clip_vision": ("clip_vision", "nodegraph-tiny-shapes-clip-vision.safetensors"),
    "style_model": ("style_models", "nodegraph-tiny-shapes-style.safetensors"),
    "gligen": ("gligen", "nodegraph-tiny-shapes-gligen.safetensors"),
    "classifier": ("classifiers", "nodegraph-tiny-shapes-noisy-classifier.safetensors"),
    "instruct_pix2pix": ("checkpoints", "nodegraph-tiny-shapes-instruct-pix2pix.safetensors"),
    "depth2img": ("checkpoints", "nodegraph-tiny-shapes-depth.safetensors"),
    "photomaker": ("photomaker", "nodegraph-tiny-shapes-photomaker.safetensors"),
}
"""Adapter kind -> (model folder it is listed in, file name): the style LoRA (trigger ', striped') and the
outline ControlNet, both trained for the embedded model by scripts/train_adapters.py; the 2x upscaler (a tiny
SRVGGNetCompact) trained on the same shapes by scripts/train_upscaler.py; the silhouette T2I-Adapter
(scripts/train_t2i_adapter.py); the CLIP vision tower and its T2I-Adapter style model, trained against the embedded
text encoder by scripts/train_clip_vision.py; the text-box GLIGEN (scripts/train_gligen.py: it puts the named
shape in its box, see the model card); the noise-aware latent classifier for classifier guidance
(scripts/train_noisy_classifier.py); and two UNet-only checkpoints that borrow the embedded text encoder and VAE
(`nodegraph_config.parts_from`): InstructPix2Pix (scripts/train_instruct_pix2pix.py) and depth-to-image
(scripts/train_depth2img.py); and a PhotoMaker ID encoder whose "identity" is the reference renders' shape and
colour (scripts/train_photomaker.py)."""


def default_adapter_path(kind: str) -> Path:
    """Where the shipped adapter of a kind ('lora', 'controlnet') lives."""
    return MODEL_DIR / ADAPTERS[kind][1]


def add_embedded_checkpoint(env: Any) -> None:
    """List the shipped model first under `checkpoints`, its VAE first under `vae`, and its adapters first under
    their folders (`loras`, `controlnet`, `upscale_models`, `clip_vision`, `style_models`), loaded by the same loaders
    as any user file. The VAE entry names the checkpoint itself: VAELoader reads a checkpoint's `first_stage_model.*`
    tensors alone, so no byte is shipped twice."""
    if EMBEDDED_PATH.is_file():
        env.models.add_builtin("checkpoints", EMBEDDED_NAME, EMBEDDED_PATH)
        env.models.add_builtin("vae", EMBEDDED_NAME, EMBEDDED_PATH)
    for kind, (folder, name) in ADAPTERS.items():
        if default_adapter_path(kind).is_file():
            env.models.add_builtin(folder, name, default_adapter_path(kind))
