"""Post-processing nodes (image/postprocessing): blend, blur, quantize, sharpen."""

from __future__ import annotations

import torch

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.imageops import resize
from .ops import filters
from .ops.geometry import pad_channels


class ImageBlend(Node):
    schema = NodeSchema(
        type_id="ImageBlend", display_name="Image Blend", category="image/postprocessing",
        description="image2 blended onto image1 with a blend mode, mixed in by blend_factor (image2 is resized to "
                    "image1 when their shapes differ).",
        inputs=(Socket("image1", "IMAGE"), Socket("image2", "IMAGE"),
                Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01), Combo("blend_mode", filters.BLEND_MODES)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float,
                blend_mode: str) -> tuple[torch.Tensor]:
        channels = max(image1.shape[-1], image2.shape[-1])  # RGB beside RGBA: the RGB one becomes opaque RGBA
        image1, image2 = pad_channels(image1, channels), pad_channels(image2.to(image1.device), channels)
        if image1.shape != image2.shape:
            image2 = resize(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bicubic", "center").movedim(1, -1)
        blended = filters.blend(image1, image2, blend_factor, blend_mode)
        if channels == 4:
            blended[..., 3] = image1[..., 3]  # alpha is coverage, not colour: image1's is kept
        return (blended,)


class ImageBlur(Node):
    schema = NodeSchema(
        type_id="ImageBlur", display_name="Image Blur", category="image/postprocessing",
        description="Gaussian blur over a (2 * blur_radius + 1)^2 window; sigma is relative to the radius.",
        inputs=(Socket("image", "IMAGE"), Int("blur_radius", 1, min=1, max=31, step=1),
                Float("sigma", 1.0, min=0.1, max=10.0, step=0.1)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple[torch.Tensor]:
        return (filters.gaussian_blur(image, blur_radius, sigma),)


class ImageQuantize(Node):
    schema = NodeSchema(
        type_id="ImageQuantize", display_name="Image Quantize", category="image/postprocessing",
        description="Reduces each picture to a palette of `colors` colours, optionally dithered.",
        inputs=(Socket("image", "IMAGE"), Int("colors", 256, min=1, max=256, step=1),
                Combo("dither", filters.DITHER_MODES)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, colors: int, dither: str) -> tuple[torch.Tensor]:
        return (filters.quantize(image, colors, dither),)


class ImageSharpen(Node):
    schema = NodeSchema(
        type_id="ImageSharpen", display_name="Image Sharpen", category="image/postprocessing",
        description="Unsharp masking: the picture minus alpha times its Gaussian-blurred surroundings.",
        inputs=(Socket("image", "IMAGE"), Int("sharpen_radius", 1, min=1, max=31, step=1),
                Float("sigma", 1.0, min=0.1, max=10.0, step=0.01), Float("alpha", 1.0, min=0.0, max=5.0, step=0.01)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, sharpen_radius: int, sigma: float,
                alpha: float) -> tuple[torch.Tensor]:
        return (filters.sharpen(image, sharpen_radius, sigma, alpha),)


NODES = (ImageBlend, ImageBlur, ImageQuantize, ImageSharpen)
