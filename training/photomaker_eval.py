"""Measuring the shipped tiny PhotoMaker: does the image show the reference images' shape (and colour)?

For `count` fresh (shape, colour, background) draws, 1-4 reference renders of the shape and colour (other sizes,
places and backgrounds) are encoded with PhotoMakerEncode into "a photograph of shape photomaker on a <bg>
background"; the same prompt through CLIPTextEncode (no ID encoder) is the baseline. The embedded model samples
both with the same seed (euler, simple, 20 steps, cfg 6, empty negative) and the shapes classifier reads shape,
foreground and background of each image.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from nodes.sd import ksampler, text, vae
from nodes.sd.photomaker import PhotoMakerIDEncoder, photomaker_encode
from nodes.sd.types import Latent
from training.classifier import classify
from training.clip_vision import images_of
from training.clip_vision_eval import SAMPLING
from training.data import EVALUATION_STREAM, stream_specs
from training.photomaker import MAX_IMAGES, PROMPT, PhotoMakerSettings, reference_pool


def generate(loaded: Any, positive, negative, *, seed: int, steps: int = 20) -> torch.Tensor:
    """One decoded 128 px IMAGE [1, H, W, 3] (the style model's measurement settings, steps aside)."""
    latent = Latent(torch.zeros(1, 4, 16, 16))
    out = ksampler.sample(loaded.model, seed=seed, positive=positive, negative=negative, latent=latent,
                          **{**SAMPLING, "steps": steps})
    return vae.decode(loaded.vae, out.samples)


def trials(count: int, seed: int = 0) -> list[tuple[Any, list[Any]]]:
    """(target spec, its 1-4 reference specs) for `count` trials: targets from the evaluation stream, references
    from a pool the training never saw (another run seed of the reference stream)."""
    pool = reference_pool(PhotoMakerSettings(references=MAX_IMAGES * 2), seed=1000 + seed)
    rng = random.Random(seed)
    out = []
    for index, spec in enumerate(stream_specs(seed, EVALUATION_STREAM, 5000, count)):
        refs = pool[(spec.shape, spec.fg)]
        out.append((spec, rng.sample(refs, 1 + index % MAX_IMAGES)))
    return out


def photomaker_effect(loaded: Any, model: PhotoMakerIDEncoder, *, count: int = 32, seed: int = 0,
                      steps: int = 20) -> dict[str, Any]:
    """Share of images whose classified shape / foreground / background match the references' (and the prompt's
    background), with the ID encoder and without it (the same prompt as plain text)."""
    empty = (text.encode(loaded.clip, ""),)
    hits = {mode: {"shape": 0, "fg": 0, "bg": 0} for mode in ("photomaker", "text_only")}
    for index, (spec, refs) in enumerate(trials(count, seed)):
        prompt = PROMPT.format(bg=spec.bg)
        conds = {"photomaker": (photomaker_encode(model, loaded.clip, images_of(refs, 128), prompt),),
                 "text_only": (text.encode(loaded.clip, prompt),)}
        for mode, positive in conds.items():
            image = generate(loaded, positive, empty, seed=index, steps=steps)
            found = classify((image[0].clamp(0, 1).numpy() * 255).round().astype("uint8"))
            hits[mode]["shape"] += found.shape == spec.shape
            hits[mode]["fg"] += found.fg == spec.fg
            hits[mode]["bg"] += found.bg == spec.bg
    return {mode: {key: round(value / count, 3) for key, value in counts.items()} for mode, counts in hits.items()}

