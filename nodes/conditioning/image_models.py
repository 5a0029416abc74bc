"""Conditioning for UNets that read an image besides the noisy latent: inpainting models (9 input channels)
and InstructPix2Pix models (8). The image's latent travels in CondItem.concat and the denoiser stacks it onto
the UNet's input (nodes/sd/cond_regions.py); a plain 4-channel UNet ignores it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from nodegraph import Boolean, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.types import ConcatLatent, Conditioning, Latent, VaeHandle
from ..vae_nodes import crop_to_multiple


def _with_concat(conditioning: Conditioning, concat: ConcatLatent) -> Conditioning:
    return tuple(replace(item, concat=concat) for item in conditioning)


class InpaintModelConditioning(Node):
    schema = NodeSchema(
        type_id="InpaintModelConditioning", display_name="InpaintModelConditioning", category="conditioning/inpaint",
        description="For inpainting models: the masked image's latent and the mask condition the UNet; the "
                    "latent output is the whole image's, with the mask as noise mask when noise_mask is on.",
        inputs=(Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
                Socket("pixels", "IMAGE"), Socket("mask", "MASK"),
                Boolean("noise_mask", True, tooltip="Add a noise mask to the latent so sampling will only happen "
                        "within the mask. Might improve results or completely break things depending on the model.")),
        outputs=(Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative"), Out("LATENT", "latent")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, positive: Conditioning, negative: Conditioning, vae: VaeHandle,
                pixels: torch.Tensor, mask: torch.Tensor,
                noise_mask: bool) -> tuple[Conditioning, Conditioning, Latent]:
        from ..sd.vae import encode

        height, width = pixels.shape[1:3]
        mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
        image = crop_to_multiple(pixels[..., :3])
        mask = crop_to_multiple(mask.movedim(1, -1)).movedim(-1, 1)
        keep = (1.0 - mask.round()).movedim(1, -1)
        masked = (image - 0.5) * keep + 0.5  # the area to repaint becomes neutral grey
        concat = ConcatLatent(latent=encode(vae, masked), mask=mask)
        latent = Latent(encode(vae, image), noise_mask=mask if noise_mask else None)
        return _with_concat(positive, concat), _with_concat(negative, concat), latent


class InstructPixToPixConditioning(Node):
    schema = NodeSchema(
        type_id="InstructPixToPixConditioning", display_name="InstructPixToPixConditioning",
        category="conditioning/instructpix2pix",
        description="For InstructPix2Pix models (Brooks et al. 2023): the input image's latent conditions the "
                    "UNet; the latent output is an empty latent of the image's size.",
        inputs=(Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
                Socket("pixels", "IMAGE")),
        outputs=(Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative"), Out("LATENT", "latent")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, positive: Conditioning, negative: Conditioning, vae: VaeHandle,
                pixels: torch.Tensor) -> tuple[Conditioning, Conditioning, Latent]:
        from ..sd.vae import encode

        scaled = encode(vae, crop_to_multiple(pixels[..., :3]))
        # InstructPix2Pix was trained on the VAE's unscaled latents (diffusers' pipeline and ComfyUI both feed them)
        concat = ConcatLatent(latent=scaled / vae.scaling_factor + vae.shift_factor)
        return _with_concat(positive, concat), _with_concat(negative, concat), Latent(torch.zeros_like(scaled))


NODES = (InpaintModelConditioning, InstructPixToPixConditioning)
