"""Image prompts (ComfyUI's CLIP vision, style model, unCLIP and PhotoMaker nodes): CLIPVisionLoader and
StyleModelLoader (loaders), CLIPVisionEncode and unCLIPConditioning (conditioning), StyleModelApply
(conditioning/style_model), PhotoMakerLoader and PhotoMakerEncode (_for_testing/photomaker).
The maths lives in nodes/sd/clip_vision.py, style_model.py, unclip.py and photomaker.py."""

from .clip_vision import CLIPVisionEncode, CLIPVisionLoader, unCLIPConditioning
from .photomaker import PhotoMakerEncode, PhotoMakerLoader
from .style_model import StyleModelApply, StyleModelLoader

NODES = (CLIPVisionLoader, CLIPVisionEncode, StyleModelLoader, StyleModelApply, unCLIPConditioning,
         PhotoMakerLoader, PhotoMakerEncode)

__all__ = ["CLIPVisionEncode", "CLIPVisionLoader", "NODES", "PhotoMakerEncode", "PhotoMakerLoader",
           "StyleModelApply", "StyleModelLoader", "unCLIPConditioning"]
