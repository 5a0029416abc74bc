"""VAE nodes: latents to images and back (whole or in tiles), and the inpainting encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph import Int, Node, NodeContext, NodeSchema, Out, Socket

from .sd.types import Latent, VaeHandle


def crop_to_multiple(pixels: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Centre-crop an IMAGE [B,H,W,C] so both sides are multiples of the VAE's downsampling."""
    h, w = pixels.shape[1:3]
    new_h, new_w = (h // multiple) * multiple, (w // multiple) * multiple
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of {w}x{h} is smaller than {multiple}x{multiple}")
    y, x = (h - new_h) // 2, (w - new_w) // 2
    return pixels[:, y: y + new_h, x: x + new_w, :]


class VAEDecode(Node):
    schema = NodeSchema(
        type_id="VAEDecode", display_name="VAE Decode", category="latent",
        inputs=(Socket("samples", "LATENT"), Socket("vae", "VAE")), outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, vae: VaeHandle) -> tuple[torch.Tensor]:
        from .sd.vae import decode

        return (decode(vae, samples.samples),)


class VAEEncode(Node):
    schema = NodeSchema(
        type_id="VAEEncode", display_name="VAE Encode", category="latent",
        inputs=(Socket("pixels", "IMAGE"), Socket("vae", "VAE")), outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, pixels: torch.Tensor, vae: VaeHandle) -> tuple[Latent]:
        from .sd.vae import encode

        return (Latent(encode(vae, crop_to_multiple(pixels[..., :3]))),)


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate a [B,1,H,W] mask by `pixels` (a square max filter)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * pixels + 1, stride=1, padding=pixels)


class VAEEncodeForInpaint(Node):
    schema = NodeSchema(
        type_id="VAEEncodeForInpaint", display_name="VAE Encode (for Inpainting)", category="latent/inpaint",
        description="Greys out the masked pixels before encoding and keeps the (grown) mask for the sampler.",
        inputs=(Socket("pixels", "IMAGE"), Socket("vae", "VAE"), Socket("mask", "MASK"),
                Int("grow_mask_by", 6, min=0, max=64)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, pixels: torch.Tensor, vae: VaeHandle, mask: torch.Tensor,
                grow_mask_by: int) -> tuple[Latent]:
        from .sd.vae import encode

        h, w = pixels.shape[1:3]
        mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
        mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
        pixels = crop_to_multiple(pixels[..., :3].clone())
        mask = crop_to_multiple(mask.movedim(1, -1)).movedim(-1, 1)
        grown = grow_mask(mask, grow_mask_by).round()
        keep = (1.0 - mask.round()).movedim(1, -1)
        pixels = (pixels - 0.5) * keep + 0.5  # masked pixels become neutral grey
        return (Latent(encode(vae, pixels), noise_mask=grown),)


class VAEDecodeTiled(Node):
    schema = NodeSchema(
        type_id="VAEDecodeTiled", display_name="VAE Decode (Tiled)", category="_for_testing",
        description="Decodes in overlapping tiles (less memory); the overlaps are blended, so no seams show.",
        inputs=(Socket("samples", "LATENT"), Socket("vae", "VAE"),
                Int("tile_size", 512, min=64, max=4096, step=32),
                Int("overlap", 64, min=0, max=4096, step=32),
                Int("temporal_size", 64, min=8, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to decode at a time."),
                Int("temporal_overlap", 8, min=4, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to overlap.")),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, vae: VaeHandle, tile_size: int, overlap: int,
                temporal_size: int, temporal_overlap: int) -> tuple[torch.Tensor]:
        from .sd.tiled_vae import decode_tiled

        return (decode_tiled(vae, samples.samples, tile_size, overlap),)  # image VAEs have no time axis


class VAEEncodeTiled(Node):
    schema = NodeSchema(
        type_id="VAEEncodeTiled", display_name="VAE Encode (Tiled)", category="_for_testing",
        description="Encodes in overlapping tiles (less memory); the overlaps are blended.",
        inputs=(Socket("pixels", "IMAGE"), Socket("vae", "VAE"),
                Int("tile_size", 512, min=64, max=4096, step=64),
                Int("overlap", 64, min=0, max=4096, step=32),
                Int("temporal_size", 64, min=8, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to encode at a time."),
                Int("temporal_overlap", 8, min=4, max=4096, step=4,
                    tooltip="Only used for video VAEs: Amount of frames to overlap.")),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, pixels: torch.Tensor, vae: VaeHandle, tile_size: int, overlap: int,
                temporal_size: int, temporal_overlap: int) -> tuple[Latent]:
        from .sd.tiled_vae import encode_tiled

        return (Latent(encode_tiled(vae, crop_to_multiple(pixels[..., :3]), tile_size, overlap)),)


NODES = (VAEDecode, VAEEncode, VAEEncodeForInpaint, VAEDecodeTiled, VAEEncodeTiled)
