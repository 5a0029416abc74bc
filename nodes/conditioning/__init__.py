"""Conditioning nodes (ComfyUI's "conditioning" menu): prompt encoders and what restricts, combines or
extends their entries."""

from __future__ import annotations

from . import basic, depth, image_models, regions, sdxl
from .basic import (CLIPTextEncode, ConditioningAverage, ConditioningCombine, ConditioningSetArea,
                    ConditioningZeroOut)
from .depth import DepthToImageConditioning
from .image_models import InpaintModelConditioning, InstructPixToPixConditioning
from .regions import (ConditioningConcat, ConditioningSetAreaPercentage, ConditioningSetAreaStrength,
                      ConditioningSetMask, ConditioningSetTimestepRange)
from .sdxl import CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner

NODES = (*basic.NODES, *regions.NODES, *image_models.NODES, *sdxl.NODES, *depth.NODES)

__all__ = ["CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "ConditioningAverage",
           "ConditioningCombine", "ConditioningConcat", "ConditioningSetArea", "ConditioningSetAreaPercentage",
           "ConditioningSetAreaStrength", "ConditioningSetMask", "ConditioningSetTimestepRange",
           "ConditioningZeroOut", "DepthToImageConditioning", "InpaintModelConditioning", "InstructPixToPixConditioning", "NODES"]
