"""LoadImageMask (one channel of an input image as a MASK) and LoadImageOutput (an image from the output
folder, for iterating on a previous result), with LoadImage's safe paths and file fingerprints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out
from nodegraph.paths import list_files, safe_join

from .files import IMAGE_EXTENSIONS, pil_to_image

MASK_CHANNELS = ("alpha", "red", "green", "blue")
_ANNOTATION = re.compile(r"^(.*?)\s*\[(input|output|temp)\]$")


def split_annotation(name: str) -> tuple[str, str | None]:
    """ComfyUI's "name.png [output]" names the folder inside the file name: ("name.png", "output")."""
    match = _ANNOTATION.match(name)
    return (match.group(1), match.group(2)) if match else (name, None)


def annotated_path(env: Any, name: str, default_folder: str) -> Path:
    """The file a possibly annotated name refers to, resolved safely inside its folder (never outside)."""
    filename, folder = split_annotation(name)
    roots = {"input": env.input_dir, "output": env.output_dir, "temp": env.temp_dir}
    return safe_join(roots[folder or default_folder], filename)


def _input_images(env: Any) -> list[str]:
    return list_files(env.input_dir, IMAGE_EXTENSIONS) if env is not None else []


def _output_images(env: Any) -> list[str]:
    """Images in the output folder, annotated "[output]" as ComfyUI's editor lists them."""
    return [f"{name} [output]" for name in list_files(env.output_dir, IMAGE_EXTENSIONS)] if env is not None else []


def load_mask_channel(path: Path, channel: str) -> torch.Tensor:
    """One channel of the image's first frame as a MASK [1, H, W] in 0..1; alpha inverted (1 = transparent).

    As ComfyUI: 32-bit integer images ("I", e.g. 16-bit PNGs) are scaled by 1/255 first, and an image
    without alpha has an opaque one, so its alpha mask is all zeros.
    """
    with Image.open(path) as pil:
        pil = ImageOps.exif_transpose(pil)
        if pil.getbands() != ("R", "G", "B", "A"):
            if pil.mode == "I":
                pil = pil.point(lambda value: value * (1 / 255))
            pil = pil.convert("RGBA")
        band = pil.getchannel(channel[0].upper())
        mask = torch.from_numpy(np.asarray(band, dtype=np.float32) / 255.0)
    return (1.0 - mask if channel == "alpha" else mask).unsqueeze(0)


def load_image_frames(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B,H,W,3] and MASK [B,H,W] of every frame the size of the first, as LoadImage reads them."""
    with Image.open(path) as pil:
        frames = [pil_to_image(frame.copy()) for frame in ImageSequence.Iterator(pil)]
    size = frames[0][0].shape[1:3]
    frames = [frame for frame in frames if frame[0].shape[1:3] == size]
    return torch.cat([frame[0] for frame in frames]), torch.cat([frame[1] for frame in frames])


class LoadImageMask(Node):
    schema = NodeSchema(
        type_id="LoadImageMask", display_name="Load Image (as Mask)", category="mask",
        description="One channel of an image from the input folder as a mask (alpha: 1 where transparent).",
        inputs=(Combo("image", _input_images, image_upload=True), Combo("channel", MASK_CHANNELS)),
        outputs=(Out("MASK"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: str, channel: str) -> tuple[torch.Tensor]:
        return (load_mask_channel(annotated_path(ctx.env, image, "input"), channel),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, image: str, **_: Any) -> Any:
        return ctx.fingerprint_file(annotated_path(ctx.env, image, "input"))


class LoadImageOutput(Node):
    schema = NodeSchema(
        type_id="LoadImageOutput", display_name="Load Image (from Outputs)", category="image",
        description="Load an image from the output folder, e.g. to iterate on a previous result; its alpha "
                    "channel becomes the MASK. Names carry ComfyUI's \"[output]\" annotation.",
        inputs=(Combo("image", _output_images),),
        outputs=(Out("IMAGE"), Out("MASK")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image_frames(annotated_path(ctx.env, image, "output"))

    @classmethod
    def fingerprint(cls, ctx: NodeContext, image: str) -> Any:
        return ctx.fingerprint_file(annotated_path(ctx.env, image, "output"))


NODES = (LoadImageMask, LoadImageOutput)
