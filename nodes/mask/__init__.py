"""Mask nodes (ComfyUI's "mask" menu, plus ImageCompositeMasked): declarations here, maths in maskops."""

from __future__ import annotations

from . import convert, edit
from .convert import ImageColorToMask, ImageToMask, InvertMask, MaskPreview, MaskToImage, SolidMask, ThresholdMask
from .edit import CropMask, FeatherMask, GrowMask, ImageCompositeMasked, MaskComposite

NODES = (*convert.NODES, *edit.NODES)

__all__ = [
    "CropMask", "FeatherMask", "GrowMask", "ImageColorToMask", "ImageCompositeMasked", "ImageToMask", "InvertMask",
    "MaskComposite", "MaskPreview", "MaskToImage", "NODES", "SolidMask", "ThresholdMask",
]
