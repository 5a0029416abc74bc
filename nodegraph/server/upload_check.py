"""What an upload must be before it is stored: a whole image of a format LoadImage reads, within a pixel limit.

Text, HTML, a truncated PNG or a small file whose header claims 20000x20000 pixels (a decompression bomb) is
refused with a 4xx naming the problem, so input/ only ever holds images that a workflow can load.
"""

from __future__ import annotations

import io
from typing import Any

from .responses import ApiError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow's decoders that uploads may use (LoadImage's extensions; JPEG opens MPO too), never EPS, PSD, ..."""


def check_image(data: bytes, max_pixels: int, what: str = "upload") -> None:
    """Raise an `ApiError` unless `data` decodes completely as an image of at most `max_pixels` pixels.

    The size is read from the header before any pixel is decoded, so a bomb costs nothing.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(400, "invalid_image", f"The {what} is empty", "send the image's bytes")
    try:
        image: Any = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ApiError(400, "invalid_image", f"The {what} is not an image",
                       f"expected one of {', '.join(IMAGE_FORMATS)}") from None
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large", f"The {what} has too many pixels", str(exc)) from None
    except Exception as exc:  # Pillow's header parsers raise many kinds (SyntaxError, struct.error, ...)
        raise ApiError(400, "invalid_image", f"The {what} is not a readable image",
                       f"{type(exc).__name__}: {exc}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ApiError(413, "image_too_large", f"The {what} has too many pixels",
                           f"{width}x{height} is {width * height:,} pixels; the limit is {max_pixels:,}")
        try:
            image.load()
        except Exception as exc:  # truncated or corrupt data
            raise ApiError(400, "invalid_image", f"The {what} is not a readable image",
                           f"{image.format} {width}x{height}: {type(exc).__name__}: {exc}") from None
