"""Canvas operations on IMAGE [B,H,W,C] with ComfyUI's size rules: crop, stitch, fit-and-pad, outpaint padding,
rotation, flips, batching pictures of different sizes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...sd.imageops import resize_image

STITCH_DIRECTIONS = ("right", "down", "left", "up")
SPACING_COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0),
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
}
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
FLIPS = ("x-axis: vertically", "y-axis: horizontally")


def crop(image: torch.Tensor, width: int, height: int, x: int, y: int) -> torch.Tensor:
    """A width x height window from (x, y); the corner is kept inside the picture, the window may run short."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y: y + height, x: x + width, :]


def _extend_batch(image: torch.Tensor, size: int) -> torch.Tensor:
    """Repeat the last picture until the batch has `size` pictures."""
    missing = size - image.shape[0]
    return image if missing <= 0 else torch.cat([image, image[-1:].repeat(missing, 1, 1, 1)])


def pad_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Pad the channel axis with ones (an opaque alpha) up to `channels`."""
    missing = channels - image.shape[-1]
    return image if missing <= 0 else torch.cat([image, image.new_ones(*image.shape[:-1], missing)], dim=-1)


def _pad_centred(image: torch.Tensor, axis: int, size: int, value: float) -> torch.Tensor:
    """Pad spatial `axis` (1 = height, 2 = width) to `size`, half before and half (rounded up) after."""
    missing = size - image.shape[axis]
    if missing <= 0:
        return image
    before, after = missing // 2, missing - missing // 2
    pad = (0, 0, before, after) if axis == 2 else (0, 0, 0, 0, before, after)
    return F.pad(image, pad, mode="constant", value=value)


def stitch(image1: torch.Tensor, image2: torch.Tensor | None, direction: str, match_image_size: bool,
           spacing_width: int, spacing_color: str) -> torch.Tensor:
    """ImageStitch: image2 placed beside image1 (right/left) or below/above it (down/up).

    The shorter batch repeats its last picture. With `match_image_size` image2 is resized (lanczos, aspect kept) to
    image1's height (sideways) or width (vertically); without it the smaller one is padded centred, with the
    spacing colour when it is grey-level (white/black), else black. Channels are evened out with opaque alpha.
    A spacing strip (rounded up to an even width) goes between the two.
    """
    if image2 is None:
        return image1
    if direction not in STITCH_DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {STITCH_DIRECTIONS}")
    if spacing_color not in SPACING_COLOURS:
        raise ValueError(f"spacing_color {spacing_color!r} is not one of {tuple(SPACING_COLOURS)}")
    sideways = direction in ("left", "right")
    batch = max(image1.shape[0], image2.shape[0])
    image1, image2 = _extend_batch(image1, batch), _extend_batch(image2, batch)
    if match_image_size:
        h1, w1 = image1.shape[1:3]
        h2, w2 = image2.shape[1:3]
        aspect = w2 / h2
        width, height = (int(h1 * aspect), h1) if sideways else (w1, int(w1 / aspect))
        image2 = resize_image(image2, width, height, "lanczos")
    else:
        colour = spacing_color if spacing_color in ("white", "black") else "black"
        value = SPACING_COLOURS[colour][0]
        axis = 1 if sideways else 2
        size = max(image1.shape[axis], image2.shape[axis])
        image1, image2 = _pad_centred(image1, axis, size, value), _pad_centred(image2, axis, size, value)
    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = pad_channels(image1, channels), pad_channels(image2, channels)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing_width > 0:
        spacing_width += spacing_width % 2
        if sideways:
            shape = (batch, max(image1.shape[1], image2.shape[1]), spacing_width, channels)
        else:
            shape = (batch, spacing_width, max(image1.shape[2], image2.shape[2]), channels)
        strip = image1.new_zeros(shape)
        colour_values = SPACING_COLOURS[spacing_color]
        for channel in range(min(3, channels)):
            strip[..., channel] = colour_values[channel]
        if channels == 4:
            strip[..., 3] = 1.0
        parts.insert(1, strip)
    return torch.cat(parts, dim=2 if sideways else 1)


def resize_and_pad(image: torch.Tensor, width: int, height: int, padding_color: str,
                   interpolation: str) -> torch.Tensor:
    """ResizeAndPadImage: scale to fit inside width x height (aspect kept, sizes truncated), centred on a white or
    black canvas."""
    batch, old_h, old_w, channels = image.shape
    scale = min(width / old_w, height / old_h)
    new_w, new_h = int(old_w * scale), int(old_h * scale)
    resized = resize_image(image, new_w, new_h, interpolation)
    canvas = torch.full((batch, height, width, channels), 0.0 if padding_color == "black" else 1.0,
                        dtype=image.dtype, device=image.device)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top: top + new_h, left: left + new_w] = resized
    return canvas


def outpaint_pad(image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                 feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ImagePadForOutpaint: a grey (0.5) border around the picture and a MASK that is 1 on the new border and,
    inside, ((feathering - d) / feathering)^2 within `feathering` pixels of a padded side (d = distance to that
    side, counted as ComfyUI does: i from the top/left, h - i from the bottom/right)."""
    b, h, w, c = image.shape
    out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=image.dtype, device=image.device)
    out[:, top: top + h, left: left + w] = image
    mask = torch.ones(h + top + bottom, w + left + right)
    inner = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        ys = torch.arange(h, dtype=torch.float32).view(-1, 1).expand(h, w)
        xs = torch.arange(w, dtype=torch.float32).view(1, -1).expand(h, w)
        far = torch.full((h, w), float(max(h, w)))
        distance = torch.stack([ys if top else far, (h - ys) if bottom else far,
                                xs if left else far, (w - xs) if right else far]).amin(dim=0)
        inner = torch.where(distance < feathering, ((feathering - distance) / feathering) ** 2, inner)
    mask[top: top + h, left: left + w] = inner
    return out, mask.unsqueeze(0)


def rotate(image: torch.Tensor, rotation: str) -> torch.Tensor:
    """Clockwise quarter turns: "90 degrees", "180 degrees", "270 degrees" (or "none")."""
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation {rotation!r} is not one of {ROTATIONS}")
    return torch.rot90(image, k=ROTATIONS.index(rotation), dims=[2, 1])


def flip(image: torch.Tensor, flip_method: str) -> torch.Tensor:
    """Mirror across the x axis (upside down) or the y axis (left-right)."""
    if flip_method not in FLIPS:
        raise ValueError(f"flip_method {flip_method!r} is not one of {FLIPS}")
    return torch.flip(image, dims=[1] if flip_method.startswith("x") else [2])


def scale_to_max_dimension(image: torch.Tensor, method: str, largest_size: int) -> torch.Tensor:
    """Resize so the longer side is `largest_size`, the other side rounded to keep the aspect ratio."""
    height, width = image.shape[1:3]
    if height > width:
        width, height = round(width / height * largest_size), largest_size
    elif width > height:
        width, height = largest_size, round(height / width * largest_size)
    else:
        width = height = largest_size
    return resize_image(image, width, height, method)


def batch_pair(image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
    """ImageBatch: image2 appended to image1; a missing alpha channel is added as opaque, and a different size is
    resized to image1's (bilinear, centre crop to its aspect ratio)."""
    if image1.shape[-1] != image2.shape[-1]:
        if image1.shape[-1] > image2.shape[-1]:
            image2 = F.pad(image2, (0, 1), value=1.0)
        else:
            image1 = F.pad(image1, (0, 1), value=1.0)
    if image1.shape[1:] != image2.shape[1:]:
        image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
    return torch.cat((image1, image2), dim=0)


def solid_image(width: int, height: int, batch_size: int, color: int) -> torch.Tensor:
    """EmptyImage: a batch filled with the 0xRRGGBB colour."""
    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
    return rgb.expand(batch_size, height, width, 3).clone()
