"""Training and evaluation data from the procedural shapes generator, as pure functions of seeds.

Every image is `spec_from_seed(seed)` for a seed computed from (run seed, stream, index), so a batch
is a function of the step number alone: resuming needs no data-loader state, and the training,
validation and evaluation streams can never share an image.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import lru_cache

import numpy as np
import torch

from nodes.sd.shapes import (
    COLOURS, HORIZONTAL, SHAPES, VERTICAL, ShapeSpec, caption, render, render_striped, spec_from_seed,
)  # fmt: skip
from nodes.sd.tokenizer import clip_l_tokenizer

VAE_STREAM, DATASET_STREAM, VALIDATION_STREAM, EVALUATION_STREAM, NOISE_STREAM = 0, 1, 2, 3, 4
DECODER_STREAM, STYLE_STREAM, CONTROL_STREAM = 5, 6, 7
CAPTION_WORDS: tuple[str, ...] = (
    "a", "an", "on", "in", "at", "the", "background", "small", "large", "center",
    *HORIZONTAL, *VERTICAL, *COLOURS, *SHAPES,
)  # fmt: skip
"""Every word a caption can contain: the text encoder trains exactly these tokens."""
MENTION_PROBABILITY = 0.3


def data_seed(run_seed: int, stream: int, index: int) -> int:
    """A distinct integer seed for image `index` of `stream` in run `run_seed` (streams never overlap)."""
    if not (0 <= stream < 256 and 0 <= index < 2**32 and 0 <= run_seed < 2**20):
        raise ValueError(f"data seed out of range: run {run_seed}, stream {stream}, index {index}")
    return (run_seed << 40) | (stream << 32) | index


def images_to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images -> float tensor [B, 3, H, W] in -1..1 (the VAE's input range)."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(pixels: torch.Tensor) -> list:
    """[B, 3, H, W] in -1..1 -> PIL RGB images."""
    from PIL import Image

    array = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]


def render_specs(specs: list[ShapeSpec], resolution: int, *, striped: bool = False) -> torch.Tensor:
    """Renders of specs as a [B, 3, H, W] tensor in -1..1 (in the LoRA's striped style if `striped`)."""
    draw = render_striped if striped else render
    return images_to_tensor([draw(spec, resolution)[0] for spec in specs])


def stream_specs(run_seed: int, stream: int, start: int, count: int, *, held_out: bool = False) -> list[ShapeSpec]:
    """`count` consecutive specs of a stream (held-out combinations only if `held_out`, never otherwise)."""
    return [spec_from_seed(data_seed(run_seed, stream, start + i), held_out=held_out) for i in range(count)]


def vae_batch(
    run_seed: int, first: int, batch_size: int, resolution: int, crop: int | None, generator: torch.Generator
) -> torch.Tensor:
    """Images `first...` of the VAE stream (fresh renders: the generator is free), randomly cropped if `crop`."""
    images = render_specs(stream_specs(run_seed, VAE_STREAM, first, batch_size), resolution)
    if crop is None or crop >= resolution:
        return images
    offsets = torch.randint(0, resolution - crop + 1, (batch_size, 2), generator=generator)
    return torch.stack([img[:, y : y + crop, x : x + crop] for img, (y, x) in zip(images, offsets.tolist())])


@lru_cache(maxsize=65536)
def token_window(text: str) -> tuple[int, ...]:
    """SD1's 77-token window of a caption: bos, tokens, eos, padded with eos."""
    tokenizer = clip_l_tokenizer()
    ids = tokenizer(text)
    if len(ids) > tokenizer.max_length:
        raise ValueError(f"caption longer than {tokenizer.max_length} tokens: {text!r}")
    return tuple(tokenizer.window(ids))


def caption_token_ids() -> list[int]:
    """The vocabulary ids of every caption word (the rows the text encoder trains)."""
    tokenizer = clip_l_tokenizer()
    return sorted({token for word in CAPTION_WORDS for token in tokenizer.word_ids(word)})


def caption_variant(spec: ShapeSpec, rng: random.Random) -> ShapeSpec:
    """The same picture with freshly drawn caption detail, so one image teaches several phrasings."""
    return replace(
        spec,
        mention_size=spec.size != "medium" and rng.random() < MENTION_PROBABILITY,
        mention_position=rng.random() < MENTION_PROBABILITY,
    )


class LatentDataset:
    """Cached latents of `DATASET_STREAM` images with their specs; batches are pure functions of the step.

    Args:
        latents: [N, 4, h, w] scaled latents (what the UNet sees).
        seeds: [N] the data seeds the images were rendered from.
        run_seed: shuffles epochs and draws caption variants.
    """

    def __init__(self, latents: torch.Tensor, seeds: torch.Tensor, run_seed: int) -> None:
        if latents.shape[0] != seeds.shape[0]:
            raise ValueError(f"{latents.shape[0]} latents but {seeds.shape[0]} seeds")
        self.latents = latents
        self.specs = [spec_from_seed(int(seed)) for seed in seeds.tolist()]
        self.run_seed = run_seed
        self._permutations: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.latents.shape[0]

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            self._permutations = {epoch: torch.randperm(len(self), generator=torch.Generator().manual_seed(
                data_seed(self.run_seed, DATASET_STREAM, epoch)))}  # fmt: skip
        return self._permutations[epoch]

    def indices(self, step: int, batch_size: int) -> list[int]:
        """Dataset rows of a step: each epoch visits every image once, in a seeded order."""
        out = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, offset = divmod(position, len(self))
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def batch(self, step: int, batch_size: int, caption_dropout: float) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(latents, token ids [B, 77], captions) of a step; dropped captions are '' (what CFG's negative encodes)."""
        rng = random.Random(data_seed(self.run_seed, DATASET_STREAM, 2**31 + step))
        rows = self.indices(step, batch_size)
        captions = []
        for row in rows:
            variant = caption_variant(self.specs[row], rng)
            captions.append("" if rng.random() < caption_dropout else caption(variant))
        tokens = torch.tensor([token_window(text) for text in captions], dtype=torch.long)
        return self.latents[rows], tokens, captions


def dataset_seeds(run_seed: int, size: int) -> torch.Tensor:
    """The data seeds of the UNet's cached dataset (stored with the latents)."""
    return torch.tensor([data_seed(run_seed, DATASET_STREAM, i) for i in range(size)], dtype=torch.long)
