"""LoRA loader nodes (ComfyUI's LoraLoader and LoraLoaderModelOnly: same names, inputs and order).

They return new MODEL / CLIP handles whose models derive from the loaded ones; the loaded checkpoint is never
changed. The low-rank updates (Hu et al. 2021) are merged into copies of the touched weights once, by the
model manager, when a sampler or text encode first needs them (see nodes/sd/lora.py).
"""

from __future__ import annotations

from typing import Any

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket

from .loaders import _file_fingerprint, _folder
from .sd.types import ClipHandle, ModelHandle


def _strength(name: str, tooltip: str) -> Any:
    return Float(name, 1.0, min=-100.0, max=100.0, step=0.01, tooltip=tooltip)


def apply_lora(
    ctx: NodeContext, lora_name: str, model: ModelHandle, clip: ClipHandle | None, strength_model: float,
    strength_clip: float,
) -> tuple[ModelHandle, ClipHandle | None]:
    """Patch `model` (and `clip`, when given) with a LoRA from the `loras` folder; strength 0 leaves a side as is."""
    from .sd.loading.files import file_signature
    from .sd.lora import (
        add_clip_lora,
        add_model_lora,
        match_lora,
        read_lora,
        warn_not_loaded,
    )

    if strength_model == 0 and (clip is None or strength_clip == 0):
        return model, clip  # exact no-op: the very same handles
    path = ctx.env.models.resolve("loras", lora_name)
    lora = read_lora(path, manager=ctx.env.manager)
    file_key = file_signature(path)
    encoders = clip.encoders if clip is not None and strength_clip != 0 else ()
    matched = match_lora(lora, model.unet if strength_model != 0 else None, encoders,
                         strength_model=strength_model, strength_clip=strength_clip)
    warn_not_loaded(lora_name, matched.not_loaded)
    if strength_model != 0 and matched.unet.by_param:
        model = add_model_lora(model, lora_name, matched.unet, strength_model, file_key)
    if clip is not None and encoders and any(u.by_param for u in matched.encoders):
        clip = add_clip_lora(clip, lora_name, matched.encoders, strength_clip, file_key)
    return model, clip


class LoraLoader(Node):
    schema = NodeSchema(
        type_id="LoraLoader", display_name="Load LoRA", category="loaders",
        description="Adds a LoRA (kohya or diffusers/PEFT file) to the diffusion model and the text encoder.",
        inputs=(Socket("model", "MODEL"), Socket("clip", "CLIP"), Combo("lora_name", _folder("loras")),
                _strength("strength_model", "How strongly to change the diffusion model; negative reverses it."),
                _strength("strength_clip", "How strongly to change the text encoder; negative reverses it.")),
        outputs=(Out("MODEL"), Out("CLIP")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, lora_name: str, strength_model: float,
                strength_clip: float) -> tuple[ModelHandle, ClipHandle]:
        patched_model, patched_clip = apply_lora(ctx, lora_name, model, clip, strength_model, strength_clip)
        assert patched_clip is not None
        return patched_model, patched_clip

    @classmethod
    def fingerprint(cls, ctx: NodeContext, lora_name: str, **_: Any) -> Any:
        return _file_fingerprint(ctx, "loras", lora_name)


class LoraLoaderModelOnly(Node):
    schema = NodeSchema(
        type_id="LoraLoaderModelOnly", display_name="LoraLoaderModelOnly", category="loaders",
        description="Adds a LoRA to the diffusion model only (its text-encoder layers are ignored).",
        inputs=(Socket("model", "MODEL"), Combo("lora_name", _folder("loras")),
                _strength("strength_model", "How strongly to change the diffusion model; negative reverses it.")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, lora_name: str,
                strength_model: float) -> tuple[ModelHandle]:
        return (apply_lora(ctx, lora_name, model, None, strength_model, 0.0)[0],)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, lora_name: str, **_: Any) -> Any:
        return _file_fingerprint(ctx, "loras", lora_name)


NODES = (LoraLoader, LoraLoaderModelOnly)
