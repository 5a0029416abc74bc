"""Image nodes, one module per menu family: files (load/save/preview), transform (resize, crop, stitch, pad,
rotate, flip), batch (make, combine, pick), compositing, postprocessing, filters (Canny, morphology, YUV) and
animated and SVG saving. The maths they call lives in `ops`."""

from __future__ import annotations

from . import animated, batch, compositing, depth_map, files, filters, loaders, postprocessing, svg, transform
from .animated import SaveAnimatedPNG, SaveAnimatedWEBP
from .batch import EmptyImage, GetImageSize, ImageAddNoise, ImageBatch, ImageFromBatch, ImageInvert, RepeatImageBatch
from .compositing import JoinImageWithAlpha, PorterDuffImageComposite, SplitImageWithAlpha
from .depth_map import ShapesDepthMap
from .files import IMAGE_EXTENSIONS, LoadImage, PreviewImage, SaveImage, image_to_png_bytes, pil_to_image, save_output
from .filters import Canny, ImageRGBToYUV, ImageYUVToRGB, Morphology
from .loaders import LoadImageMask, LoadImageOutput
from .postprocessing import ImageBlend, ImageBlur, ImageQuantize, ImageSharpen
from .svg import SaveSVGNode, SvgDocuments
from .transform import (ImageCrop, ImageFlip, ImagePadForOutpaint, ImageRotate, ImageScale, ImageScaleBy,
                        ImageScaleToMaxDimension, ImageScaleToTotalPixels, ImageStitch, ResizeAndPadImage)

NODES = (files.NODES + loaders.NODES + transform.NODES + batch.NODES + compositing.NODES + postprocessing.NODES + filters.NODES
         + animated.NODES + svg.NODES + depth_map.NODES)

__all__ = [
    "Canny", "EmptyImage", "GetImageSize", "IMAGE_EXTENSIONS", "ImageAddNoise", "ImageBatch", "ImageBlend",
    "ImageBlur", "ImageCrop", "ImageFlip", "ImageFromBatch", "ImageInvert", "ImagePadForOutpaint", "ImageQuantize",
    "ImageRGBToYUV", "ImageRotate", "ImageScale", "ImageScaleBy", "ImageScaleToMaxDimension",
    "ImageScaleToTotalPixels", "ImageSharpen", "ImageStitch", "ImageYUVToRGB", "JoinImageWithAlpha", "LoadImage",
    "LoadImageMask", "LoadImageOutput",
    "Morphology", "NODES", "PorterDuffImageComposite", "PreviewImage", "RepeatImageBatch", "ResizeAndPadImage",
    "SaveAnimatedPNG", "SaveAnimatedWEBP", "SaveImage", "SaveSVGNode", "ShapesDepthMap", "SplitImageWithAlpha", "SvgDocuments",
    "image_to_png_bytes", "pil_to_image", "save_output",
]
