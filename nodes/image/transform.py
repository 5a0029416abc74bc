"""Image nodes that change the canvas: resizing (image/upscaling), cropping, stitching, padding, rotating and
flipping (image/transform), and padding for outpainting."""

from __future__ import annotations

import torch

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.imageops import CROP_MODES, IMAGE_METHODS, resize_image
from .ops import geometry

MAX_RESOLUTION = 16384
RESIZE_AND_PAD_METHODS = ("area", "bicubic", "nearest-exact", "bilinear", "lanczos")
MAX_DIMENSION_METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic")
"""ComfyUI 0.3.64 lists "bilinear" twice for ImageScaleToMaxDimension; kept, so saved widget values line up."""


class ImageScale(Node):
    schema = NodeSchema(
        type_id="ImageScale", display_name="Upscale Image", category="image/upscaling",
        inputs=(Socket("image", "IMAGE"), Combo("upscale_method", IMAGE_METHODS),
                Int("width", 512, min=0, max=MAX_RESOLUTION), Int("height", 512, min=0, max=MAX_RESOLUTION),
                Combo("crop", CROP_MODES)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[torch.Tensor]:
        return (resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    schema = NodeSchema(
        type_id="ImageScaleBy", display_name="Upscale Image By", category="image/upscaling",
        inputs=(Socket("image", "IMAGE"), Combo("upscale_method", IMAGE_METHODS),
                Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, upscale_method: str,
                scale_by: float) -> tuple[torch.Tensor]:
        h, w = image.shape[1:3]
        return (resize_image(image, max(1, round(w * scale_by)), max(1, round(h * scale_by)), upscale_method),)


class ImageScaleToTotalPixels(Node):
    schema = NodeSchema(
        type_id="ImageScaleToTotalPixels", display_name="Scale Image to Total Pixels", category="image/upscaling",
        inputs=(Socket("image", "IMAGE"), Combo("upscale_method", IMAGE_METHODS),
                Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, upscale_method: str,
                megapixels: float) -> tuple[torch.Tensor]:
        h, w = image.shape[1:3]
        scale = (int(megapixels * 1024 * 1024) / (w * h)) ** 0.5  # ComfyUI truncates the pixel count first
        return (resize_image(image, max(1, round(w * scale)), max(1, round(h * scale)), upscale_method),)


class ImageScaleToMaxDimension(Node):
    schema = NodeSchema(
        type_id="ImageScaleToMaxDimension", display_name="ImageScaleToMaxDimension", category="image/upscaling",
        description="Resizes so the longer side is largest_size, keeping the aspect ratio.",
        inputs=(Socket("image", "IMAGE"), Combo("upscale_method", MAX_DIMENSION_METHODS),
                Int("largest_size", 512, min=0, max=MAX_RESOLUTION, step=1)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, upscale_method: str,
                largest_size: int) -> tuple[torch.Tensor]:
        return (geometry.scale_to_max_dimension(image, upscale_method, largest_size),)


class ImagePadForOutpaint(Node):
    schema = NodeSchema(
        type_id="ImagePadForOutpaint", display_name="Pad Image for Outpainting", category="image",
        description="Extends the canvas with grey and returns a mask of the new area, feathered inward.",
        inputs=(Socket("image", "IMAGE"),
                Int("left", 0, min=0, max=MAX_RESOLUTION, step=8), Int("top", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("right", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("feathering", 40, min=0, max=MAX_RESOLUTION, step=1)),
        outputs=(Out("IMAGE"), Out("MASK")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
        return geometry.outpaint_pad(image, left, top, right, bottom, feathering)


class ImageCrop(Node):
    schema = NodeSchema(
        type_id="ImageCrop", display_name="Image Crop", category="image/transform",
        description="A width x height window from (x, y); the window stops at the picture's edge.",
        inputs=(Socket("image", "IMAGE"),
                Int("width", 512, min=1, max=MAX_RESOLUTION, step=1), Int("height", 512, min=1, max=MAX_RESOLUTION,
                                                                          step=1),
                Int("x", 0, min=0, max=MAX_RESOLUTION, step=1), Int("y", 0, min=0, max=MAX_RESOLUTION, step=1)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, width: int, height: int, x: int,
                y: int) -> tuple[torch.Tensor]:
        return (geometry.crop(image, width, height, x, y),)


class ImageStitch(Node):
    schema = NodeSchema(
        type_id="ImageStitch", display_name="Image Stitch", category="image/transform",
        description="Places image2 beside, below or above image1, optionally with a coloured gap; image1 alone "
                    "when image2 is not connected.",
        inputs=(Socket("image1", "IMAGE"), Combo("direction", geometry.STITCH_DIRECTIONS, "right"),
                Boolean("match_image_size", True), Int("spacing_width", 0, min=0, max=1024, step=2),
                Combo("spacing_color", tuple(geometry.SPACING_COLOURS), "white"),
                Socket("image2", "IMAGE", optional=True)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image1: torch.Tensor, direction: str, match_image_size: bool,
                spacing_width: int, spacing_color: str, image2: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (geometry.stitch(image1, image2, direction, match_image_size, spacing_width, spacing_color),)


class ResizeAndPadImage(Node):
    schema = NodeSchema(
        type_id="ResizeAndPadImage", display_name="ResizeAndPadImage", category="image/transform",
        description="Fits the picture inside the target size (aspect kept) and pads the rest, centred.",
        inputs=(Socket("image", "IMAGE"), Int("target_width", 512, min=1, max=MAX_RESOLUTION, step=1),
                Int("target_height", 512, min=1, max=MAX_RESOLUTION, step=1),
                Combo("padding_color", ("white", "black")), Combo("interpolation", RESIZE_AND_PAD_METHODS)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, target_width: int, target_height: int,
                padding_color: str, interpolation: str) -> tuple[torch.Tensor]:
        return (geometry.resize_and_pad(image, target_width, target_height, padding_color, interpolation),)


class ImageRotate(Node):
    schema = NodeSchema(
        type_id="ImageRotate", display_name="ImageRotate", category="image/transform",
        description="Turns the picture clockwise by quarter turns.",
        inputs=(Socket("image", "IMAGE"), Combo("rotation", geometry.ROTATIONS)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, rotation: str) -> tuple[torch.Tensor]:
        return (geometry.rotate(image, rotation),)


class ImageFlip(Node):
    schema = NodeSchema(
        type_id="ImageFlip", display_name="ImageFlip", category="image/transform",
        description="Mirrors the picture upside down (x-axis) or left-right (y-axis).",
        inputs=(Socket("image", "IMAGE"), Combo("flip_method", geometry.FLIPS)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, flip_method: str) -> tuple[torch.Tensor]:
        return (geometry.flip(image, flip_method),)


NODES = (ImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImageScaleToMaxDimension, ImagePadForOutpaint, ImageCrop,
         ImageStitch, ResizeAndPadImage, ImageRotate, ImageFlip)
