"""Shared by the editing tests and scripts/evaluate_editing.py: the embedded model's modules as diffusers pipeline
parts, shapes renders as IMAGE / latent pairs, and the measures (classifier, mask IoU, centroid distance)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from nodes.sd import vae as vae_ops
from nodes.sd.shapes import COLOURS, ShapeSpec, caption, render, spec_for
from nodes.sd.text import encode
from nodes.sd.types import Conditioning


@dataclass(frozen=True)
class Source:
    """A rendered source image: its spec, IMAGE [1, H, W, 3], latent, and the shape's true mask [H, W] bool."""

    spec: ShapeSpec
    image: torch.Tensor
    latent: torch.Tensor
    true_mask: np.ndarray

    @property
    def caption(self) -> str:
        return caption(self.spec)


def source_image(vae, shape: str, fg: str, bg: str, seed: int) -> Source:  # noqa: ANN001
    """The shapes generator's render of (shape, fg, bg) placed by `seed`, caption without size/position words."""
    spec = spec_for(shape, fg, bg, random.Random(seed), mention_size=0.0, mention_position=0.0)
    image, mask, _ = render(spec)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    return Source(spec, pixels, vae_ops.encode(vae, pixels), np.asarray(mask) >= 128)


def background_for(seed: int, exclude: tuple[str, ...]) -> str:
    """A background colour chosen by `seed`, never one of `exclude`."""
    options = [name for name in COLOURS if name not in exclude]
    return random.Random(1000 + seed).choice(options)


def cond(clip, text: str) -> Conditioning:  # noqa: ANN001
    return (encode(clip, text),)


def as_uint8(image: torch.Tensor) -> np.ndarray:
    """IMAGE [1, H, W, 3] in 0..1 -> uint8 [H, W, 3] (what the classifier reads)."""
    return (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    union = (mask | truth).sum()
    return float((mask & truth).sum() / union) if union else 1.0


def caption_lists(shape: str, target_shape: str) -> tuple[list[str], list[str]]:
    """Pix2Pix-Zero's caption lists: every foreground/background pair of distinct colours with the source
    shape, and the same captions with the target shape (the paper's generated sentences, written by rule)."""
    pairs = [(fg, bg) for fg in COLOURS for bg in COLOURS if fg != bg]
    source = [f"{'an' if fg[0] in 'aeiou' else 'a'} {fg} {shape} on {'an' if bg[0] in 'aeiou' else 'a'} {bg} "
              f"background" for fg, bg in pairs]
    return source, [text.replace(f" {shape} ", f" {target_shape} ") for text in source]
