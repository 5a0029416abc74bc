"""ComfyUI's PhotoMaker nodes: PhotoMakerLoader and PhotoMakerEncode (maths in nodes/sd/photomaker.py)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out, Socket, String
from nodegraph.models import ModelRef

from ..loaders import _file_fingerprint, _folder
from ..sd.types import ClipHandle, Conditioning

if TYPE_CHECKING:
    from ..sd.photomaker import PhotoMakerHandle

FOLDER = "photomaker"
CATEGORY = "_for_testing/photomaker"


class PhotoMakerLoader(Node):
    schema = NodeSchema(
        type_id="PhotoMakerLoader", display_name="PhotoMakerLoader", category=CATEGORY,
        description="Loads a PhotoMaker v1 ID encoder (id_encoder.*: CLIP vision tower, two projections, fuse "
                    "module); its LoRA part is ignored, load it with LoraLoader.",
        inputs=(Combo("photomaker_model_name", _folder(FOLDER)),),
        outputs=(Out("PHOTOMAKER"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, photomaker_model_name: str) -> tuple[PhotoMakerHandle]:
        from ..sd.photomaker import load_photomaker

        return (load_photomaker(ctx.env.models.resolve(FOLDER, photomaker_model_name), manager=ctx.env.manager),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, photomaker_model_name: str) -> Any:
        return _file_fingerprint(ctx, FOLDER, photomaker_model_name)


class PhotoMakerEncode(Node):
    schema = NodeSchema(
        type_id="PhotoMakerEncode", display_name="PhotoMakerEncode", category=CATEGORY,
        description="Encodes the prompt without the word 'photomaker' and writes the reference images' fused ID "
                    "embeddings at the word before it (one copy per image); no 'photomaker': plain text.",
        inputs=(Socket("photomaker", "PHOTOMAKER"), Socket("image", "IMAGE"), Socket("clip", "CLIP"),
                String("text", "photograph of photomaker", multiline=True)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, photomaker: PhotoMakerHandle, image: torch.Tensor, clip: ClipHandle,
                text: str) -> tuple[Conditioning]:
        from ..sd.photomaker import photomaker_encode

        ref = photomaker.model_ref
        held = ctx.env.manager.using(ref) if isinstance(ref, ModelRef) else nullcontext([ref])
        with held as (model,):
            return ((photomaker_encode(model, clip, image, text),),)


NODES = (PhotoMakerLoader, PhotoMakerEncode)
