"""Measuring what the embedded model's adapters and guidance do to images made through the node graph.

- texture energy: how much neighbouring pixels differ (the style LoRA's bands raise it, flat renders have
  almost none);
- shape IoU: the generated shape's mask (the analytic classifier's) against a control outline's filled mask;
- colour fraction: how much of an image shows a colour (SEGA's concepts move it).

`scripts/evaluate_adapters.py` reports these for the model card; the embedded-model tests assert on them.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nodegraph.workflow import Workflow
from nodes.sd.shapes import ShapeSpec, render, sample_spec
from training.classifier import _as_array, border_band, foreground_mask


def texture_energy(image, region: np.ndarray | None = None) -> float:
    """Mean absolute difference between neighbouring pixels, in 0..255 (both directions; within `region` if given:
    only pairs of pixels that are both in it count)."""
    pixels = _as_array(image)
    region = np.ones(pixels.shape[:2], dtype=bool) if region is None else region
    across = np.abs(np.diff(pixels, axis=1))[region[:, 1:] & region[:, :-1]]
    down = np.abs(np.diff(pixels, axis=0))[region[1:] & region[:-1]]
    return float(np.concatenate([across.ravel(), down.ravel()]).mean())


def background_frame(height: int, width: int) -> np.ndarray:
    """Boolean [H, W]: the frame 1.5-6.5 % of the side in from the border (2-8 px at 128), always background: the
    generator keeps shapes 7 % clear of the border, and the outermost pixels are left out (decoders darken them)."""
    side = min(height, width)
    outer, inner = round(0.015 * side), round(0.065 * side)
    frame = np.zeros((height, width), dtype=bool)
    frame[outer : height - outer, outer : width - outer] = True
    frame[inner : height - inner, inner : width - inner] = False
    return frame


def background_texture(image) -> float:
    """`texture_energy` of the background alone (`background_frame`), so the shape's outline, which every image
    has, does not count: a flat render scores 0, a decoded flat background about 1.2 (grain), striped renders 2.8-7."""
    pixels = _as_array(image)
    return texture_energy(pixels, background_frame(*pixels.shape[:2]))


def shape_mask(image) -> np.ndarray:
    """The generated shape's boolean mask, as the classifier finds it (empty if there is no shape)."""
    pixels = _as_array(image)
    background = np.median(pixels[border_band(*pixels.shape[:2])], axis=0)
    return foreground_mask(pixels, background)[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


NAMED_HUES: dict[str, float] = {"red": 0.0, "orange": 30.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0,
                                "blue": 240.0, "purple": 275.0, "magenta": 300.0}
"""Hue centres in degrees for `colour_fraction`."""


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """[..., 3] RGB in 0..1 to [..., 3] HSV: hue in degrees [0, 360), saturation and value in 0..1."""
    r, g, b = image.unbind(-1)
    value, _ = image.max(-1)
    low, _ = image.min(-1)
    spread = value - low
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    hue = torch.where(value == r, ((g - b) / safe) % 6, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(spread > 0, hue * 60.0, torch.zeros_like(hue))
    saturation = torch.where(value > 0, spread / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return torch.stack([hue, saturation, value], -1)


def colour_fraction(image: torch.Tensor, colour: str, *, hue_tolerance: float = 25.0, min_saturation: float = 0.35,
                    min_value: float = 0.25) -> float:
    """Fraction of pixels of an IMAGE ([B, H, W, 3] or [H, W, 3], 0..1) that show `colour`.

    A chromatic colour (NAMED_HUES) counts pixels within `hue_tolerance` degrees of its hue that are saturated
    and bright enough; "white", "black" and "grey" count unsaturated pixels by brightness. Hue is judged in
    HSV rather than by RGB distance so shading ("dark red", "light red") still counts as the colour.
    """
    hsv = rgb_to_hsv(image.float().clamp(0, 1))
    hue, saturation, value = hsv.unbind(-1)
    if colour == "white":
        hit = (saturation < min_saturation) & (value > 0.75)
    elif colour == "black":
        hit = value < min_value
    elif colour in ("grey", "gray"):
        hit = (saturation < min_saturation) & (value >= min_value) & (value <= 0.75)
    elif colour in NAMED_HUES:
        distance = (hue - NAMED_HUES[colour]).abs()
        distance = torch.minimum(distance, 360.0 - distance)
        hit = (distance <= hue_tolerance) & (saturation >= min_saturation) & (value >= min_value)
    else:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(NAMED_HUES)} or white/black/grey")
    return float(hit.float().mean())



# -- images through the shipped workflows ------------------------------------------------------------------

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
DECODE = "8"
"""Every shipped workflow decodes in node "8" (scripts/build_workflows.py)."""


def workflow(engine: Any, name: str) -> Workflow:
    """A shipped workflow (workflows/<name>.json) loaded for `engine`'s registry."""
    from nodegraph.formats import load_workflow_file

    return load_workflow_file(WORKFLOWS / f"{name}.json", engine.registry)


def images(engine: Any, graph: Workflow) -> list[np.ndarray]:
    """The decoded batch of a workflow as [H, W, 3] uint8 arrays (run up to VAEDecode; nothing is saved)."""
    batch = engine.run(graph, outputs=[DECODE]).values[DECODE][0]
    return [(image.clamp(0, 1).numpy() * 255).round().astype(np.uint8) for image in batch]


def write_outline(spec: ShapeSpec, folder: Path) -> str:
    """Save a spec's outline as a control image in `folder`; returns its file name (LoadImage's widget)."""
    name = f"outline_{hashlib.sha1(repr(spec).encode()).hexdigest()[:12]}.png"
    render(spec)[2].convert("RGB").save(folder / name)
    return name


def control_iou(engine: Any, spec: ShapeSpec, input_dir: Path, seed: int, **apply: float) -> list[float]:
    """IoU of each generated shape with `spec`'s mask, controlled by its outline (ControlNetApplyAdvanced
    widgets in `apply`: strength, start_percent, end_percent), prompted with its colours and shape."""
    graph = workflow(engine, "controlnet").with_widget("10", "image", write_outline(spec, input_dir))
    graph = graph.with_widget("6", "text", f"a {spec.fg} {spec.shape} on a {spec.bg} background")
    graph = graph.with_widget("3", "seed", seed)
    for name, value in apply.items():
        graph = graph.with_widget("12", name, value)
    truth = np.asarray(render(spec)[1]) >= 128
    return [iou(shape_mask(image), truth) for image in images(engine, graph)]


def control_specs(count: int, seed: int = 0) -> list[ShapeSpec]:
    """Shapes for the ControlNet's evaluation: seen combinations at fresh sizes and positions, no rings
    (a ring's hole makes its outline two curves; it is measured too, but not chosen here)."""
    rng = random.Random(seed)
    specs: list[ShapeSpec] = []
    while len(specs) < count:
        spec = sample_spec(rng)
        if spec.shape != "ring":
            specs.append(spec)
    return specs
