"""Upscaling with super-resolution models (ComfyUI's nodes_upscale_model): the loader and the tiled upscaler.
Plain resizing (ImageScale, ImageScaleBy, ...) is in nodes/image/transform.py, under the same menu."""

from .upscale_model import ImageUpscaleWithModel, UpscaleModelLoader

NODES = (UpscaleModelLoader, ImageUpscaleWithModel)

__all__ = ["ImageUpscaleWithModel", "NODES", "UpscaleModelLoader"]
