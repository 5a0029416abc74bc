"""Measuring classifier guidance (nodes/sd/noisy_classifier.py) on the embedded model, through the node layer.

Images are sampled by `nodes.sd.ksampler.sample` (Euler, "simple" schedule from sigma_max, 20 steps: the model
card's settings) from a MODEL carrying the ClassifierGuidance patch, decoded, and read by the analytic shapes
classifier (training/classifier.py). Accuracy = the fraction drawn as the guided class.

- unconditional: empty prompt, cfg 1 (no CFG): the classifier alone picks the shape, per scale.
- conflicting: the prompt names another shape (a seeded one), CFG 6, guidance toward the class, per scale.
- CFG beside them: no classifier, the prompt names the class ("a <colour> <class> on a <colour> background"), per
  cfg scale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from nodes.sd.noisy_classifier import ClassifierHandle, classifier_guidance_patch
from nodes.sd.shapes import COLOURS, SHAPES
from nodes.sd.types import Latent
from training.classifier import classify


def prompt_about(shape: str, seed: int) -> str:
    rng = random.Random(seed)
    fg, bg = rng.sample(list(COLOURS), 2)
    return f"a {fg} {shape} on a {bg} background"


def other_shape(shape: str, seed: int) -> str:
    return random.Random(seed + 17).choice([s for s in SHAPES if s != shape])


@torch.no_grad()
def drawn_shapes(loaded: Any, model: Any, prompt: str, seed: int, count: int, cfg: float, steps: int = 20) -> list[str]:
    """Shapes read from `count` images of one prompt (batch items of one seed), sampled from `model`."""
    from PIL import Image

    from nodes.sd.ksampler import sample
    from nodes.sd.text import encode
    from nodes.sd.vae import decode

    latent = sample(model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple",
                    positive=[encode(loaded.clip, prompt)], negative=[encode(loaded.clip, "")],
                    latent=Latent(torch.zeros(count, 4, 16, 16)))
    pixels = (decode(loaded.vae, latent.samples) * 255).round().byte().numpy()
    return [classify(Image.fromarray(array)).shape for array in pixels]


def guided_accuracy(loaded: Any, classifier: ClassifierHandle, scale: float, *, mode: str, seeds: Sequence[int],
                    per_seed: int = 1, steps: int = 20, classes: Sequence[str] = SHAPES) -> float:
    """Accuracy of classifier guidance toward each class in turn (`mode` "unconditional" or "conflicting")."""
    hits = total = 0
    for index, seed in enumerate(seeds):
        target = classes[index % len(classes)]
        model = loaded.model.with_patch(classifier_guidance_patch(classifier, target, scale))
        if mode == "unconditional":
            drawn = drawn_shapes(loaded, model, "", seed, per_seed, cfg=1.0, steps=steps)
        else:
            prompt = prompt_about(other_shape(target, seed), seed)
            drawn = drawn_shapes(loaded, model, prompt, seed, per_seed, cfg=6.0, steps=steps)
        hits += sum(d == target for d in drawn)
        total += len(drawn)
    return hits / total


def cfg_accuracy(loaded: Any, cfg: float, *, seeds: Sequence[int], per_seed: int = 1, steps: int = 20,
                 classes: Sequence[str] = SHAPES) -> float:
    """Accuracy of plain CFG (no classifier) when the prompt names the class."""
    hits = total = 0
    for index, seed in enumerate(seeds):
        target = classes[index % len(classes)]
        drawn = drawn_shapes(loaded, loaded.model, prompt_about(target, seed), seed, per_seed, cfg=cfg, steps=steps)
        hits += sum(d == target for d in drawn)
        total += len(drawn)
    return hits / total
