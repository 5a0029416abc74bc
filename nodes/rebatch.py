"""Rebatch nodes (latent/batch, image/batch): a list of batches in, a list of batches of another size out.

They take whole lists (input_is_list) and give lists (an output declared a list), so the nodes after them run
once per new batch, e.g. a KSampler sampling a large batch a few items at a time.
"""

from __future__ import annotations

import torch

from nodegraph import Int, Node, NodeContext, NodeSchema, Out, Socket

from .sd.rebatch import rebatch_images, rebatch_latents
from .sd.types import Latent


class RebatchLatents(Node):
    schema = NodeSchema(
        type_id="RebatchLatents", display_name="Rebatch Latents", category="latent/batch", input_is_list=True,
        description="Cuts a list of latent batches into batches of batch_size; keeps noise masks and batch indices.",
        inputs=(Socket("latents", "LATENT"), Int("batch_size", 1, min=1, max=4096)),
        outputs=(Out("LATENT", is_list=True),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, latents: list[Latent], batch_size: list[int]) -> tuple[list[Latent]]:
        return (rebatch_latents(latents, batch_size[0]),)


class RebatchImages(Node):
    schema = NodeSchema(
        type_id="RebatchImages", display_name="Rebatch Images", category="image/batch", input_is_list=True,
        description="Cuts a list of image batches into batches of batch_size images, in order.",
        inputs=(Socket("images", "IMAGE"), Int("batch_size", 1, min=1, max=4096)),
        outputs=(Out("IMAGE", is_list=True),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: list[torch.Tensor], batch_size: list[int]) -> tuple[list[torch.Tensor]]:
        return (rebatch_images(images, batch_size[0]),)


NODES = (RebatchLatents, RebatchImages)
