"""Model loader nodes: checkpoints from the model folders, CLIP layer selection (VAELoader: nodes/model_loaders/vae.py)."""

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
    """The content digest of a model file (every file of a diffusers folder), by the engine's one contract
    for file inputs (nodegraph/fingerprint.py: multi-GB files are hashed from their header and a sample).
    None when the name does not resolve: the node's execute then reports the missing file."""
    try:
        path = ctx.env.models.resolve(folder, name)
    except (OSError, AttributeError, ValueError):
        return None
    return ctx.fingerprint_file(path)


def part_dtypes(env: Any, *, force_upcast: bool | None = None) -> Any:
    """The dtypes of UNet, text encoders and VAE that the environment's precision settings give (see
    nodes/sd/precision.py for the rules: auto is fp16 on CUDA except a VAE that must upcast, fp32 on CPU)."""
    from .sd.precision import choose_dtypes

    device = getattr(env, "device", "cpu")
    part = getattr(env, "part_precision", lambda _: getattr(env, "precision", "auto"))
    return choose_dtypes(device, unet=part("unet"), text=part("text"), vae=part("vae"), force_upcast=force_upcast,
                         bf16_supported=_bf16_supported(device), prefer_bf16=getattr(env, "prefer_bf16", False))


def _bf16_supported(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def unet_dtype(env: Any) -> torch.dtype:
    """The UNet precision the environment asks for (ControlNets run in it too)."""
    return part_dtypes(env).unet


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

        from .sd.loading import inspected

        path = ctx.env.models.resolve("checkpoints", ckpt_name)
        opened = inspected(path, ctx.env.manager)
        dtypes = part_dtypes(ctx.env, force_upcast=opened.vae_config.get("force_upcast", True))
        loaded = load_checkpoint(path, manager=ctx.env.manager, dtype=dtypes.unet, text_dtype=dtypes.text,
                                 vae_dtype=dtypes.vae, opened=opened)
        embedding_dirs = tuple(str(d) for d in ctx.env.models.folder_dirs("embeddings"))
        clip = replace(loaded.clip, embedding_dirs=embedding_dirs)
        return (loaded.model, clip, loaded.vae)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, ckpt_name: str) -> Any:
        return _file_fingerprint(ctx, "checkpoints", ckpt_name)


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


from .model_loaders.vae import VAELoader  # noqa: E402, F401 (declared with the other part loaders; kept importable here)

NODES = (CheckpointLoaderSimple, CLIPSetLastLayer)
