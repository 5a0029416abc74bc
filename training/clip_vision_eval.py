"""Measuring what the shipped style model does to the embedded model's images (classified by training/classifier).

For reference renders of fresh specs, the embedded model samples (euler, simple, 20 steps, cfg 6, the shipped
txt2img settings) from an empty prompt, with and without the reference's style tokens appended (StyleModelApply,
multiply, strength 1), and with the reference's caption as the prompt for comparison. The figures are how often
the classifier reads the reference's foreground colour, shape and background colour in each output.
"""

from __future__ import annotations

from typing import Any

import torch

from nodes.sd import clip_vision as cv
from nodes.sd import ksampler, style_model, text, vae
from nodes.sd.shapes import caption
from nodes.sd.types import Latent
from training.classifier import classify
from training.clip_vision import images_of, plain
from training.data import EVALUATION_STREAM, stream_specs

SAMPLING = dict(steps=20, cfg=6.0, sampler_name="euler", scheduler="simple")


def generate(loaded: Any, positive, negative, seed: int, size: int = 128) -> torch.Tensor:
    """One decoded IMAGE [1, H, W, 3] from the embedded model."""
    latent = Latent(torch.zeros(1, 4, size // 8, size // 8))
    out = ksampler.sample(loaded.model, seed=seed, positive=positive, negative=negative, latent=latent, **SAMPLING)
    return vae.decode(loaded.vae, out.samples)


def styled(empty, tower: torch.nn.Module, adapter: torch.nn.Module, reference: torch.Tensor, strength: float = 1.0,
           strength_type: str = "multiply"):
    """CLIPVisionEncode + StyleModelApply on an empty prompt's conditioning."""
    output = cv.encode_image(tower, reference)
    tokens = style_model.style_tokens(adapter, output.last_hidden_state)
    return style_model.apply_style(empty, tokens, strength, strength_type)


def style_effect(loaded: Any, tower: torch.nn.Module, adapter: torch.nn.Module, *, count: int = 16, seed: int = 0,
                 held_out: bool = False) -> dict[str, Any]:
    """Agreement of generated images with the references, for an empty prompt, the style tokens and the caption."""
    specs = stream_specs(seed, EVALUATION_STREAM, 1000, count, held_out=held_out)
    empty = (text.encode(loaded.clip, ""),)
    hits = {mode: {"fg": 0, "shape": 0, "bg": 0} for mode in ("empty_prompt", "style_model", "caption_prompt")}
    for index, spec in enumerate(specs):
        reference = images_of([spec], 128)
        conds = {"empty_prompt": empty, "style_model": styled(empty, tower, adapter, reference),
                 "caption_prompt": (text.encode(loaded.clip, caption(plain(spec))),)}
        for mode, positive in conds.items():
            image = generate(loaded, positive, empty, seed=index)
            found = classify((image[0].clamp(0, 1).numpy() * 255).round().astype("uint8"))
            hits[mode]["fg"] += found.fg == spec.fg
            hits[mode]["shape"] += found.shape == spec.shape
            hits[mode]["bg"] += found.bg == spec.bg
    return {mode: {key: round(value / count, 3) for key, value in counts.items()} for mode, counts in hits.items()}
