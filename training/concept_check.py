"""Which shape an image shows, by template matching: the check behind the personalization table.

The analytic classifier (`training.classifier`) tells circle, square, triangle, star and ring apart from the
harmonics of the outline's radius; it has no notion of a heart (`nodes.sd.shapes.NEW_SHAPES`), whose outline
is asymmetric (a notch on top, a point below) and would be read as whichever polygon its harmonics resemble.
This check takes the same foreground mask and compares it with an ideal render of every shape (the six that
the generator draws), placed at the mask's centroid and scaled to the mask's area, over a sweep of rotations;
the shape whose template overlaps best (intersection over union) wins. A blob that fits no template well
(IoU below `MIN_IOU`) counts as no shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from nodes.sd.shapes import heart_outline
from training.classifier import _as_array, border_band, foreground_mask

MIN_IOU = 0.6
"""Below this best overlap the foreground is 'none' (a smear, two blobs, a shape cut off by the border)."""
TEMPLATE_SIDE = 128
"""Masks are resized to this side before matching (the embedded model's resolution)."""
_RING_INNER = 0.55
_STAR_INNER = 0.42
_SWEEPS: dict[str, tuple[float, float]] = {
    "square": (-45.0, 45.0), "triangle": (-60.0, 60.0), "star": (-36.0, 36.0), "heart": (-35.0, 35.0)}  # fmt: skip
"""Rotation ranges searched (degrees); each polygon's symmetry makes a wider sweep redundant."""
ROTATION_STEP = 5.0
CANDIDATES = ("circle", "ring", "square", "triangle", "star", "heart")


@dataclass(frozen=True)
class ShapeMatch:
    """The best-matching shape ('none' if nothing fits) and every candidate's best IoU."""

    shape: str
    ious: dict[str, float]


def _unit_outline(shape: str, rotation: float) -> np.ndarray:
    """[N, 2] outline of a polygonal shape of outer radius 1 about the origin (as `nodes.sd.shapes` draws it)."""
    if shape == "heart":
        return np.array(heart_outline(0.0, 0.0, 1.0, rotation))
    radii, corners, start = {"square": ([1.0], 4, 45.0), "triangle": ([1.0], 3, -90.0),
                             "star": ([1.0, _STAR_INNER], 10, -90.0)}[shape]  # fmt: skip
    angles = np.radians(start + rotation + 360.0 * np.arange(corners) / corners)
    radius = np.array([radii[k % len(radii)] for k in range(corners)])
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _polygon_area_centroid(points: np.ndarray) -> tuple[float, np.ndarray]:
    """Shoelace area and centroid of a simple polygon."""
    x, y = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2.0
    centroid = np.array([((x + x1) * cross).sum(), ((y + y1) * cross).sum()]) / (6.0 * area)
    return abs(area), centroid


def _template(shape: str, rotation: float, area: float, cx: float, cy: float, side: int) -> np.ndarray:
    """Boolean [side, side] mask of `shape` with `area` pixels and its centroid at (cx, cy)."""
    canvas = Image.new("L", (side * 2, side * 2), 0)
    draw = ImageDraw.Draw(canvas)
    if shape in ("circle", "ring"):
        unit_area = math.pi * (1.0 - (_RING_INNER**2 if shape == "ring" else 0.0))
        r = 2.0 * math.sqrt(area / unit_area)
        draw.ellipse((2 * cx - r, 2 * cy - r, 2 * cx + r, 2 * cy + r), fill=255)
        if shape == "ring":
            inner = r * _RING_INNER
            draw.ellipse((2 * cx - inner, 2 * cy - inner, 2 * cx + inner, 2 * cy + inner), fill=0)
    else:
        outline = _unit_outline(shape, rotation)
        unit_area, centroid = _polygon_area_centroid(outline)
        points = (outline - centroid) * math.sqrt(area / unit_area) * 2.0 + 2.0 * np.array([cx, cy])
        draw.polygon([tuple(p) for p in points.tolist()], fill=255)
    small = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def match_mask(mask: np.ndarray) -> ShapeMatch:
    """The best template for a boolean foreground mask (any resolution; resized to `TEMPLATE_SIDE`)."""
    if mask.shape != (TEMPLATE_SIDE, TEMPLATE_SIDE):
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((TEMPLATE_SIDE, TEMPLATE_SIDE))
        mask = np.asarray(resized) >= 128
    if not mask.any():
        return ShapeMatch("none", {name: 0.0 for name in CANDIDATES})
    ys, xs = np.nonzero(mask)
    area, cx, cy = float(mask.sum()), xs.mean() + 0.5, ys.mean() + 0.5
    ious: dict[str, float] = {}
    for shape in CANDIDATES:
        low, high = _SWEEPS.get(shape, (0.0, 0.0))
        best = 0.0
        for rotation in np.arange(low, high + 1e-6, ROTATION_STEP):
            template = _template(shape, float(rotation), area, cx, cy, TEMPLATE_SIDE)
            union = np.logical_or(template, mask).sum()
            best = max(best, float(np.logical_and(template, mask).sum() / union) if union else 0.0)
        ious[shape] = best
    winner = max(ious, key=ious.__getitem__)
    return ShapeMatch(winner if ious[winner] >= MIN_IOU else "none", ious)


def match_shape(image: Image.Image | np.ndarray) -> ShapeMatch:
    """The shape an image shows (its foreground found as the analytic classifier finds it)."""
    pixels = _as_array(image)
    height, width = pixels.shape[:2]
    bg_rgb = np.median(pixels[border_band(height, width)], axis=0)
    mask, _ = foreground_mask(pixels, bg_rgb)
    return match_mask(mask)
