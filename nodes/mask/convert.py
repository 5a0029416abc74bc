"""Mask nodes that make, convert, invert, threshold and preview masks (ComfyUI's "mask" menu)."""

from __future__ import annotations

import torch

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket

from ..image import PreviewImage
from .maskops import as_mask_batch, color_mask

MAX_RESOLUTION = 16384
CHANNELS = ("red", "green", "blue", "alpha")


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """MASK [..., H, W] as a grey IMAGE [B, H, W, 3]."""
    return as_mask_batch(mask).unsqueeze(-1).repeat(1, 1, 1, 3)


class MaskToImage(Node):
    schema = NodeSchema(type_id="MaskToImage", display_name="Convert Mask to Image", category="mask",
                        inputs=(Socket("mask", "MASK"),), outputs=(Out("IMAGE"),))

    @classmethod
    def execute(cls, ctx: NodeContext, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (mask_to_image(mask),)


class ImageToMask(Node):
    schema = NodeSchema(type_id="ImageToMask", display_name="Convert Image to Mask", category="mask",
                        inputs=(Socket("image", "IMAGE"), Combo("channel", CHANNELS)), outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"ImageToMask input 'channel': {channel!r} asked of an image with {image.shape[-1]} "
                             "channels (no alpha); pick red, green or blue")
        return (image[..., index].clone(),)


class ImageColorToMask(Node):
    schema = NodeSchema(type_id="ImageColorToMask", display_name="ImageColorToMask", category="mask",
                        description="1 where a pixel's 8-bit colour is exactly `color` (0xRRGGBB), else 0.",
                        inputs=(Socket("image", "IMAGE"), Int("color", 0, min=0, max=0xFFFFFF, step=1)),
                        outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, color: int) -> tuple[torch.Tensor]:
        # ComfyUI 0.3.64 wrote 255 for a match (outside MASK's 0..1); later versions write 1, as we do.
        return (color_mask(image, color),)


class SolidMask(Node):
    schema = NodeSchema(type_id="SolidMask", display_name="SolidMask", category="mask",
                        inputs=(Float("value", 1.0, min=0.0, max=1.0, step=0.01),
                                Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
                                Int("height", 512, min=1, max=MAX_RESOLUTION, step=1)),
                        outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: float, width: int, height: int) -> tuple[torch.Tensor]:
        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(Node):
    schema = NodeSchema(type_id="InvertMask", display_name="InvertMask", category="mask",
                        inputs=(Socket("mask", "MASK"),), outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - mask,)


class ThresholdMask(Node):
    schema = NodeSchema(type_id="ThresholdMask", display_name="ThresholdMask", category="mask",
                        description="1 where the mask is above `value`, else 0.",
                        inputs=(Socket("mask", "MASK"), Float("value", 0.5, min=0.0, max=1.0, step=0.01)),
                        outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, mask: torch.Tensor, value: float) -> tuple[torch.Tensor]:
        return ((mask > value).float(),)


class MaskPreview(Node):
    schema = NodeSchema(type_id="MaskPreview", display_name="MaskPreview", category="mask",
                        description="Shows the mask as a grey image (written to the temp folder).",
                        inputs=(Socket("mask", "MASK"),), output_node=True)

    @classmethod
    def execute(cls, ctx: NodeContext, mask: torch.Tensor) -> NodeResult:
        return PreviewImage.execute(ctx, mask_to_image(mask))


NODES = (MaskToImage, ImageToMask, ImageColorToMask, SolidMask, InvertMask, ThresholdMask, MaskPreview)
