"""SDXL prompt encoders with size conditioning (ComfyUI's nodes_clip_sdxl): the sizes reach the UNet as its
time ids (nodes/sd/cond_regions.py), the refiner's aesthetic score as its fifth id."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nodegraph import Float, Int, Node, NodeContext, NodeSchema, Out, Socket, String

from ..sd.types import ClipHandle, Conditioning, SizeConditioning
from .basic import CLIPTextEncode

MAX_RESOLUTION = 16384


class CLIPTextEncodeSDXLRefiner(Node):
    schema = NodeSchema(
        type_id="CLIPTextEncodeSDXLRefiner", display_name="CLIPTextEncodeSDXLRefiner", category="advanced/conditioning",
        description="Encodes a prompt for the SDXL refiner, with its aesthetic score and image size.",
        inputs=(Float("ascore", 6.0, min=0.0, max=1000.0, step=0.01),
                Int("width", 1024, min=0, max=MAX_RESOLUTION),
                Int("height", 1024, min=0, max=MAX_RESOLUTION),
                String("text", multiline=True),
                Socket("clip", "CLIP")),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, ascore: float, width: int, height: int, text: str,
                clip: ClipHandle) -> tuple[Conditioning]:
        from ..sd.text import encode

        size = SizeConditioning(width=width, height=height, aesthetic_score=float(ascore))
        return ((replace(encode(clip, text), size=size),),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, text: str = "", **widgets: Any) -> Any:
        """The digests of the embedding files the prompt names, as for CLIPTextEncode."""
        return CLIPTextEncode.fingerprint(ctx, text=text)


class CLIPTextEncodeSDXL(Node):
    schema = NodeSchema(
        type_id="CLIPTextEncodeSDXL", display_name="CLIPTextEncodeSDXL", category="advanced/conditioning",
        description="Encodes text_l with CLIP-L and text_g with OpenCLIP bigG, with SDXL's size and crop "
                    "conditioning.",
        inputs=(Socket("clip", "CLIP"),
                Int("width", 1024, min=0, max=MAX_RESOLUTION),
                Int("height", 1024, min=0, max=MAX_RESOLUTION),
                Int("crop_w", 0, min=0, max=MAX_RESOLUTION),
                Int("crop_h", 0, min=0, max=MAX_RESOLUTION),
                Int("target_width", 1024, min=0, max=MAX_RESOLUTION),
                Int("target_height", 1024, min=0, max=MAX_RESOLUTION),
                String("text_g", multiline=True),
                String("text_l", multiline=True)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip: ClipHandle, width: int, height: int, crop_w: int, crop_h: int,
                target_width: int, target_height: int, text_g: str, text_l: str) -> tuple[Conditioning]:
        from ..sd.sdxl_text import encode_sdxl

        size = SizeConditioning(width=width, height=height, crop_w=crop_w, crop_h=crop_h,
                                target_width=target_width, target_height=target_height)
        return ((replace(encode_sdxl(clip, text_g, text_l), size=size),),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, text_g: str = "", text_l: str = "", **widgets: Any) -> Any:
        """The digests of the embedding files either prompt names, as for CLIPTextEncode."""
        return [CLIPTextEncode.fingerprint(ctx, text=text_g), CLIPTextEncode.fingerprint(ctx, text=text_l)]


NODES = (CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner)
