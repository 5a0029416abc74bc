"""Control nodes beyond loading and applying a ControlNet (nodes/controlnet_nodes.py): choosing a union
ControlNet's control type, and the x4 upscaler's conditioning."""

from .union import SetUnionControlNetType
from .upscale_diffusion import SD_4XUpscale_Conditioning

NODES = (SetUnionControlNetType, SD_4XUpscale_Conditioning)

__all__ = ["NODES", "SD_4XUpscale_Conditioning", "SetUnionControlNetType"]
