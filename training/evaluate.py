"""Measuring prompt adherence and image statistics of a text-to-image model on the shapes task.

Prompts come in three groups, each image scored by the analytic classifier (`training.classifier`):
- seen: 20 (shape, fg, bg) combinations drawn from the training set, with new noise seeds;
- held_out: the 20 combinations never trained on (`nodes.sd.shapes.HELD_OUT`): composition, not recall;
- compositional: 16 prompts naming size and position ("a small red star in the top left ...").
Plus SF-FID (`training.fid`) of all generated images against real renders of the same prompts, and the
classifier's own accuracy on VAE reconstructions of real renders (its calibration: should be ~1.0).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from nodes.sd.shapes import HELD_OUT, ShapeSpec, caption, render, spec_for, training_combinations
from training import data
from training.classifier import Classification, classify
from training.fid import FEATURES_NAME, fid
from training.generate import GenerateFn

SEEN_PROMPTS = 20
COMPOSITIONAL_PROMPTS = 16
_EVAL_RNG_SEED = 20240601


@dataclass(frozen=True)
class EvalItem:
    group: str
    spec: ShapeSpec
    seed: int

    @property
    def prompt(self) -> str:
        return caption(self.spec)


def evaluation_items(seeds_per_prompt: int = 4) -> list[EvalItem]:
    """The fixed evaluation prompts (each `seeds_per_prompt` times, noise seeds 0, 1, ...)."""
    rng = random.Random(_EVAL_RNG_SEED)
    plain = {"mention_size": 0.0, "mention_position": 0.0}
    seen = rng.sample(training_combinations(), SEEN_PROMPTS)
    specs = [("seen", spec_for(*combo, rng, **plain)) for combo in seen]
    specs += [("held_out", spec_for(*combo, rng, **plain)) for combo in sorted(HELD_OUT)]
    compositional = []
    index = 0
    while len(compositional) < COMPOSITIONAL_PROMPTS:
        spec = data.stream_specs(0, data.EVALUATION_STREAM, index, 1)[0]
        index += 1
        if spec.size != "medium":
            compositional.append(("compositional", replace(spec, mention_size=True, mention_position=True)))
    return [EvalItem(group, spec, seed) for group, spec in specs + compositional for seed in range(seeds_per_prompt)]


def _hit(result: Classification, spec: ShapeSpec) -> dict[str, bool]:
    hits = {"fg": result.fg == spec.fg, "bg": result.bg == spec.bg, "shape": result.shape == spec.shape}
    hits["all"] = all(hits.values())
    if spec.mention_size:
        hits["size"] = result.size == spec.size
    if spec.mention_position:
        hits["position"] = (result.horizontal, result.vertical) == (spec.horizontal, spec.vertical)
    return hits


def score(items: Sequence[EvalItem], images: Sequence[Image.Image]) -> dict[str, dict[str, Any]]:
    """Per group: image count and the fraction of images right on each criterion."""
    groups: dict[str, dict[str, list[bool]]] = {}
    for item, image in zip(items, images, strict=True):
        for key, value in _hit(classify(image), item.spec).items():
            groups.setdefault(item.group, {}).setdefault(key, []).append(value)
    return {
        group: {"images": len(hits["all"]), **{k: sum(v) / len(v) for k, v in hits.items()}}
        for group, hits in groups.items()
    }


def real_renders(items: Sequence[EvalItem], copies: int, offset: int) -> list[Image.Image]:
    """Real images of the evaluation prompts' combinations at fresh positions/sizes (FID's reference)."""
    rng = random.Random(_EVAL_RNG_SEED + offset)
    images = []
    for item in items:
        for _ in range(copies):
            spec = spec_for(*item.spec.combination, rng)
            images.append(render(spec)[0])
    return images


@torch.no_grad()
def vae_calibration(vae: torch.nn.Module, items: Sequence[EvalItem]) -> float:
    """The classifier's all-three accuracy on VAE reconstructions of real renders of the evaluation specs."""
    specs = list({item.spec: None for item in items})
    pixels = data.render_specs(specs, 128).to(next(vae.parameters()).dtype)
    reconstructions = []
    for start in range(0, len(specs), 16):
        latents = vae.encode(pixels[start : start + 16]).latent_dist.mean
        reconstructions += data.tensor_to_images(vae.decode(latents).sample)
    hits = [_hit(classify(image), spec)["all"] for image, spec in zip(reconstructions, specs)]
    return sum(hits) / len(hits)


def contact_sheet(images: Sequence[Image.Image], columns: int) -> Image.Image:
    """A grid of images, `columns` wide (one row per prompt when columns = seeds per prompt)."""
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height), (0, 0, 0))
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * width, (index // columns) * height))
    return sheet


def evaluate(
    generate: GenerateFn,
    *,
    seeds_per_prompt: int = 4,
    vae: torch.nn.Module | None = None,
    batch: int = 32,
    progress: bool = True,
) -> tuple[dict[str, Any], list[Image.Image]]:
    """Generate every evaluation image and score it.

    Args:
        generate: prompts, seeds -> images (see `training.generate`).
        seeds_per_prompt: images per prompt (noise seeds 0..n-1).
        vae: when given, the classifier's calibration on this VAE's reconstructions is measured too.
        batch: prompts handed to `generate` at a time (for the progress bar).

    Returns:
        (metrics, images in evaluation order).
    """
    started = time.perf_counter()
    items = evaluation_items(seeds_per_prompt)
    images: list[Image.Image] = []
    for start in tqdm(range(0, len(items), batch), desc="generate", disable=not progress, dynamic_ncols=True):
        chunk = items[start : start + batch]
        images += generate([item.prompt for item in chunk], [item.seed for item in chunk])
    metrics: dict[str, Any] = {"groups": score(items, images), "seeds_per_prompt": seeds_per_prompt}
    reference = real_renders(items, 2, offset=1)
    metrics.update(
        fid=fid(images, reference), fid_floor=fid(real_renders(items, 1, offset=2), reference),
        fid_features=FEATURES_NAME, fid_reference_images=len(reference),
    )  # fmt: skip
    if vae is not None:
        metrics["calibration_all"] = vae_calibration(vae, items)
    metrics["seconds"] = time.perf_counter() - started
    return metrics, images
