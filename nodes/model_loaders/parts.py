"""Separately loaded parts: a diffusion model alone (UNETLoader), text encoders alone (CLIPLoader,
DualCLIPLoader), and unCLIPCheckpointLoader. The maths: nodes/sd/unet_only.py and nodes/sd/clip_only.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out

from ..loaders import _file_fingerprint, _folder, part_dtypes
from ..sd.types import ClipHandle, ModelHandle, VaeHandle

UNET_WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
DEVICES = ("default", "cpu")


def _label(path: Path, what: str, dtype: torch.dtype) -> str:
    return f"{path.name} {what} ({str(dtype).removeprefix('torch.')})"


class UNETLoader(Node):
    schema = NodeSchema(
        type_id="UNETLoader", display_name="Load Diffusion Model", category="advanced/loaders",
        description="Loads an SD1/SD2/SDXL diffusion model (UNet) file alone, LDM or diffusers layout; fp8 keeps "
                    "its Linear/Conv weights in 8 bits, computing in the usual precision.",
        inputs=(Combo("unet_name", _folder("diffusion_models")), Combo("weight_dtype", UNET_WEIGHT_DTYPES)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, unet_name: str, weight_dtype: str) -> tuple[ModelHandle]:
        from ..sd.loading.configs import alphas_cumprod
        from ..sd.loading.files import file_signature
        from ..sd.unet_only import UnetFile, storage_dtype

        storage_dtype(weight_dtype)  # refuse an unknown or unsupported choice before reading anything
        path = ctx.env.models.resolve("diffusion_models", unet_name)
        manager, dtype, key = ctx.env.manager, part_dtypes(ctx.env).unet, file_signature(path)
        source = manager.ref((key, "unet_only_header"), lambda device: UnetFile(path), name=f"{path.name} header").get()
        ref = manager.ref((key, "unet_only", weight_dtype, str(dtype)),
                          lambda device: source.build(device=device, dtype=dtype, weight_dtype=weight_dtype),
                          name=_label(path, "UNet", dtype), size_hint=source.nbytes(dtype, weight_dtype))
        return (ModelHandle(unet_ref=ref, family=source.family, prediction=source.prediction,
                            alphas_cumprod=alphas_cumprod(source.schedule), dtype=dtype, device=manager.device,
                            source=str(path)),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, unet_name: str, **_: Any) -> Any:
        return _file_fingerprint(ctx, "diffusion_models", unet_name)


def load_text_encoders(ctx: NodeContext, names: list[str], clip_type: str, device: str) -> ClipHandle:
    """A CLIP handle from one (SD1/SD2) or two (SDXL) text-encoder files, shaped as a checkpoint's."""
    from ..sd.clip_only import (TextEncoderSource, clip_layer_default, inspect_text_encoder, pin_to_cpu, sdxl_order,
                                stable_diffusion_roles)
    from ..sd.loading.files import file_signature
    from ..sd.loading.handles import tokenizer_for

    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    paths = [ctx.env.models.resolve("text_encoders", name) for name in names]
    manager, dtype = ctx.env.manager, part_dtypes(ctx.env).text
    files = [manager.ref((file_signature(p), "text_encoder_header"), lambda d, p=p: inspect_text_encoder(p),
                         name=f"{p.name} header").get() for p in paths]
    family, roles = stable_diffusion_roles(files, clip_type)
    if family == "sdxl":
        files = sdxl_order(files)
    sources = [TextEncoderSource(file, role) for file, role in zip(files, roles)]
    if device == "cpu":
        dtype = torch.float32

    def build(source: Any, target: str) -> torch.nn.Module:
        if device == "cpu":  # ComfyUI's device option: this encoder loads and runs on the CPU, in fp32
            return pin_to_cpu(source.build(device="cpu", dtype=dtype))
        return source.build(device=target, dtype=dtype)

    refs = [manager.ref((file_signature(s.source.path), "text_encoder", s.role, str(dtype), device),
                        lambda d, s=s: build(s, d), name=_label(s.source.path, "text encoder", dtype)) for s in sources]
    embedding_dirs = tuple(str(d) for d in ctx.env.models.folder_dirs("embeddings"))
    return ClipHandle(encoder_refs=tuple(refs), tokenizers=tuple(tokenizer_for(s.open_clip_tokenizer) for s in sources),
                      family=family, layer_idx=clip_layer_default(family), embedding_dirs=embedding_dirs,
                      device="cpu" if device == "cpu" else manager.device, source=" + ".join(str(p) for p in paths))


class CLIPLoader(Node):
    schema = NodeSchema(
        type_id="CLIPLoader", display_name="Load CLIP", category="advanced/loaders",
        description="Loads one text encoder file. stable_diffusion: CLIP-L (SD1) or OpenCLIP-H (SD2), transformers "
                    "or original layout. The other types name other families' encoders, not run here.",
        inputs=(Combo("clip_name", _folder("text_encoders")), Combo("type", CLIP_TYPES),
                Combo("device", DEVICES, optional=True)),
        outputs=(Out("CLIP"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip_name: str, type: str, device: str = "default") -> tuple[ClipHandle]:
        return (load_text_encoders(ctx, [clip_name], type, device),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, clip_name: str, **_: Any) -> Any:
        return _file_fingerprint(ctx, "text_encoders", clip_name)


class DualCLIPLoader(Node):
    schema = NodeSchema(
        type_id="DualCLIPLoader", display_name="DualCLIPLoader", category="advanced/loaders",
        description="Loads two text encoder files. sdxl: CLIP-L and OpenCLIP-bigG, in either order.",
        inputs=(Combo("clip_name1", _folder("text_encoders")), Combo("clip_name2", _folder("text_encoders")),
                Combo("type", DUAL_CLIP_TYPES), Combo("device", DEVICES, optional=True)),
        outputs=(Out("CLIP"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip_name1: str, clip_name2: str, type: str,
                device: str = "default") -> tuple[ClipHandle]:
        return (load_text_encoders(ctx, [clip_name1, clip_name2], type, device),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, clip_name1: str, clip_name2: str, **_: Any) -> Any:
        return tuple(_file_fingerprint(ctx, "text_encoders", name) for name in (clip_name1, clip_name2))


@dataclass(frozen=True)
class ClipVisionWeights:
    """CLIP_VISION as unCLIPCheckpointLoader finds it: where a checkpoint keeps its image tower. nodegraph has no
    CLIP-vision encoder yet; this names the tensors for the node that will build one."""

    path: str
    prefix: str
    tensor_count: int


def _tower_prefix(key: str) -> str | None:
    """`embedder.model.visual.` of `embedder.model.visual.conv1.weight` (OpenCLIP), `vision_model.` (transformers)."""
    for marker in ("visual.", "vision_model."):
        at = key.find(marker)
        while at > 0 and key[at - 1] != ".":
            at = key.find(marker, at + 1)
        if at >= 0:
            return key[: at + len(marker)]
    return None


def find_vision_tower(path: Path) -> ClipVisionWeights | None:
    """The image tower of a checkpoint (OpenCLIP `*visual.*` or transformers `*vision_model.*` keys), if any."""
    from collections import Counter

    from ..sd.loading.files import WeightFile

    with WeightFile(path) as weights:
        prefixes = Counter(prefix for key in weights if (prefix := _tower_prefix(key)) is not None)
    if not prefixes:
        return None
    prefix, count = prefixes.most_common(1)[0]
    return ClipVisionWeights(str(path), prefix, count)


class unCLIPCheckpointLoader(Node):  # noqa: N801 (ComfyUI's class name)
    schema = NodeSchema(
        type_id="unCLIPCheckpointLoader", display_name="unCLIPCheckpointLoader", category="loaders",
        description="Loads a checkpoint's MODEL, CLIP and VAE, and its CLIP vision tower when the file holds one "
                    "(else CLIP_VISION is empty).",
        inputs=(Combo("ckpt_name", _folder("checkpoints")),),
        outputs=(Out("MODEL"), Out("CLIP"), Out("VAE"), Out("CLIP_VISION")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle, Any]:
        from ..loaders import CheckpointLoaderSimple
        from ..sd.loading.files import WeightFile

        path = ctx.env.models.resolve("checkpoints", ckpt_name)
        if path.is_file():
            with WeightFile(path) as weights:
                image_conditioned = "model.diffusion_model.label_emb.0.0.weight" in weights and not any(
                    key.startswith("conditioner.embedders.1.") for key in weights)
            if image_conditioned:
                raise ValueError(f"{ckpt_name}: an unCLIP UNet (conditioned on CLIP image embeddings through "
                                 "label_emb) is not supported yet; ordinary SD1/SD2/SDXL checkpoints load here")
        model, clip, vae = CheckpointLoaderSimple.execute(ctx, ckpt_name)
        return (model, clip, vae, find_vision_tower(path) if path.is_file() else None)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, ckpt_name: str) -> Any:
        return _file_fingerprint(ctx, "checkpoints", ckpt_name)


NODES = (UNETLoader, CLIPLoader, DualCLIPLoader, unCLIPCheckpointLoader)
