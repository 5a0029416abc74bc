"""A procedural, captioned image generator: coloured shapes on coloured backgrounds.

The embedded default model is trained on these images (no machine here can download a data set), and the
same ground truth serves evaluation (an analytic classifier can check colours and shape) and later
ControlNet work (`render` also returns the shape's mask and edge map). Everything is deterministic from
a seed: `spec_from_seed(seed)` always gives the same image and caption, on any machine.

A few (shape, foreground, background) combinations are held out of training (`HELD_OUT`), so evaluation
can tell whether the model composes words it learned separately rather than recalling pictures.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

RESOLUTION = 128
"""The embedded model's native resolution in pixels."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (245, 220, 40),
    "green": (40, 165, 60),
    "cyan": (40, 205, 220),
    "blue": (40, 75, 215),
    "purple": (135, 55, 185),
    "pink": (245, 135, 195),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
"""Colour names and sRGB values: saturated and far apart, so a colour is never ambiguous to a classifier."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")

SIZES: dict[str, tuple[float, float]] = {"small": (0.12, 0.17), "medium": (0.19, 0.26), "large": (0.28, 0.36)}
"""Outer radius of a shape as a fraction of the image side: every shape fits a circle of this radius."""

MARGIN = 0.07
"""Shapes keep this fraction of the side (9 px at 128) clear of the border, so the border shows background."""

HORIZONTAL: dict[str, tuple[float, float]] = {"left": (0.0, 0.36), "center": (0.45, 0.55), "right": (0.64, 1.0)}
VERTICAL: dict[str, tuple[float, float]] = {"top": (0.0, 0.36), "middle": (0.45, 0.55), "bottom": (0.64, 1.0)}
"""Position bins of the shape's centre (fractions of the side); gaps between bins keep the words unambiguous."""

HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("circle", "red", "blue"), ("circle", "yellow", "purple"), ("circle", "white", "green"),
        ("circle", "cyan", "black"),
        ("square", "green", "yellow"), ("square", "blue", "white"), ("square", "pink", "black"),
        ("square", "orange", "cyan"),
        ("triangle", "purple", "orange"), ("triangle", "black", "pink"), ("triangle", "red", "yellow"),
        ("triangle", "white", "blue"),
        ("star", "yellow", "blue"), ("star", "cyan", "red"), ("star", "green", "white"), ("star", "orange", "purple"),
        ("ring", "blue", "yellow"), ("ring", "pink", "green"), ("ring", "black", "white"), ("ring", "red", "cyan"),
    }
)  # fmt: skip
"""(shape, foreground, background) triples never drawn for training: four per shape, each word seen elsewhere."""

_SUPERSAMPLE = 4
_RING_INNER = 0.55
_STAR_INNER = 0.42


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one image and its caption.

    Positions and radius are fractions of the image side, so one spec renders at any resolution.
    `mention_size` / `mention_position` say whether the caption names the size and position words.
    """

    shape: str
    fg: str
    bg: str
    size: str
    horizontal: str
    vertical: str
    cx: float
    cy: float
    radius: float
    rotation: float
    mention_size: bool = False
    mention_position: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r} (one of {', '.join(SHAPES)})")
        for colour in (self.fg, self.bg):
            if colour not in COLOURS:
                raise ValueError(f"unknown colour {colour!r} (one of {', '.join(COLOURS)})")
        if self.fg == self.bg:
            raise ValueError(f"foreground and background are both {self.fg!r}")

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.shape, self.fg, self.bg)


def training_combinations() -> list[tuple[str, str, str]]:
    """All (shape, fg, bg) triples except the held-out ones, in a fixed order."""
    return [(s, f, b) for s in SHAPES for f in COLOURS for b in COLOURS if f != b and (s, f, b) not in HELD_OUT]


def _feasible(bins: dict[str, tuple[float, float]], radius: float) -> dict[str, tuple[float, float]]:
    """Position bins that a shape of `radius` can sit in without crossing the margin."""
    low, high = radius + MARGIN, 1.0 - radius - MARGIN
    out = {}
    for name, (a, b) in bins.items():
        a, b = max(a, low), min(b, high)
        if a <= b:
            out[name] = (a, b)
    return out


def spec_for(
    shape: str, fg: str, bg: str, rng: random.Random, *, mention_size: float = 0.3, mention_position: float = 0.3
) -> ShapeSpec:
    """A spec of a given combination with random size, position, rotation and caption detail.

    Args:
        shape, fg, bg: the combination to draw.
        rng: the only source of randomness (so a seed fixes the result).
        mention_size: probability that a small or large size is named in the caption.
        mention_position: probability that the position is named in the caption.
    """
    size = rng.choice(list(SIZES))
    radius = rng.uniform(*SIZES[size])
    horizontal_bins, vertical_bins = _feasible(HORIZONTAL, radius), _feasible(VERTICAL, radius)
    horizontal = rng.choice(sorted(horizontal_bins))
    vertical = rng.choice(sorted(vertical_bins))
    cx, cy = rng.uniform(*horizontal_bins[horizontal]), rng.uniform(*vertical_bins[vertical])
    rotation = rng.uniform(-20.0, 20.0)
    say_size = size != "medium" and rng.random() < mention_size
    say_position = rng.random() < mention_position
    return ShapeSpec(shape, fg, bg, size, horizontal, vertical, cx, cy, radius, rotation, say_size, say_position)


def sample_spec(rng: random.Random, *, held_out: bool = False) -> ShapeSpec:
    """A random spec from the training distribution (or, with `held_out=True`, from the held-out combinations)."""
    if held_out:
        shape, fg, bg = rng.choice(sorted(HELD_OUT))
    else:
        while True:
            shape, fg, bg = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(COLOURS))
            if fg != bg and (shape, fg, bg) not in HELD_OUT:
                break
    return spec_for(shape, fg, bg, rng)


def spec_from_seed(seed: int, *, held_out: bool = False) -> ShapeSpec:
    """The spec numbered `seed`: a fixed function of the integer, on every platform."""
    return sample_spec(random.Random(seed), held_out=held_out)


def position_phrase(spec: ShapeSpec) -> str:
    """'in the top left', 'on the left', 'at the top', 'in the center': how a caption names the centre's bin."""
    vertical = "" if spec.vertical == "middle" else spec.vertical
    horizontal = "" if spec.horizontal == "center" else spec.horizontal
    if vertical and horizontal:
        return f"in the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    return f"at the {vertical}" if vertical else "in the center"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: ShapeSpec) -> str:
    """The text for a spec, e.g. 'a small red star in the top left on an orange background'."""
    words = [spec.size] if spec.mention_size else []
    words += [spec.fg, spec.shape]
    if spec.mention_position:
        words.append(position_phrase(spec))
    return " ".join([_article(words[0]), *words, "on", _article(spec.bg), spec.bg, "background"])


def shape_polygon(spec: ShapeSpec, side: float) -> list[tuple[float, float]]:
    """Outline points (pixels, image of `side` pixels) of a polygonal shape: square, triangle or star."""
    cx, cy, r = spec.cx * side, spec.cy * side, spec.radius * side
    if spec.shape == "square":
        radii, corners, start = [r], 4, 45.0
    elif spec.shape == "triangle":
        radii, corners, start = [r], 3, -90.0
    elif spec.shape == "star":
        radii, corners, start = [r, r * _STAR_INNER], 10, -90.0
    else:
        raise ValueError(f"{spec.shape!r} is not a polygon")
    points = []
    for k in range(corners):
        angle = math.radians(start + spec.rotation + 360.0 * k / corners)
        radius = radii[k % len(radii)]
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw_mask(spec: ShapeSpec, side: int) -> Image.Image:
    """The shape's coverage at `side` pixels, binary (drawn large and shrunk by the caller for anti-aliasing)."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = spec.cx * side, spec.cy * side, spec.radius * side
    if spec.shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if spec.shape == "ring":
            inner = r * _RING_INNER
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon(shape_polygon(spec, side), fill=255)
    return mask


def render(spec: ShapeSpec, resolution: int = RESOLUTION) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Draw a spec.

    Returns:
        (image, mask, edges): the RGB image; the shape's anti-aliased coverage as an 'L' image (255 inside);
        and a binary 'L' edge map, the mask's 1-2 px outline (what a Canny detector would find).
    """
    return _paint(_draw_mask(spec, resolution * _SUPERSAMPLE), spec.fg, spec.bg, resolution)


def _paint(big: Image.Image, fg: str, bg: str, resolution: int) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(image, mask, edges) from a supersampled binary coverage mask: shrink, colour, outline."""
    mask = big.resize((resolution, resolution), Image.Resampling.BOX)
    image = Image.composite(Image.new("RGB", mask.size, COLOURS[fg]), Image.new("RGB", mask.size, COLOURS[bg]), mask)
    hard = mask.point(lambda v: 255 if v >= 128 else 0)
    edges = ImageChops.subtract(hard.filter(ImageFilter.MaxFilter(3)), hard.filter(ImageFilter.MinFilter(3)))
    return image, mask, edges.point(lambda v: 255 if v else 0)


STYLE_WORD = "striped"
"""The trigger word of the embedded model's style LoRA, appended to a caption as ', striped'."""
STRIPE_PERIOD = 0.25
"""Period of the striped style's diagonal bands as a fraction of the side (32 px at 128, 4 latent pixels)."""


def styled_caption(spec: ShapeSpec) -> str:
    """The caption of the striped version of a spec: 'a red circle on a blue background, striped'."""
    return f"{caption(spec)}, {STYLE_WORD}"


def stripe_shade(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """The second colour of a striped background: half-way to black for light colours, to white for dark ones."""
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    target = 0 if luminance > 110 else 255
    return tuple(round((c + target) / 2) for c in colour)  # type: ignore[return-value]


def render_striped(spec: ShapeSpec, resolution: int = RESOLUTION) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Draw a spec in the striped style: the background in diagonal bands of its colour and `stripe_shade`.

    The bands' phase follows the spec's rotation, so it varies between images; mask and edges are `render`'s.
    """
    image, mask, edges = render(spec, resolution)
    period = STRIPE_PERIOD * resolution
    yy, xx = np.mgrid[:resolution, :resolution].astype(np.float32) + 0.5
    phase = (xx + yy) / period + spec.rotation / 360.0
    band = (phase - np.floor(phase)) < 0.5
    background = np.where(band[..., None], COLOURS[spec.bg], stripe_shade(COLOURS[spec.bg])).astype(np.float32)
    coverage = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    pixels = np.asarray(image, dtype=np.float32) * coverage + background * (1.0 - coverage)
    return Image.fromarray(pixels.round().astype(np.uint8)), mask, edges


# -- a concept the embedded model never saw ---------------------------------------------------------------

NEW_SHAPES: tuple[str, ...] = ("heart",)
"""Shapes the generator can draw that are not in `SHAPES`: no training image of the embedded model (or of its
adapters) shows one, so personalization (textual inversion, DreamBooth, ...) has a concept to learn that is
truly new. `spec_from_seed` never returns them."""
CONCEPT_STREAM_SEED = 7_340_000
"""Base seed of the concept images (apart from any training or evaluation stream)."""


@dataclass(frozen=True)
class ConceptSpec:
    """One image of a new shape: like `ShapeSpec` (fractions of the side), the shape from `NEW_SHAPES`."""

    shape: str
    fg: str
    bg: str
    cx: float
    cy: float
    radius: float
    rotation: float

    def __post_init__(self) -> None:
        if self.shape not in NEW_SHAPES:
            raise ValueError(f"unknown new shape {self.shape!r} (one of {', '.join(NEW_SHAPES)})")
        if self.fg not in COLOURS or self.bg not in COLOURS or self.fg == self.bg:
            raise ValueError(f"colours {self.fg!r} on {self.bg!r}: two different names of {', '.join(COLOURS)}")


def concept_spec(index: int, shape: str = "heart") -> ConceptSpec:
    """The concept image numbered `index`: random colours, size, position and rotation, as `spec_for` draws them."""
    rng = random.Random(CONCEPT_STREAM_SEED + index)
    fg, bg = rng.sample(list(COLOURS), 2)
    base = spec_for("circle", fg, bg, rng)
    return ConceptSpec(shape, fg, bg, base.cx, base.cy, base.radius, base.rotation)


def concept_caption(spec: ConceptSpec, word: str | None = None) -> str:
    """'a red heart on a blue background' (or with `word`, e.g. 'embedding:heart', in the shape's place)."""
    return f"{_article(spec.fg)} {spec.fg} {word or spec.shape} on {_article(spec.bg)} {spec.bg} background"


def heart_outline(cx: float, cy: float, radius: float, rotation: float, points: int = 96) -> list[tuple[float, float]]:
    """A heart's outline (pixels): the classic curve x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t,
    point down, centred on its bounding box and scaled so every point lies within `radius` of (cx, cy)."""
    t = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))  # image y points down
    y -= (y.max() + y.min()) / 2.0
    scale = radius / float(np.hypot(x, y).max())
    angle = math.radians(rotation)
    xr = (x * math.cos(angle) - y * math.sin(angle)) * scale + cx
    yr = (x * math.sin(angle) + y * math.cos(angle)) * scale + cy
    return list(zip(xr.tolist(), yr.tolist()))


def render_concept(spec: ConceptSpec, resolution: int = RESOLUTION) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Draw a new-shape spec like `render` draws a `ShapeSpec`: (image, mask, edges)."""
    side = resolution * _SUPERSAMPLE
    big = Image.new("L", (side, side), 0)
    ImageDraw.Draw(big).polygon(heart_outline(spec.cx * side, spec.cy * side, spec.radius * side, spec.rotation), fill=255)
    return _paint(big, spec.fg, spec.bg, resolution)
