"""Edge, morphology and colour-space nodes: Canny (image/preprocessors), Morphology (image/postprocessing) and
RGB <-> YUV planes (image/batch), all computed with kornia."""

from __future__ import annotations

import torch

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from .ops import filters


class Canny(Node):
    schema = NodeSchema(
        type_id="Canny", display_name="Canny", category="image/preprocessors",
        description="Canny edge map (white edges on black), e.g. for a Canny ControlNet.",
        inputs=(Socket("image", "IMAGE"), Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01),
                Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, low_threshold: float,
                high_threshold: float) -> tuple[torch.Tensor]:
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
        return (filters.canny_edges(image, low_threshold, high_threshold),)


class Morphology(Node):
    schema = NodeSchema(
        type_id="Morphology", display_name="ImageMorphology", category="image/postprocessing",
        description="Grey-scale erosion, dilation and their combinations with a square kernel.",
        inputs=(Socket("image", "IMAGE"), Combo("operation", filters.MORPHOLOGY_OPERATIONS),
                Int("kernel_size", 3, min=3, max=999, step=1)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, operation: str, kernel_size: int) -> tuple[torch.Tensor]:
        return (filters.morphology(image, operation, kernel_size),)


class ImageRGBToYUV(Node):
    schema = NodeSchema(
        type_id="ImageRGBToYUV", display_name="ImageRGBToYUV", category="image/batch",
        description="The Y, U and V (YCbCr) planes of the picture, each as a grey image.",
        inputs=(Socket("image", "IMAGE"),), outputs=(Out("IMAGE", "Y"), Out("IMAGE", "U"), Out("IMAGE", "V")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return filters.rgb_to_yuv(image)


class ImageYUVToRGB(Node):
    schema = NodeSchema(
        type_id="ImageYUVToRGB", display_name="ImageYUVToRGB", category="image/batch",
        description="The RGB picture from Y, U and V (YCbCr) planes.",
        inputs=(Socket("Y", "IMAGE"), Socket("U", "IMAGE"), Socket("V", "IMAGE")), outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, Y: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor]:
        return (filters.yuv_to_rgb(Y, U, V),)


NODES = (Canny, Morphology, ImageRGBToYUV, ImageYUVToRGB)
