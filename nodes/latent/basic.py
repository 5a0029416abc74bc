"""Latent nodes: empty latents, resizing, noise masks for inpainting."""

from __future__ import annotations

from dataclasses import replace

import torch

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.imageops import CROP_MODES, LATENT_METHODS, resize
from ..sd.types import Latent

MAX_RESOLUTION = 16384
LATENT_CHANNELS = 4


class EmptyLatentImage(Node):
    schema = NodeSchema(
        type_id="EmptyLatentImage", display_name="Empty Latent Image", category="latent",
        description="A batch of zero latents of width x height pixels (latents are 8x smaller).",
        inputs=(Int("width", 512, min=16, max=MAX_RESOLUTION, step=8),
                Int("height", 512, min=16, max=MAX_RESOLUTION, step=8),
                Int("batch_size", 1, min=1, max=4096)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, width: int, height: int, batch_size: int) -> tuple[Latent]:
        return (Latent(torch.zeros(batch_size, LATENT_CHANNELS, height // 8, width // 8)),)


def _resize_latent(latent: Latent, width: int, height: int, method: str, crop: str) -> Latent:
    samples = resize(latent.samples, width, height, method, crop)
    mask = latent.noise_mask
    if mask is not None:
        mask = resize(mask, width, height, "bilinear", crop)
    return replace(latent, samples=samples, noise_mask=mask)


class LatentUpscale(Node):
    schema = NodeSchema(
        type_id="LatentUpscale", display_name="Upscale Latent", category="latent",
        inputs=(Socket("samples", "LATENT"), Combo("upscale_method", LATENT_METHODS),
                Int("width", 512, min=0, max=MAX_RESOLUTION, step=8),
                Int("height", 512, min=0, max=MAX_RESOLUTION, step=8),
                Combo("crop", CROP_MODES)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[Latent]:
        old_h, old_w = samples.samples.shape[-2:]
        if width == 0 and height == 0:
            return (samples,)
        w = width // 8 if width else max(1, round(old_w * (height // 8) / old_h))
        h = height // 8 if height else max(1, round(old_h * (width // 8) / old_w))
        return (_resize_latent(samples, w, h, upscale_method, crop),)


class LatentUpscaleBy(Node):
    schema = NodeSchema(
        type_id="LatentUpscaleBy", display_name="Upscale Latent By", category="latent",
        inputs=(Socket("samples", "LATENT"), Combo("upscale_method", LATENT_METHODS),
                Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        old_h, old_w = samples.samples.shape[-2:]
        w, h = max(1, round(old_w * scale_by)), max(1, round(old_h * scale_by))
        return (_resize_latent(samples, w, h, upscale_method, "disabled"),)


class SetLatentNoiseMask(Node):
    schema = NodeSchema(
        type_id="SetLatentNoiseMask", display_name="Set Latent Noise Mask", category="latent/inpaint",
        description="Sampling changes the latent only where the mask is 1 (white).",
        inputs=(Socket("samples", "LATENT"), Socket("mask", "MASK")),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, mask: torch.Tensor) -> tuple[Latent]:
        mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
        return (replace(samples, noise_mask=mask),)


NODES = (EmptyLatentImage, LatentUpscale, LatentUpscaleBy, SetLatentNoiseMask)
