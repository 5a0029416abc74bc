"""Conditioning for depth-to-image UNets (SD2-depth layout: 5 input channels, the noisy latent and a depth map).

ComfyUI has no node for these models; ours stacks a depth map onto the UNet's input through the same
concatenated-latent mechanism as InstructPix2Pix and inpainting models (nodes/sd/cond_regions.py).
"""

from __future__ import annotations

import torch

from nodegraph import Node, NodeContext, NodeSchema, Out, Socket

from ..sd.types import ConcatLatent, Conditioning
from .image_models import _with_concat

LATENT_FACTOR = 8


class DepthToImageConditioning(Node):
    schema = NodeSchema(
        type_id="DepthToImageConditioning", display_name="Depth To Image Conditioning", category="conditioning/depth",
        description="For depth-to-image models (SD2-depth layout): the depth map (an image, brighter = nearer) "
                    "is resized to the latent size and normalised to -1..1 per image, as diffusers' "
                    "StableDiffusionDepth2ImgPipeline does, and conditions the UNet as a 5th input channel.",
        inputs=(Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("depth", "IMAGE")),
        outputs=(Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, positive: Conditioning, negative: Conditioning,
                depth: torch.Tensor) -> tuple[Conditioning, Conditioning]:
        from ..sd.depth import depth_to_latent

        height, width = depth.shape[1] // LATENT_FACTOR, depth.shape[2] // LATENT_FACTOR
        if height < 1 or width < 1:
            raise ValueError(f"DepthToImageConditioning: depth image {depth.shape[2]}x{depth.shape[1]} is smaller "
                             f"than one latent pixel ({LATENT_FACTOR} px)")
        concat = ConcatLatent(latent=depth_to_latent(depth[..., :3].float().mean(dim=-1), height, width))
        return _with_concat(positive, concat), _with_concat(negative, concat)


NODES = (DepthToImageConditioning,)
