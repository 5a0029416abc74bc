"""SD_4XUpscale_Conditioning: conditioning for Stable Diffusion's x4 upscaler (maths in nodes/sd/x4_upscale.py)."""

from __future__ import annotations

from dataclasses import replace

import torch

from nodegraph import Float, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.types import ConcatLatent, Conditioning, Latent
from ..sd.x4_upscale import X4UpscaleConditioning, upscale_inputs

X4_KEY = "upscale_x4"
"""The CondItem.extras key of the noise augmentation (a RowKwargs giving the UNet its class label)."""


def _with_image(conditioning: Conditioning, concat: ConcatLatent, augmentation: X4UpscaleConditioning) -> Conditioning:
    return tuple(replace(item, concat=concat, extras={**item.extras, X4_KEY: augmentation}) for item in conditioning)


class SD_4XUpscale_Conditioning(Node):
    schema = NodeSchema(
        type_id="SD_4XUpscale_Conditioning", display_name="SD_4XUpscale_Conditioning",
        category="conditioning/upscale_diffusion",
        description="The low-res image (at a quarter of the target size, -1..1) stacked onto the x4 upscaler's "
                    "input and its noise-augmentation level; the latent is empty at that quarter size.",
        inputs=(Socket("images", "IMAGE"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Float("scale_ratio", 4.0, min=0.0, max=10.0, step=0.01),
                Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.001)),
        outputs=(Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative"), Out("LATENT", "latent")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, positive: Conditioning, negative: Conditioning,
                scale_ratio: float, noise_augmentation: float) -> tuple[Conditioning, Conditioning, Latent]:
        pixels, latent_shape = upscale_inputs(images, scale_ratio)
        concat, augmentation = ConcatLatent(latent=pixels), X4UpscaleConditioning(float(noise_augmentation))
        return (_with_image(positive, concat, augmentation), _with_image(negative, concat, augmentation),
                Latent(torch.zeros(latent_shape)))
