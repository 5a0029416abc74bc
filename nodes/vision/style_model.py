"""ComfyUI's style model nodes: StyleModelLoader and StyleModelApply (T2I-Adapter style adapters)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket
from nodegraph.models import ModelRef

from ..loaders import _file_fingerprint, _folder
from ..sd.types import Conditioning

if TYPE_CHECKING:
    from ..sd.clip_vision import ClipVisionOutput
    from ..sd.style_model import StyleModelHandle

FOLDER = "style_models"


class StyleModelLoader(Node):
    schema = NodeSchema(
        type_id="StyleModelLoader", display_name="Load Style Model", category="loaders",
        description="Loads a T2I-Adapter style model (style_embedding, transformer_layes.*, proj).",
        inputs=(Combo("style_model_name", _folder(FOLDER)),),
        outputs=(Out("STYLE_MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, style_model_name: str) -> tuple[StyleModelHandle]:
        from ..sd.style_model import load_style_model

        return (load_style_model(ctx.env.models.resolve(FOLDER, style_model_name), manager=ctx.env.manager),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, style_model_name: str) -> Any:
        return _file_fingerprint(ctx, FOLDER, style_model_name)


class StyleModelApply(Node):
    schema = NodeSchema(
        type_id="StyleModelApply", display_name="Apply Style Model", category="conditioning/style_model",
        description="Appends the style model's tokens for an image to every conditioning entry; strength scales "
                    "them (multiply) or biases attention to them by log(strength) (attn_bias).",
        inputs=(Socket("conditioning", "CONDITIONING"), Socket("style_model", "STYLE_MODEL"),
                Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
                Float("strength", 1.0, min=0.0, max=10.0, step=0.001),
                Combo("strength_type", ["multiply", "attn_bias"])),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, style_model: StyleModelHandle,
                clip_vision_output: ClipVisionOutput, strength: float, strength_type: str) -> tuple[Conditioning]:
        from ..sd.style_model import apply_style, style_tokens

        ref = style_model.model_ref
        held = ctx.env.manager.using(ref) if isinstance(ref, ModelRef) else nullcontext([ref])
        with held as (model,):
            tokens = style_tokens(model, clip_vision_output.last_hidden_state)
        return (apply_style(conditioning, tokens, strength, strength_type),)


NODES = (StyleModelLoader, StyleModelApply)
