"""RebatchLatents and RebatchImages: what they cut, against a step-by-step transcription of ComfyUI's algorithm."""

from __future__ import annotations

import random

import pytest
import torch

from nodegraph import Engine, NodeRegistry
from nodegraph.workflow import Link, NodeInstance, Workflow
from nodes.latent import NODES as LATENT_NODES
from nodes.rebatch import NODES, RebatchImages, RebatchLatents
from nodes.sd.rebatch import rebatch_images, rebatch_latents
from nodes.sd.types import Latent


Batch = tuple[torch.Tensor, torch.Tensor | None, list[int]]


def comfy_reference(latents: list[Latent], batch_size: int) -> list[Batch]:
    """ComfyUI's LatentRebatch as it streams: add each latent to the batch being filled (closing it first when the
    spatial size changes), emit full batches whenever it holds more than batch_size items, emit the rest at the
    end; masks default to ones at 8x the latent size and are dropped when all ones."""
    out: list[list] = []
    current = None
    processed = 0
    for latent in latents:
        samples = latent.samples
        count = samples.shape[0]
        mask = latent.noise_mask
        if mask is None:
            mask = torch.ones(count, 1, samples.shape[2] * 8, samples.shape[3] * 8)
        if mask.shape[0] < count:
            mask = mask.repeat((count - 1) // mask.shape[0] + 1, 1, 1, 1)[:count]
        indices = list(latent.batch_index) if latent.batch_index is not None else [processed + k for k in range(count)]
        processed += len(indices)
        new = [samples, mask, indices]
        if current is None:
            current = new
        elif samples.shape[-2:] != current[0].shape[-2:]:
            out.append([current[0][:batch_size], current[1][:batch_size], current[2][:batch_size]])
            current = new
        else:
            current = [torch.cat((current[0], samples)), torch.cat((current[1], mask)), current[2] + indices]
        if current[0].shape[0] > batch_size:
            whole = current[0].shape[0] // batch_size
            for i in range(whole):
                part = slice(i * batch_size, (i + 1) * batch_size)
                out.append([current[0][part], current[1][part], current[2][part]])
            rest = slice(whole * batch_size, None)
            leftover = [current[0][rest], current[1][rest], current[2][rest]]
            current = None if whole * batch_size == current[0].shape[0] else leftover
    if current is not None:
        out.append([current[0][:batch_size], current[1][:batch_size], current[2][:batch_size]])
    return [(s, None if m.mean() == 1.0 else m, i) for s, m, i in out]


def test_one_batch_is_cut_in_order_with_its_batch_indices():
    samples = torch.randn(5, 4, 3, 3)
    batches = rebatch_latents([Latent(samples)], 2)
    assert [b.samples.shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([b.samples for b in batches]), samples)
    assert [b.batch_index for b in batches] == [(0, 1), (2, 3), (4,)]
    assert all(b.noise_mask is None for b in batches)  # no mask in, all ones, dropped


def test_batches_merge_across_list_items_and_a_size_change_closes_a_batch():
    a, b, c = torch.randn(3, 4, 2, 2), torch.randn(2, 4, 2, 2), torch.randn(2, 4, 4, 4)
    batches = rebatch_latents([Latent(a, batch_index=(7, 8, 9)), Latent(b), Latent(c)], 2)
    assert [tuple(x.samples.shape) for x in batches] == [(2, 4, 2, 2), (2, 4, 2, 2), (1, 4, 2, 2), (2, 4, 4, 4)]
    assert torch.equal(batches[1].samples, torch.cat([a[2:], b[:1]]))
    assert [x.batch_index for x in batches] == [(7, 8), (9, 3), (4,), (5, 6)]  # b counts from the 3 items before it


def test_noise_masks_follow_their_items_and_are_dropped_only_when_all_ones():
    masked = torch.ones(1, 1, 16, 16)
    masked[..., :8] = 0.0
    batches = rebatch_latents([Latent(torch.randn(2, 4, 2, 2), noise_mask=masked), Latent(torch.randn(3, 4, 2, 2))], 2)
    assert torch.equal(batches[0].noise_mask, torch.cat([masked, masked]))  # one mask serves both items
    assert batches[1].noise_mask is None and batches[2].noise_mask is None


def test_masks_of_different_sizes_in_one_batch_are_brought_to_the_pixel_size():
    """ComfyUI cannot join such masks (torch.cat fails); we resize the odd one to 8x the latent, bilinearly."""
    coarse = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    batches = rebatch_latents([Latent(torch.randn(1, 4, 2, 2), noise_mask=coarse), Latent(torch.randn(1, 4, 2, 2))], 2)
    (batch,) = batches
    expected = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")
    assert batch.noise_mask.shape == (2, 1, 16, 16)
    assert torch.equal(batch.noise_mask[0], expected[0]) and torch.equal(batch.noise_mask[1], torch.ones(1, 16, 16))


@pytest.mark.parametrize("seed", range(8))
def test_matches_comfyuis_streaming_algorithm(seed):
    rng = random.Random(seed)
    latents = []
    for _ in range(rng.randint(1, 5)):
        batch, size = rng.randint(1, 5), rng.choice([2, 2, 3])
        mask = None
        if rng.random() < 0.4:
            mask = torch.rand(rng.choice([1, batch]), 1, size * 8, size * 8)
        index = tuple(rng.sample(range(100), batch)) if rng.random() < 0.3 else None
        latents.append(Latent(torch.randn(batch, 4, size, size), noise_mask=mask, batch_index=index))
    batch_size = rng.randint(1, 4)
    ours = rebatch_latents(latents, batch_size)
    theirs = comfy_reference(latents, batch_size)
    assert len(ours) == len(theirs)
    for got, (samples, mask, indices) in zip(ours, theirs):
        assert torch.equal(got.samples, samples) and list(got.batch_index) == indices
        assert (got.noise_mask is None) == (mask is None)
        if mask is not None:
            assert torch.equal(got.noise_mask, mask)


def test_images_are_flattened_and_cut_in_order():
    a, b = torch.rand(3, 4, 5, 3), torch.rand(2, 4, 5, 3)
    batches = rebatch_images([a, b], 2)
    assert [x.shape[0] for x in batches] == [2, 2, 1]
    assert torch.equal(batches[1], torch.cat([a[2:], b[:1]])) and torch.equal(batches[2], b[1:])
    assert [x.shape[0] for x in rebatch_images([a, b], 10)] == [5]
    with pytest.raises(ValueError, match=r"images 0\.\.1 would share a batch but differ in size"):
        rebatch_images([torch.rand(1, 4, 5, 3), torch.rand(1, 6, 5, 3)], 2)


def test_nodes_take_whole_lists_and_give_lists():
    assert RebatchLatents.schema.input_is_list and RebatchLatents.schema.output_is_list == (True,)
    assert RebatchImages.schema.input_is_list and RebatchImages.schema.output_is_list == (True,)


def test_a_rebatched_latent_makes_the_next_node_run_once_per_new_batch():
    """EmptyLatentImage (5) -> RebatchLatents (2) -> LatentUpscaleBy: three upscales of batches 2, 2, 1."""
    nodes = {"1": NodeInstance(type="EmptyLatentImage", widgets={"width": 64, "height": 64, "batch_size": 5}),
             "2": NodeInstance(type="RebatchLatents", widgets={"batch_size": 2}),
             "3": NodeInstance(type="LatentUpscaleBy", widgets={"upscale_method": "nearest-exact", "scale_by": 2.0})}
    wf = Workflow(nodes=nodes,
                  links=[Link(from_node="1", from_slot=0, to_node="2", to_input="latents"),
                         Link(from_node="2", from_slot=0, to_node="3", to_input="samples")])
    result = Engine(NodeRegistry((*LATENT_NODES, *NODES))).run(wf, outputs=["3"])
    (upscaled,) = result.values["3"]
    assert [tuple(x.samples.shape) for x in upscaled] == [(2, 4, 16, 16), (2, 4, 16, 16), (1, 4, 16, 16)]
    assert [x.batch_index for x in upscaled] == [(0, 1), (2, 3), (4,)]
