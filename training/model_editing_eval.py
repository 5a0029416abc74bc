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


def rates(drawn: dict[str, list[str]], source_shape: str, destination_shape: str | None) -> dict[str, Any]:
    """Per shape: the rate of the expected shape (the destination for the source shape when `destination_shape`
    is given) and what was drawn; plus the edit's success and the other shapes' mean rate."""
    out: dict[str, Any] = {"per_shape": {}}
    for shape, readings in drawn.items():
        target = destination_shape if shape == source_shape and destination_shape else shape
        out["per_shape"][shape] = {"rate": round(sum(r == target for r in readings) / len(readings), 4),
                                   "counts": {s: readings.count(s) for s in sorted(set(readings))}}
    others = [s for s in drawn if s != source_shape]
    out["source_rate"] = out["per_shape"][source_shape]["rate"]
    out["others_kept"] = round(sum(out["per_shape"][s]["rate"] for s in others) / len(others), 4)
    return out


def evaluate_edit(loaded: Any, source_shape: str, destination_shape: str, seeds: Sequence[int], *,
                  source: str, destination: str, lamb: float, preserve: Sequence[str] = (), augment: bool = True,
                  steps: int = 20) -> dict[str, Any]:
    """Edit the loaded model (source -> destination prompts) and measure it on prompts about every shape."""
    pairs = edit_pairs(loaded.clip, source, destination, augment=augment, preserve=preserve)
    edited = edit_model(loaded.model, pairs, lamb=lamb)
    drawn = {shape: shapes_drawn(loaded, edited, shape, seeds, steps) for shape in SHAPES}
    return {"source": source, "destination": destination, "lambda": lamb, "preserve": list(preserve),
            **rates(drawn, source_shape, destination_shape)}
