"""Guidance and model patches (ComfyUI's "model_patches", "advanced/guidance", "advanced/model" menus).

Each node returns a new MODEL (or CLIP) handle carrying one more patch; the maths lives in nodes/sd/.
"""

from __future__ import annotations

from . import attention, cfg, model_sampling, sega_sag, torch_compile, unet
from .torch_compile import TorchCompileModel
from .sega_sag import SelfAttentionGuidance, SemanticGuidance

FAMILY_MODULES = (sega_sag, cfg, unet, attention, model_sampling, torch_compile)

NODES = tuple(node for module in FAMILY_MODULES for node in module.NODES)

__all__ = ["NODES", "SelfAttentionGuidance", "SemanticGuidance", "TorchCompileModel"]
