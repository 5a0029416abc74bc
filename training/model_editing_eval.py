"""Measuring a TIME edit (nodes/sd/model_editing.py) on the embedded model with the analytic shapes classifier.

For each seed a prompt "a <fg> <shape> on a <bg> background" is drawn (seen colour combinations, a seeded choice);
the edited and the base model sample the same seeds (Euler, trailing spacing, CFG 6, 20 steps: the model card's
evaluation settings). Reported per shape: how often the edited model draws the destination shape for source-shape
prompts, and how often it still draws the asked shape for the other shapes (beside the base model's rates).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from nodes.sd.model_editing import edit_model, edit_pairs
from nodes.sd.shapes import COLOURS, HELD_OUT, SHAPES
from training.classifier import classify
from training.generate import EulerGenerator


def prompts_for(shape: str, seeds: Sequence[int]) -> list[str]:
    """One seen (fg, bg) combination per seed, drawn from the seed, for prompts about `shape`."""
    prompts = []
    for seed in seeds:
        rng = random.Random(seed * 7919 + SHAPES.index(shape))
        while True:
            fg, bg = rng.choice(list(COLOURS)), rng.choice(list(COLOURS))
            if fg != bg and (shape, fg, bg) not in HELD_OUT:
                break
        prompts.append(f"a {fg} {shape} on a {bg} background")
    return prompts


def shapes_drawn(loaded: Any, model: Any, shape: str, seeds: Sequence[int], steps: int = 20) -> list[str]:
    """The classifier's reading of each image `model` draws for prompts about `shape`."""
    from PIL import Image

    from nodes.sd.text import encode
    from nodes.sd.vae import decode

    def decode_images(latents):
        pixels = (decode(loaded.vae, latents) * 255.0).round().byte().numpy()
        return [Image.fromarray(array) for array in pixels]

    generate = EulerGenerator(model.unet, lambda text: encode(loaded.clip, text).embeds, decode_images, steps=steps)
    return [classify(image).shape for image in generate(prompts_for(shape, seeds), list(seeds))]


def evaluate_edit(loaded: Any, source_shape: str, destination_shape: str, seeds: Sequence[int], *,
                  source: str, destination: str, lamb: float, preserve: Sequence[str] = (), augment: bool = True,
                  steps: int = 20, base: bool = True) -> dict[str, Any]:
    """Edit the loaded model (source -> destination prompts) and measure it (and the base) on every shape."""
    pairs = edit_pairs(loaded.clip, source, destination, augment=augment, preserve=preserve)
    edited = edit_model(loaded.model, pairs, lamb=lamb)
    result: dict[str, Any] = {"source": source, "destination": destination, "lambda": lamb,
                              "preserve": list(preserve), "seeds": len(seeds), "per_shape": {}}
    for shape in SHAPES:
        row: dict[str, Any] = {}
        for name, model in (("edited", edited), ("base", loaded.model)) if base else (("edited", edited),):
            drawn = shapes_drawn(loaded, model, shape, seeds, steps)
            target = destination_shape if shape == source_shape and name == "edited" else shape
            row[name] = {"rate": round(sum(d == target for d in drawn) / len(drawn), 4),
                         "counts": {s: drawn.count(s) for s in sorted(set(drawn))}}
        result["per_shape"][shape] = row
    others = [s for s in SHAPES if s != source_shape]
    result["edit_success"] = result["per_shape"][source_shape]["edited"]["rate"]
    result["others_kept"] = round(sum(result["per_shape"][s]["edited"]["rate"] for s in others) / len(others), 4)
    if base:
        result["others_base"] = round(sum(result["per_shape"][s]["base"]["rate"] for s in others) / len(others), 4)
    return result
