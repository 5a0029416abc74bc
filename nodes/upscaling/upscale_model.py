"""ComfyUI's upscale-model nodes: UpscaleModelLoader (loaders) and ImageUpscaleWithModel (image/upscaling).

The loader reads a super-resolution file from `upscale_models` (ESRGAN in its old, new and BasicSR layouts,
Real-ESRGAN's compact SRVGGNet) into the model manager and outputs a handle; the upscaler runs it over an
image in tiles (nodes/sd/upscale.py). The maths and the file reading live in nodes/sd/upscale*.py.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out, Socket
from nodegraph.models import ModelRef

from ..loaders import _file_fingerprint, _folder

if TYPE_CHECKING:
    from ..sd.upscale import UpscaleModelHandle

FOLDER = "upscale_models"


class UpscaleModelLoader(Node):
    schema = NodeSchema(
        type_id="UpscaleModelLoader", display_name="Load Upscale Model", category="loaders",
        description="Loads a super-resolution model: ESRGAN (old, new or BasicSR keys) or Real-ESRGAN compact.",
        inputs=(Combo("model_name", _folder(FOLDER)),),
        outputs=(Out("UPSCALE_MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model_name: str) -> tuple[UpscaleModelHandle]:
        from ..sd.upscale import load_upscale_model

        path = ctx.env.models.resolve(FOLDER, model_name)
        return (load_upscale_model(path, manager=ctx.env.manager),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, model_name: str) -> Any:
        return _file_fingerprint(ctx, FOLDER, model_name)


class ImageUpscaleWithModel(Node):
    schema = NodeSchema(
        type_id="ImageUpscaleWithModel", display_name="Upscale Image (using Model)", category="image/upscaling",
        description="Upscales by the model's factor, in 512 px tiles (smaller when memory runs out).",
        inputs=(Socket("upscale_model", "UPSCALE_MODEL"), Socket("image", "IMAGE")),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, upscale_model: UpscaleModelHandle, image: torch.Tensor) -> tuple[torch.Tensor]:
        from ..sd.upscale import upscale_image

        ref = upscale_model.model_ref
        held = ctx.env.manager.using(ref) if isinstance(ref, ModelRef) else nullcontext([ref])
        with held as (module,):
            return (upscale_image(upscale_model, image, module=module, progress=ctx.progress),)


NODES = (UpscaleModelLoader, ImageUpscaleWithModel)
