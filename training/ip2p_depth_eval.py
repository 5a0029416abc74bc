"""Measuring the embedded InstructPix2Pix and depth-to-image models through their shipped workflows.

- InstructPix2Pix: for each edit kind (colour, shape, background), the share of edits whose result the
  analytic classifier reads as the instruction says (success), and the share that keep what the instruction
  does not name (preservation: a colour edit keeps shape and background, a shape edit both colours, a
  background edit the shape and its colour).
- Depth: IoU of the generated shape's mask with the depth map's region, beside the base model on the same
  prompt and seed (which knows nothing of the depth map: its IoU is what chance placement gives), and the share
  of images whose colours and shape follow the prompt.

`scripts/evaluate_ip2p_depth.py` reports these over many seeds; tests/test_embedded_ip2p_depth.py asserts them
with margins on a few.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nodes.sd.shapes import COLOURS, ShapeSpec, caption, render
from training import data
from training.adapter_eval import images, iou, shape_mask, workflow
from training.classifier import Classification, classify
from training.instruct_pix2pix import EDIT_KINDS, Edit, make_edit

EVAL_STREAM = 22
"""Evaluation specs of both models (never trained on: the training streams are 20 and 21)."""
UNNAMED = {"colour": ("shape", "bg"), "shape": ("fg", "bg"), "background": ("shape", "fg")}
"""What each edit kind must leave alone (Classification fields)."""
NAMED = {"colour": "fg", "shape": "shape", "background": "bg"}


def eval_specs(count: int, seed: int = 0) -> list[ShapeSpec]:
    """Evaluation specs: seen combinations at fresh sizes and positions, no rings (the classifier reads a ring's
    hole; its outline is two curves) and no small shapes (a few latent pixels are too coarse to judge)."""
    specs, index = [], 0
    while len(specs) < count:
        spec = data.spec_from_seed(data.data_seed(seed, EVAL_STREAM, index))
        index += 1
        if spec.shape != "ring" and spec.size != "small":
            specs.append(spec)
    return specs


def eval_edits(count: int, seed: int = 0) -> list[Edit]:
    """`count` edits of each kind, on `eval_specs` (one spec per edit), with seeded targets."""
    specs = eval_specs(count * len(EDIT_KINDS), seed)
    rng = random.Random(seed)
    return [make_edit(specs[i], EDIT_KINDS[i % len(EDIT_KINDS)], rng) for i in range(len(specs))]


def write_render(spec: ShapeSpec, folder: Path) -> str:
    """Save a spec's render in `folder`; returns its file name (LoadImage's widget)."""
    name = f"spec_{hashlib.sha1(repr(spec).encode()).hexdigest()[:12]}.png"
    render(spec)[0].save(folder / name)
    return name


def _value(result: Classification, field: str) -> str:
    return getattr(result, field)


@dataclass(frozen=True)
class EditOutcome:
    kind: str
    success: bool
    preserved: bool
    result: Classification


def judge_edit(edit: Edit, image: np.ndarray) -> EditOutcome:
    """Did the image follow the edit (its named attribute is the target's) and keep the rest (the source's)?"""
    result = classify(image)
    target = {"fg": edit.target.fg, "shape": edit.target.shape, "bg": edit.target.bg}
    source = {"fg": edit.source.fg, "shape": edit.source.shape, "bg": edit.source.bg}
    success = _value(result, NAMED[edit.kind]) == target[NAMED[edit.kind]]
    preserved = all(_value(result, f) == source[f] for f in UNNAMED[edit.kind])
    return EditOutcome(edit.kind, success, preserved, result)


def pix2pix_edit(engine: Any, edit: Edit, input_dir: Path, seed: int, *, text_scale: float | None = None,
                 image_scale: float | None = None, steps: int | None = None) -> np.ndarray:
    """The edited image of the shipped instruct-pix2pix workflow (guidance scales and steps as given)."""
    graph = workflow(engine, "instruct-pix2pix").with_widget("10", "image", write_render(edit.source, input_dir))
    graph = graph.with_widget("6", "text", edit.instruction).with_widget("13", "noise_seed", seed)
    for node, name, value in (("12", "cfg_conds", text_scale), ("12", "cfg_cond2_negative", image_scale),
                              ("15", "steps", steps)):
        if value is not None:
            graph = graph.with_widget(node, name, value)
    return images(engine, graph)[0]


def pix2pix_rates(outcomes: list[EditOutcome]) -> dict[str, float]:
    """Success and preservation rates per edit kind and over all."""
    out: dict[str, float] = {}
    for kind in (*EDIT_KINDS, "all"):
        chosen = [o for o in outcomes if kind in ("all", o.kind)]
        if chosen:
            out[f"{kind}_success"] = float(np.mean([o.success for o in chosen]))
            out[f"{kind}_preserved"] = float(np.mean([o.preserved for o in chosen]))
    return out


def depth_prompt(spec: ShapeSpec, rng: random.Random) -> tuple[str, str, str]:
    """A prompt for the spec's shape in fresh colours (so the depth map, not a remembered picture, must place
    it): (prompt, fg, bg)."""
    fg = rng.choice([c for c in COLOURS if c != spec.fg])
    bg = rng.choice([c for c in COLOURS if c not in (fg, spec.bg)])
    return caption(ShapeSpec(spec.shape, fg, bg, "medium", "center", "middle", 0.5, 0.5, 0.2, 0.0)), fg, bg


def depth_images(engine: Any, spec: ShapeSpec, prompt: str, input_dir: Path, seed: int, *, base: bool = False,
                 steps: int | None = None) -> list[np.ndarray]:
    """The shipped depth2img workflow's batch for `spec`'s depth map and `prompt` (or, with `base`, the txt2img
    workflow on the embedded model: the same prompt and seed without the depth map)."""
    if base:
        graph = workflow(engine, "txt2img").with_widget("6", "text", prompt).with_widget("3", "seed", seed)
    else:
        graph = workflow(engine, "depth2img").with_widget("10", "image", write_render(spec, input_dir))
        graph = graph.with_widget("6", "text", prompt).with_widget("3", "seed", seed)
    if steps is not None:
        graph = graph.with_widget("3", "steps", steps)
    return images(engine, graph)


def depth_scores(spec: ShapeSpec, batch: list[np.ndarray], fg: str, bg: str) -> list[tuple[float, bool]]:
    """(IoU with the spec's region, prompt followed: shape and both colours) per image."""
    truth = np.asarray(render(spec)[1]) >= 128
    out = []
    for image in batch:
        result = classify(image)
        out.append((iou(shape_mask(image), truth), result.shape == spec.shape and result.fg == fg and result.bg == bg))
    return out
