"""A depth map of a picture of one shape on a plain background: what the embedded depth model was trained on."""

from __future__ import annotations

import torch

from nodegraph import Float, Node, NodeContext, NodeSchema, Out, Socket


class ShapesDepthMap(Node):
    schema = NodeSchema(
        type_id="ShapesDepthMap", display_name="Depth Map (Shapes)", category="image/preprocessors",
        description="The height field of the shape in an image of a shape on a plain background: 0 on the "
                    "background (the border's colour), rising to 1 over `falloff` of the image side inside the "
                    "shape. The depth the embedded depth-to-image model was trained with (nodes/sd/depth.py).",
        inputs=(Socket("image", "IMAGE"),
                Float("falloff", 0.05, min=0.005, max=0.5, step=0.005,
                      tooltip="Width of the rise from the edge to full height, as a fraction of the image height.")),
        outputs=(Out("IMAGE", "IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, falloff: float) -> tuple[torch.Tensor]:
        from ..sd.depth import image_depth

        depth = image_depth(image, falloff)
        return (depth[..., None].expand(-1, -1, -1, 3).contiguous(),)


NODES = (ShapesDepthMap,)
