"""Image files in and out: load from the input folder, save PNGs with their workflow, preview."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin

from nodegraph import Combo, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.formats.png import NATIVE_KEY, png_info
from nodegraph.paths import list_files, output_prefix_problem, save_new_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _input_images(env: Any) -> list[str]:
    return list_files(env.input_dir, IMAGE_EXTENSIONS) if env is not None else []


def pil_to_image(pil: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [1,H,W,3] and MASK [1,H,W] (1 where the picture is transparent, ComfyUI's convention)."""
    pil = ImageOps.exif_transpose(pil)
    rgb = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
    if "A" in pil.getbands():
        alpha = np.asarray(pil.getchannel("A"), dtype=np.float32) / 255.0
        mask = 1.0 - torch.from_numpy(alpha)
    else:
        mask = torch.zeros(rgb.shape[:2])
    return torch.from_numpy(rgb).unsqueeze(0), mask.unsqueeze(0)


def image_to_png_bytes(image: torch.Tensor, pnginfo: PngImagePlugin.PngInfo | None = None) -> bytes:
    """One IMAGE [H,W,C] in 0..1 as PNG bytes."""
    array = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, "PNG", pnginfo=pnginfo,
                                                                              compress_level=4)
    return buffer.getvalue()


def save_output(directory: Any, prefix: str, extension: str, data: bytes, folder_type: str) -> dict[str, str]:
    """Write `data` to a new `prefix_00001_.ext` under `directory` (atomically, never overwriting, never outside
    it) and describe it the way ComfyUI's UI expects: `{"filename", "subfolder", "type"}`."""
    path = save_new_file(directory, prefix, extension, data)
    subfolder = path.parent.relative_to(Path(directory).resolve()).as_posix()
    return {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": folder_type}


def extra_info(ctx: NodeContext) -> dict[str, Any]:
    """ComfyUI's `extra_pnginfo` (the UI workflow) plus our native workflow, whichever the run carries."""
    meta = ctx.metadata
    return {key: meta[key] for key in ("workflow", NATIVE_KEY) if meta.get(key) is not None}


class LoadImage(Node):
    schema = NodeSchema(
        type_id="LoadImage", display_name="Load Image", category="image",
        description="An image from the input folder; its alpha channel becomes the MASK.",
        inputs=(Combo("image", _input_images, image_upload=True),),
        outputs=(Out("IMAGE"), Out("MASK")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = ctx.env.input_path(image)
        with Image.open(path) as pil:
            frames = [pil_to_image(frame.copy()) for frame in ImageSequence.Iterator(pil)]
        size = frames[0][0].shape[1:3]
        frames = [f for f in frames if f[0].shape[1:3] == size]  # ComfyUI drops frames of another size
        return torch.cat([f[0] for f in frames]), torch.cat([f[1] for f in frames])

    @classmethod
    def fingerprint(cls, ctx: NodeContext, image: str) -> Any:
        return ctx.fingerprint_file(ctx.env.input_path(image))


class SaveImage(Node):
    schema = NodeSchema(
        type_id="SaveImage", display_name="Save Image", category="image",
        description="Saves PNGs to the output folder, with the workflow that made them embedded.",
        inputs=(Socket("images", "IMAGE"), String("filename_prefix", "ComfyUI", check=output_prefix_problem)),
        output_node=True,
    )
    folder_type = "output"

    @classmethod
    def _directory(cls, ctx: NodeContext) -> Any:
        return ctx.env.output_dir

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, filename_prefix: str) -> NodeResult:
        directory = cls._directory(ctx)
        meta = ctx.metadata  # ComfyUI's `prompt` and `workflow` chunks plus our native workflow, when known
        info = png_info(meta.get("prompt"), meta.get("workflow"), meta.get("nodegraph_workflow"))
        saved = [save_output(directory, filename_prefix, "png", image_to_png_bytes(image, info), cls.folder_type)
                 for image in images]
        return NodeResult(ui={"images": saved})


class PreviewImage(SaveImage):
    schema = NodeSchema(
        type_id="PreviewImage", display_name="Preview Image", category="image",
        description="Shows the images without keeping them (written to the temp folder).",
        inputs=(Socket("images", "IMAGE"),), output_node=True,
    )
    folder_type = "temp"

    @classmethod
    def _directory(cls, ctx: NodeContext) -> Any:
        return ctx.env.temp_dir

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, filename_prefix: str = "preview") -> NodeResult:
        return super().execute(ctx, images, "ComfyUI_temp")


NODES = (LoadImage, SaveImage, PreviewImage)
