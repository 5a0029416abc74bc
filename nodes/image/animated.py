"""Animated saving nodes (image/animation): a batch as one animated WEBP or PNG, the workflow embedded the way
ComfyUI embeds it.

Every file goes through `files.save_output`: the prefix is checked before the run (no `..`, no absolute path, no
symlink out of the output folder), the bytes are written to a hidden temporary file and linked under the first
free `prefix_00001_.ext` name, so nothing half-written or overwritten is ever visible.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeResult, NodeSchema, Socket, String
from nodegraph.paths import output_prefix_problem

from .files import extra_info, save_output

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
"""libwebp's `method` (speed against size) for each choice ComfyUI offers."""
_EXIF_MODEL = 0x0110
_EXIF_MAKE = 0x010F


def _frames(images: torch.Tensor) -> list[Image.Image]:
    arrays = np.clip(images.detach().float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)  # truncation, as ComfyUI
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arrays]


def _frame_duration_ms(fps: float) -> int:
    return int(1000.0 / fps)


def animated_webp_bytes(frames: list[Image.Image], fps: float, lossless: bool, quality: int, method: int,
                        prompt: Any, extra: dict[str, Any]) -> bytes:
    """An animated WEBP; the prompt goes in EXIF Model (0x0110) as "prompt:<json>" and each extra entry in the
    tags below it, starting at Make (0x010F), as "<key>:<json>" (where ComfyUI's loaders look for them)."""
    exif = frames[0].getexif()
    if prompt is not None:
        exif[_EXIF_MODEL] = f"prompt:{json.dumps(prompt)}"
    for offset, (key, value) in enumerate(extra.items()):
        exif[_EXIF_MAKE - offset] = f"{key}:{json.dumps(value)}"
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=_frame_duration_ms(fps),
                   exif=exif, lossless=lossless, quality=quality, method=method)
    return buffer.getvalue()


def animated_png_bytes(frames: list[Image.Image], fps: float, compress_level: int, prompt: Any,
                       extra: dict[str, Any]) -> bytes:
    """An APNG; the prompt and each extra entry go in private `comf` chunks after the image data, each holding
    "<key>\\0<json>" in Latin-1 (JSON text is ASCII)."""
    info = PngImagePlugin.PngInfo()
    entries = ([("prompt", prompt)] if prompt is not None else []) + list(extra.items())
    for key, value in entries:
        info.add(b"comf", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"), after_idat=True)
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", pnginfo=info, compress_level=compress_level, save_all=True,
                   duration=_frame_duration_ms(fps), append_images=frames[1:])
    return buffer.getvalue()


class SaveAnimatedWEBP(Node):
    schema = NodeSchema(
        type_id="SaveAnimatedWEBP", display_name="SaveAnimatedWEBP", category="image/animation",
        description="Saves the batch as one animated WEBP in the output folder, with the workflow in its EXIF.",
        inputs=(Socket("images", "IMAGE"), String("filename_prefix", "ComfyUI", check=output_prefix_problem),
                Float("fps", 6.0, min=0.01, max=1000.0, step=0.01), Boolean("lossless", True),
                Int("quality", 80, min=0, max=100), Combo("method", tuple(WEBP_METHODS))),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, filename_prefix: str, fps: float, lossless: bool,
                quality: int, method: str) -> NodeResult:
        data = animated_webp_bytes(_frames(images), fps, lossless, quality, WEBP_METHODS[method],
                                   ctx.metadata.get("prompt"), extra_info(ctx))
        saved = save_output(ctx.env.output_dir, filename_prefix, "webp", data, "output")
        return NodeResult(ui={"images": [saved], "animated": [True]})


class SaveAnimatedPNG(Node):
    schema = NodeSchema(
        type_id="SaveAnimatedPNG", display_name="SaveAnimatedPNG", category="image/animation",
        description="Saves the batch as one animated PNG in the output folder, with the workflow embedded.",
        inputs=(Socket("images", "IMAGE"), String("filename_prefix", "ComfyUI", check=output_prefix_problem),
                Float("fps", 6.0, min=0.01, max=1000.0, step=0.01), Int("compress_level", 4, min=0, max=9)),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, filename_prefix: str, fps: float,
                compress_level: int) -> NodeResult:
        data = animated_png_bytes(_frames(images), fps, compress_level, ctx.metadata.get("prompt"), extra_info(ctx))
        saved = save_output(ctx.env.output_dir, filename_prefix, "png", data, "output")
        return NodeResult(ui={"images": [saved], "animated": [True]})


NODES = (SaveAnimatedWEBP, SaveAnimatedPNG)
