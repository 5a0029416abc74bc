"""Model loader nodes: checkpoints and VAEs from the model folders, CLIP layer selection."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from nodegraph import Combo, Int, Node, NodeContext, NodeSchema, Out, Socket

from .sd.types import ClipHandle, ModelHandle, VaeHandle


def _folder(name: str):
    """COMBO options read from a model folder each time they are needed (files come and go)."""
    return lambda env: env.models.list(name) if env is not None else []


def _file_fingerprint(ctx: NodeContext, folder: str, name: str) -> Any:
    """Size and modification time: cheap for multi-GB files, and changes when the file is replaced."""
    try:
        path = ctx.env.models.resolve(folder, name)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())  # diffusers folder
        return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    except (OSError, AttributeError, ValueError):
        return None


def unet_dtype(env: Any) -> torch.dtype:
    """The UNet precision the environment asks for: auto is fp16 on CUDA and fp32 on the CPU."""
    precision = getattr(env, "precision", "auto")
    if precision == "auto":
        return torch.float16 if getattr(env, "device", "cpu").startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class CheckpointLoaderSimple(Node):
    schema = NodeSchema(
        type_id="CheckpointLoaderSimple", display_name="Load Checkpoint", category="loaders",
        description="Loads a diffusion model checkpoint (SD1.x, SD2.x, SDXL single file or diffusers folder).",
        inputs=(Combo("ckpt_name", _folder("checkpoints")),),
        outputs=(Out("MODEL"), Out("CLIP"), Out("VAE")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        from .sd.loading import load_checkpoint

        path = ctx.env.models.resolve("checkpoints", ckpt_name)
        loaded = load_checkpoint(path, device=ctx.env.device, dtype=unet_dtype(ctx.env))
        embedding_dirs = tuple(str(d) for d in ctx.env.models.folder_dirs("embeddings"))
        clip = replace(loaded.clip, embedding_dirs=embedding_dirs)
        return (loaded.model, clip, loaded.vae)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, ckpt_name: str) -> Any:
        return _file_fingerprint(ctx, "checkpoints", ckpt_name)


class VAELoader(Node):
    schema = NodeSchema(
        type_id="VAELoader", display_name="Load VAE", category="loaders",
        inputs=(Combo("vae_name", _folder("vae")),), outputs=(Out("VAE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, vae_name: str) -> tuple[VaeHandle]:
        from .sd.loading import load_vae

        return (load_vae(ctx.env.models.resolve("vae", vae_name), device=ctx.env.device),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, vae_name: str) -> Any:
        return _file_fingerprint(ctx, "vae", vae_name)


class CLIPSetLastLayer(Node):
    schema = NodeSchema(
        type_id="CLIPSetLastLayer", display_name="CLIP Set Last Layer", category="conditioning",
        description="Stop the text encoder early: -1 is the last layer, -2 the one before (\"clip skip 2\").",
        inputs=(Socket("clip", "CLIP"), Int("stop_at_clip_layer", -1, min=-24, max=-1)),
        outputs=(Out("CLIP"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip: ClipHandle, stop_at_clip_layer: int) -> tuple[ClipHandle]:
        return (replace(clip, layer_idx=stop_at_clip_layer),)


NODES = (CheckpointLoaderSimple, VAELoader, CLIPSetLastLayer)
