"""Mask nodes that crop, combine, feather and grow masks, and ImageCompositeMasked, which pastes through one."""

from __future__ import annotations

import torch

from nodegraph import Boolean, Combo, InputSpec, Int, Node, NodeContext, NodeSchema, Out, Socket

from .maskops import MASK_OPERATIONS, as_mask_batch, combine_masks, composite, feather, grow, match_alpha

MAX_RESOLUTION = 16384


def _offset(name: str) -> InputSpec:
    return Int(name, 0, min=0, max=MAX_RESOLUTION, step=1)


class ImageCompositeMasked(Node):
    schema = NodeSchema(
        type_id="ImageCompositeMasked", display_name="ImageCompositeMasked", category="image",
        description="Pastes `source` onto `destination` at (x, y), through `mask` when given.",
        inputs=(Socket("destination", "IMAGE"), Socket("source", "IMAGE"), _offset("x"), _offset("y"),
                Boolean("resize_source", False), Socket("mask", "MASK", optional=True)),
        outputs=(Out("IMAGE"),))

    @classmethod
    def execute(cls, ctx: NodeContext, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                resize_source: bool, mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        destination, source = match_alpha(destination, source)
        out = composite(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


class CropMask(Node):
    schema = NodeSchema(type_id="CropMask", display_name="CropMask", category="mask",
                        inputs=(Socket("mask", "MASK"), _offset("x"), _offset("y"),
                                Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
                                Int("height", 512, min=1, max=MAX_RESOLUTION, step=1)),
                        outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, mask: torch.Tensor, x: int, y: int, width: int,
                height: int) -> tuple[torch.Tensor]:
        """The part of the mask inside the rectangle; a rectangle reaching past the edge is cut there."""
        return (as_mask_batch(mask)[:, y: y + height, x: x + width].clone(),)


class MaskComposite(Node):
    schema = NodeSchema(type_id="MaskComposite", display_name="MaskComposite", category="mask",
                        inputs=(Socket("destination", "MASK"), Socket("source", "MASK"), _offset("x"), _offset("y"),
                                Combo("operation", MASK_OPERATIONS)),
                        outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                operation: str) -> tuple[torch.Tensor]:
        return (combine_masks(destination, source, x, y, operation),)


class FeatherMask(Node):
    schema = NodeSchema(type_id="FeatherMask", display_name="FeatherMask", category="mask",
                        inputs=(Socket("mask", "MASK"), _offset("left"), _offset("top"), _offset("right"),
                                _offset("bottom")),
                        outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, mask: torch.Tensor, left: int, top: int, right: int,
                bottom: int) -> tuple[torch.Tensor]:
        return (feather(mask, left, top, right, bottom),)


class GrowMask(Node):
    schema = NodeSchema(type_id="GrowMask", display_name="GrowMask", category="mask",
                        description="Grows (expand > 0) or shrinks (expand < 0) the mask by that many pixels.",
                        inputs=(Socket("mask", "MASK"),
                                Int("expand", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                                Boolean("tapered_corners", True)),
                        outputs=(Out("MASK"),))

    @classmethod
    def execute(cls, ctx: NodeContext, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple[torch.Tensor]:
        return (grow(mask, expand, tapered_corners),)


NODES = (ImageCompositeMasked, CropMask, MaskComposite, FeatherMask, GrowMask)
