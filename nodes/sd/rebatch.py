"""Re-cutting a list of batches into batches of another size (ComfyUI's RebatchLatents / RebatchImages).

A list of latents or images (e.g. one batch per prompt, or batches of mixed sizes) becomes a list of batches of
`batch_size` items, in order. Latents keep what says how they are sampled: each item's noise mask (all ones where
a latent had none) and its batch index, the number that picks its noise, so a re-cut batch is sampled with the
same noise as the original one. Latents of different spatial sizes cannot share a batch: a change of size closes
the batch being filled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .types import Latent

PIXELS_PER_LATENT = 8


def _item_mask(latent: Latent) -> torch.Tensor:
    """The latent's noise mask as [B, 1, h, w] with one mask per item; all ones (sample everywhere) if none."""
    samples = latent.samples
    batch, height, width = samples.shape[0], samples.shape[-2], samples.shape[-1]
    if latent.noise_mask is None:
        return torch.ones(batch, 1, height * PIXELS_PER_LATENT, width * PIXELS_PER_LATENT)
    mask = latent.noise_mask.reshape(-1, 1, latent.noise_mask.shape[-2], latent.noise_mask.shape[-1]).float().cpu()
    if mask.shape[0] < batch:  # a single mask (or too few) serves every item, cycling as ComfyUI repeats them
        mask = mask.repeat((batch - 1) // mask.shape[0] + 1, 1, 1, 1)[:batch]
    return mask[:batch]


def _join_masks(masks: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """One mask batch; masks of different sizes are first brought to the latent's pixel size."""
    if len({tuple(mask.shape[-2:]) for mask in masks}) > 1:
        size = (height * PIXELS_PER_LATENT, width * PIXELS_PER_LATENT)
        masks = [mask if tuple(mask.shape[-2:]) == size else F.interpolate(mask, size=size, mode="bilinear")
                 for mask in masks]
    return torch.cat(masks)


def rebatch_latents(latents: Sequence[Latent], batch_size: int) -> list[Latent]:
    """Cut the items of `latents` (in order) into batches of `batch_size`; a change of spatial size starts a new
    batch. Each output carries its items' batch indices (a latent without them counts from the number of items
    before it) and their noise masks, dropped where a batch's mask is all ones.

    Raises:
        ValueError: batch_size is below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    runs: list[list[tuple[torch.Tensor, torch.Tensor, int]]] = []  # items of equal spatial size, in order
    offset = 0
    for latent in latents:
        samples = latent.samples
        indices = (list(latent.batch_index) if latent.batch_index is not None
                   else list(range(offset, offset + samples.shape[0])))
        offset += len(indices)
        mask = _item_mask(latent)
        items = [(samples[k:k + 1], mask[k:k + 1], indices[k]) for k in range(samples.shape[0])]
        if runs and runs[-1] and runs[-1][-1][0].shape[-2:] == samples.shape[-2:]:
            runs[-1].extend(items)
        elif items:
            runs.append(items)
    batches = []
    for run in runs:
        height, width = run[0][0].shape[-2:]
        for start in range(0, len(run), batch_size):
            chunk = run[start:start + batch_size]
            mask = _join_masks([item[1] for item in chunk], height, width)
            batches.append(Latent(samples=torch.cat([item[0] for item in chunk]),
                                  noise_mask=None if bool((mask == 1.0).all()) else mask,
                                  batch_index=tuple(item[2] for item in chunk)))
    return batches


def rebatch_images(images: Sequence[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Cut the images of every batch in `images` ([B, H, W, C] each), in order, into batches of `batch_size`.

    Raises:
        ValueError: batch_size is below 1, or images of different sizes would share a batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    singles = [image[k:k + 1] for image in images for k in range(image.shape[0])]
    batches = []
    for start in range(0, len(singles), batch_size):
        chunk = singles[start:start + batch_size]
        sizes = sorted({tuple(single.shape[1:]) for single in chunk})
        if len(sizes) > 1:
            raise ValueError(f"images {start}..{start + len(chunk) - 1} would share a batch but differ in size "
                             f"(H, W, C): {sizes}")
        batches.append(torch.cat(chunk))
    return batches
