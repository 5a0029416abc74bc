"""Image prompts (ComfyUI's CLIP vision, style model and unCLIP nodes): CLIPVisionLoader and StyleModelLoader
(loaders), CLIPVisionEncode and unCLIPConditioning (conditioning), StyleModelApply (conditioning/style_model).
The maths lives in nodes/sd/clip_vision.py, style_model.py and unclip.py."""

from .clip_vision import CLIPVisionEncode, CLIPVisionLoader, unCLIPConditioning
from .style_model import StyleModelApply, StyleModelLoader

NODES = (CLIPVisionLoader, CLIPVisionEncode, StyleModelLoader, StyleModelApply, unCLIPConditioning)

__all__ = ["CLIPVisionEncode", "CLIPVisionLoader", "NODES", "StyleModelApply", "StyleModelLoader",
           "unCLIPConditioning"]
