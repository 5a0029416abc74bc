"""ComfyUI's CLIP vision nodes: CLIPVisionLoader, CLIPVisionEncode and unCLIPConditioning."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket
from nodegraph.models import ModelRef

from ..loaders import _file_fingerprint, _folder
from ..sd.types import Conditioning

if TYPE_CHECKING:
    from ..sd.clip_vision import ClipVisionHandle, ClipVisionOutput

FOLDER = "clip_vision"


class CLIPVisionLoader(Node):
    schema = NodeSchema(
        type_id="CLIPVisionLoader", display_name="Load CLIP Vision", category="loaders",
        description="Loads a CLIP vision tower (transformers' vision_model.* or open_clip's visual.* keys).",
        inputs=(Combo("clip_name", _folder(FOLDER)),),
        outputs=(Out("CLIP_VISION"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip_name: str) -> tuple[ClipVisionHandle]:
        from ..sd.clip_vision import load_clip_vision

        return (load_clip_vision(ctx.env.models.resolve(FOLDER, clip_name), manager=ctx.env.manager),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, clip_name: str) -> Any:
        return _file_fingerprint(ctx, FOLDER, clip_name)


class CLIPVisionEncode(Node):
    schema = NodeSchema(
        type_id="CLIPVisionEncode", display_name="CLIP Vision Encode", category="conditioning",
        description="Encodes images with a CLIP vision tower (resized bicubic, centre-cropped or squashed).",
        inputs=(Socket("clip_vision", "CLIP_VISION"), Socket("image", "IMAGE"), Combo("crop", ["center", "none"])),
        outputs=(Out("CLIP_VISION_OUTPUT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip_vision: ClipVisionHandle, image: torch.Tensor,
                crop: str) -> tuple[ClipVisionOutput]:
        from ..sd.clip_vision import encode_image

        ref = clip_vision.model_ref
        held = ctx.env.manager.using(ref) if isinstance(ref, ModelRef) else nullcontext([ref])
        with held as (model,):
            return (encode_image(model, image, crop=crop == "center"),)


class unCLIPConditioning(Node):  # noqa: N801 (ComfyUI's class name)
    schema = NodeSchema(
        type_id="unCLIPConditioning", display_name="unCLIPConditioning", category="conditioning",
        description="Adds a CLIP image embedding to the conditioning, for unCLIP models (SD2.1-unCLIP).",
        inputs=(Socket("conditioning", "CONDITIONING"), Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
                Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
                Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, clip_vision_output: ClipVisionOutput,
                strength: float, noise_augmentation: float) -> tuple[Conditioning]:
        from ..sd.unclip import append_unclip

        return (append_unclip(conditioning, clip_vision_output.image_embeds, strength, noise_augmentation),)


NODES = (CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning)
