"""Training data for fine-tuning: image folders with captions, their latents and text states, seeded batches.

A folder holds images (png, jpg, webp, bmp) and, beside each, an optional caption `<stem>.txt` (the layout of
kohya-ss's and ComfyUI's trainers). A `TrainingSet` is what the loss needs: VAE latents in the UNet's units and
one caption's text states per item, encoded once before training. `batch_indices` shuffles the items epoch by
epoch from the seed alone, so the batch of step i is the same in a resumed run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from nodes.sd.finetune.loop import derived_seed
from nodes.sd.types import ClipHandle, VaeHandle

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RESIZE_METHODS: tuple[str, ...] = ("None", "Stretch", "Crop", "Pad")
"""How images of another size than the target are brought to it (ComfyUI's image-set loaders' choices):
refuse, stretch (Lanczos), crop from the top-left corner, or scale to fit and pad with black, centred."""


def image_files(folder: str | Path) -> list[Path]:
    """The folder's images, sorted by name (subfolders are not searched).

    Raises:
        FileNotFoundError: no such folder; ValueError: it holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def kohya_files(folder: str | Path) -> list[Path]:
    """The folder's images, then those of each subfolder in kohya-ss's `<repeats>_<name>` layout (a subfolder
    "10_star" lists its images 10 times; one without a number prefix once), all sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = image_files(folder) if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                                       for p in folder.iterdir()) else []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        prefix = sub.name.split("_")[0]
        repeats = int(prefix) if prefix.isdigit() else 1
        inner = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        files.extend(inner * repeats)
    if not files:
        raise ValueError(f"image folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def caption_for(image: str | Path) -> str:
    """The caption beside an image (`<stem>.txt`, stripped), or "" when there is none."""
    text = Path(image).with_suffix(".txt")
    return text.read_text(encoding="utf-8").strip() if text.is_file() else ""


def _fit(image: Image.Image, size: tuple[int, int], method: str, name: str) -> Image.Image:
    if image.size == size:
        return image
    if method == "Stretch":
        return image.resize(size, Image.Resampling.LANCZOS)
    if method == "Crop":
        return image.crop((0, 0, *size))
    if method == "Pad":
        return ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=(0, 0, 0))
    raise ValueError(f"{name} is {image.size[0]}x{image.size[1]}, not {size[0]}x{size[1]} like the set's first "
                     f"image; choose a resize_method ({', '.join(RESIZE_METHODS[1:])}) or use images of one size")


def load_images(files: Sequence[str | Path], *, resize_method: str = "None", width: int = -1,
                height: int = -1) -> torch.Tensor:
    """Images as one IMAGE batch [N, H, W, 3] in 0..1.

    Args:
        files: image paths, in order.
        resize_method: one of RESIZE_METHODS, for images whose size differs from the target.
        width, height: the target size; -1 takes the first image's.
    """
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize_method {resize_method!r}; expected one of {', '.join(RESIZE_METHODS)}")
    if not files:
        raise ValueError("no images to load")
    pixels = []
    size: tuple[int, int] | None = None
    for file in files:
        with Image.open(file) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode == "I":  # 16-bit greyscale
                image = image.point(lambda value: value * (1 / 255))
            image = image.convert("RGB")
        if size is None:
            size = (width if width > 0 else image.size[0], height if height > 0 else image.size[1])
        image = _fit(image, size, resize_method, Path(file).name)
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
    return torch.stack(pixels)


@dataclass(frozen=True)
class TrainingSet:
    """Fine-tuning data: latents [N, 4, h, w] (UNet units) and per-item text states [N, T, D]."""

    latents: torch.Tensor
    states: torch.Tensor
    captions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.latents.dim() != 4 or self.states.dim() != 3 or self.latents.shape[0] != self.states.shape[0]:
            raise ValueError(f"TrainingSet needs latents [N, C, h, w] and states [N, T, D] with one N; got "
                             f"{tuple(self.latents.shape)} and {tuple(self.states.shape)}")

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, states) of these items."""
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        return self.latents[rows], self.states[rows]


def stack_states(states: Sequence[torch.Tensor], names: Sequence[str] = ()) -> torch.Tensor:
    """Per-item text states ([1, T_i, D] or [T_i, D]) as one [N, T, D] tensor.

    Prompts longer than one 77-token window make T_i differ; shorter ones are repeated window-wise up to the
    longest (what ComfyUI does when it batches conditionings of different lengths), so every item keeps its
    own text. A length that is no multiple of the shortest is refused.
    """
    flat = [s[0] if s.dim() == 3 else s for s in states]
    if not flat:
        raise ValueError("no conditioning to train on")
    longest = max(s.shape[0] for s in flat)
    out = []
    for index, item in enumerate(flat):
        if longest % item.shape[0]:
            name = names[index] if index < len(names) else f"item {index}"
            raise ValueError(f"{name}: its conditioning has {item.shape[0]} tokens, which does not divide "
                             f"the longest's {longest}; shorten the caption")
        out.append(item.repeat(longest // item.shape[0], 1))
    return torch.stack(out).float()


def batch_indices(count: int, batch_size: int, seed: int, index: int) -> list[int]:
    """The items of micro-batch `index`: epochs are seeded permutations of all `count` items, read in
    order, batch_size items at a time (a batch may span two epochs). Depends on (seed, index) only."""
    if count < 1 or batch_size < 1:
        raise ValueError(f"need at least one item and a batch size of at least 1 (got {count}, {batch_size})")
    rows = []
    position = index * batch_size
    permutation: list[int] = []
    epoch = -1
    for offset in range(position, position + batch_size):
        if offset // count != epoch:
            epoch = offset // count
            generator = torch.Generator().manual_seed(derived_seed(seed, "epoch", epoch))
            permutation = torch.randperm(count, generator=generator).tolist()
        rows.append(permutation[offset % count])
    return rows


def encode_training_set(vae: VaeHandle, clip: ClipHandle, images: torch.Tensor,
                        captions: Sequence[str]) -> TrainingSet:
    """Encode images with the VAE and each caption with the text encoder (once, before training).

    Args:
        images: IMAGE [N, H, W, 3] in 0..1.
        captions: N captions, or one for every image.
    """
    from nodes.sd.text import encode as encode_text  # the text encoder's and VAE's code load with the models
    from nodes.sd.vae import encode as encode_latents

    if len(captions) == 1 and images.shape[0] > 1:
        captions = list(captions) * images.shape[0]
    if len(captions) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
    latents = encode_latents(vae, images)
    states = stack_states([encode_text(clip, text).embeds for text in captions], captions)
    return TrainingSet(latents, states, tuple(captions))
