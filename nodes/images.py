"""Image nodes: load from the input folder, save PNGs with their workflow, preview, resize, pad."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.formats.png import png_info
from nodegraph.paths import list_files, output_prefix_problem, save_new_file

from .sd.imageops import CROP_MODES, IMAGE_METHODS, resize_image

MAX_RESOLUTION = 16384
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
        saved = []
        for image in images:
            path = save_new_file(directory, filename_prefix, "png", image_to_png_bytes(image, info))
            subfolder = path.parent.relative_to(directory.resolve()).as_posix()
            saved.append({"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                          "type": cls.folder_type})
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


class ImageScale(Node):
    schema = NodeSchema(
        type_id="ImageScale", display_name="Upscale Image", category="image/upscaling",
        inputs=(Socket("image", "IMAGE"), Combo("upscale_method", IMAGE_METHODS),
                Int("width", 512, min=0, max=MAX_RESOLUTION), Int("height", 512, min=0, max=MAX_RESOLUTION),
                Combo("crop", CROP_MODES)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[torch.Tensor]:
        return (resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    schema = NodeSchema(
        type_id="ImageScaleBy", display_name="Upscale Image By", category="image/upscaling",
        inputs=(Socket("image", "IMAGE"), Combo("upscale_method", IMAGE_METHODS),
                Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple[torch.Tensor]:
        h, w = image.shape[1:3]
        return (resize_image(image, max(1, round(w * scale_by)), max(1, round(h * scale_by)), upscale_method),)


class ImageScaleToTotalPixels(Node):
    schema = NodeSchema(
        type_id="ImageScaleToTotalPixels", display_name="Scale Image to Total Pixels", category="image/upscaling",
        inputs=(Socket("image", "IMAGE"), Combo("upscale_method", IMAGE_METHODS),
                Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, upscale_method: str,
                megapixels: float) -> tuple[torch.Tensor]:
        h, w = image.shape[1:3]
        scale = (megapixels * 1024 * 1024 / (w * h)) ** 0.5
        return (resize_image(image, max(1, round(w * scale)), max(1, round(h * scale)), upscale_method),)


class ImagePadForOutpaint(Node):
    schema = NodeSchema(
        type_id="ImagePadForOutpaint", display_name="Pad Image for Outpainting", category="image",
        description="Extends the canvas with grey and returns a mask of the new area, feathered inward.",
        inputs=(Socket("image", "IMAGE"),
                Int("left", 0, min=0, max=MAX_RESOLUTION, step=8), Int("top", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("right", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("feathering", 40, min=0, max=MAX_RESOLUTION)),
        outputs=(Out("IMAGE"), Out("MASK")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, c = image.shape
        out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=image.dtype)
        out[:, top: top + h, left: left + w] = image
        mask = torch.ones(h + top + bottom, w + left + right)
        inner = torch.zeros(h, w)
        if feathering > 0 and feathering * 2 < min(h, w):
            ys = torch.arange(h, dtype=torch.float32).view(-1, 1)
            xs = torch.arange(w, dtype=torch.float32).view(1, -1)
            big = torch.full((h, w), float("inf"))
            distance = torch.minimum(
                torch.minimum(ys if top else big, (h - 1 - ys) if bottom else big),
                torch.minimum(xs if left else big, (w - 1 - xs) if right else big))
            inner = torch.where(distance < feathering, ((feathering - distance) / feathering) ** 2,
                                torch.zeros_like(distance))
        mask[top: top + h, left: left + w] = inner
        return out, mask.unsqueeze(0)


NODES = (LoadImage, SaveImage, PreviewImage, ImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImagePadForOutpaint)
