"""Compositing nodes (mask/compositing): Porter-Duff operators and RGBA splitting and joining."""

from __future__ import annotations

import torch

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out, Socket

from .ops.compositing import PORTER_DUFF_MODES, join_alpha, porter_duff_batch, split_alpha


class PorterDuffImageComposite(Node):
    schema = NodeSchema(
        type_id="PorterDuffImageComposite", display_name="Porter-Duff Image Composite", category="mask/compositing",
        description="Composites source onto destination with a Porter-Duff operator; the alphas are MASKs "
                    "(1 = transparent), and so is the returned alpha.",
        inputs=(Socket("source", "IMAGE"), Socket("source_alpha", "MASK"), Socket("destination", "IMAGE"),
                Socket("destination_alpha", "MASK"), Combo("mode", PORTER_DUFF_MODES, "DST")),
        outputs=(Out("IMAGE"), Out("MASK")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, source: torch.Tensor, source_alpha: torch.Tensor, destination: torch.Tensor,
                destination_alpha: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        return porter_duff_batch(source, source_alpha, destination, destination_alpha, mode)


class SplitImageWithAlpha(Node):
    schema = NodeSchema(
        type_id="SplitImageWithAlpha", display_name="Split Image with Alpha", category="mask/compositing",
        description="RGB and its alpha as a MASK (1 - alpha).",
        inputs=(Socket("image", "IMAGE"),), outputs=(Out("IMAGE"), Out("MASK")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_alpha(image)


class JoinImageWithAlpha(Node):
    schema = NodeSchema(
        type_id="JoinImageWithAlpha", display_name="Join Image with Alpha", category="mask/compositing",
        description="RGBA from RGB and a MASK (alpha = 1 - mask, resized to the picture).",
        inputs=(Socket("image", "IMAGE"), Socket("alpha", "MASK")), outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor]:
        return (join_alpha(image, alpha),)


NODES = (PorterDuffImageComposite, SplitImageWithAlpha, JoinImageWithAlpha)
