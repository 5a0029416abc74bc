"""Latent batch nodes: pick, repeat and join batch items, and choose how their noise is seeded.

`Latent.batch_index` says which noise each item gets: item k of a batch samples like a single run with that
index, so picking items from a batch reproduces them.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from nodegraph import Combo, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.latent_ops import repeat_to_batch, reshape_like
from ..sd.types import Latent


class LatentFromBatch(Node):
    schema = NodeSchema(
        type_id="LatentFromBatch", display_name="Latent From Batch", category="latent/batch",
        description="length items from batch_index on; they keep their noise (batch_index).",
        inputs=(Socket("samples", "LATENT"), Int("batch_index", 0, min=0, max=63), Int("length", 1, min=1, max=64)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        items = samples.samples
        start = min(items.shape[0] - 1, batch_index)
        length = min(items.shape[0] - start, length)
        mask = samples.noise_mask
        if mask is not None and mask.shape[0] != 1:
            mask = repeat_to_batch(mask, items.shape[0])[start : start + length].clone()
        indices = (tuple(range(start, start + length)) if samples.batch_index is None
                   else tuple(samples.batch_index[start : start + length]))
        return (replace(samples, samples=items[start : start + length].clone(), noise_mask=mask,
                        batch_index=indices),)


class RepeatLatentBatch(Node):
    schema = NodeSchema(
        type_id="RepeatLatentBatch", display_name="Repeat Latent Batch", category="latent/batch",
        description="The batch repeated amount times; repeats get new noise after the originals' indices.",
        inputs=(Socket("samples", "LATENT"), Int("amount", 1, min=1, max=64)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, amount: int) -> tuple[Latent]:
        mask = samples.noise_mask
        if mask is not None and mask.shape[0] > 1:
            mask = mask.repeat(amount, 1, 1, 1)
        indices = samples.batch_index
        if indices is not None:
            offset = max(indices) - min(indices) + 1
            indices = (*indices, *(i + k * offset for k in range(1, amount) for i in indices))
        return (replace(samples, samples=samples.samples.repeat(amount, 1, 1, 1), noise_mask=mask,
                        batch_index=indices),)


class LatentBatch(Node):
    schema = NodeSchema(
        type_id="LatentBatch", display_name="LatentBatch", category="latent/batch",
        description="samples2's items appended to samples1's (resized to samples1's size if need be).",
        inputs=(Socket("samples1", "LATENT"), Socket("samples2", "LATENT")),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first, second = samples1.samples, reshape_like(samples1.samples, samples2.samples, repeat_batch=False)
        indices1 = samples1.batch_index if samples1.batch_index is not None else tuple(range(first.shape[0]))
        indices2 = samples2.batch_index if samples2.batch_index is not None else tuple(range(second.shape[0]))
        return (replace(samples1, samples=torch.cat([first, second]), batch_index=(*indices1, *indices2)),)


class LatentBatchSeedBehavior(Node):
    schema = NodeSchema(
        type_id="LatentBatchSeedBehavior", display_name="LatentBatchSeedBehavior", category="latent/advanced",
        description="fixed: every item gets the first item's noise; random: each item its own.",
        inputs=(Socket("samples", "LATENT"), Combo("seed_behavior", ("random", "fixed"), "fixed")),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, seed_behavior: str) -> tuple[Latent]:
        if seed_behavior == "random":
            return (replace(samples, batch_index=None),)
        if seed_behavior != "fixed":
            raise ValueError(f"LatentBatchSeedBehavior: seed_behavior {seed_behavior!r} is not 'random' or 'fixed'")
        first = samples.batch_index[0] if samples.batch_index else 0
        return (replace(samples, batch_index=(first,) * samples.samples.shape[0]),)


NODES = (LatentFromBatch, RepeatLatentBatch, LatentBatch, LatentBatchSeedBehavior)
