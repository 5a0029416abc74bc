"""Latent batch, compositing and geometry nodes against ComfyUI's formulas, written out here on small tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodes.latent import (LatentBatch, LatentBatchSeedBehavior, LatentBlend, LatentComposite, LatentCompositeMasked,
                          LatentCrop, LatentFlip, LatentFromBatch, LatentRotate, RepeatLatentBatch)
from nodes.sd.imageops import resize
from nodes.sd.types import Latent


def latent(batch=3, channels=4, height=6, width=5, seed=0, **fields) -> Latent:
    g = torch.Generator().manual_seed(seed)
    return Latent(torch.randn(batch, channels, height, width, generator=g), **fields)


# -- batches -------------------------------------------------------------------------------------------


def test_latent_from_batch_picks_items_and_their_noise_indices():
    source = latent(4, noise_mask=torch.rand(2, 1, 6, 5))
    (out,) = LatentFromBatch.execute(None, samples=source, batch_index=1, length=5)
    assert torch.equal(out.samples, source.samples[1:4]) and out.batch_index == (1, 2, 3)
    masks = source.noise_mask.repeat(2, 1, 1, 1)  # ComfyUI repeats a shorter mask batch, then slices
    assert torch.equal(out.noise_mask, masks[1:4])
    (last,) = LatentFromBatch.execute(None, samples=out, batch_index=9, length=1)  # index clamped to the end
    assert torch.equal(last.samples, source.samples[3:4]) and last.batch_index == (3,)


def test_repeat_latent_batch_offsets_existing_indices():
    source = latent(2, batch_index=(4, 5), noise_mask=torch.rand(2, 1, 6, 5))
    (out,) = RepeatLatentBatch.execute(None, samples=source, amount=3)
    assert torch.equal(out.samples, source.samples.repeat(3, 1, 1, 1))
    assert out.batch_index == (4, 5, 6, 7, 8, 9) and out.noise_mask.shape[0] == 6
    (plain,) = RepeatLatentBatch.execute(None, samples=latent(2), amount=2)
    assert plain.batch_index is None


def test_latent_batch_appends_resized_items_and_indices():
    first, second = latent(2), latent(1, height=12, width=10, seed=1, batch_index=(7,))
    (out,) = LatentBatch.execute(None, samples1=first, samples2=second)
    want = F.interpolate(second.samples, size=(6, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.samples, torch.cat([first.samples, want]))
    assert out.batch_index == (0, 1, 7)


def test_seed_behavior_fixed_and_random():
    (fixed,) = LatentBatchSeedBehavior.execute(None, samples=latent(3, batch_index=(5, 6, 7)), seed_behavior="fixed")
    assert fixed.batch_index == (5, 5, 5)
    (random,) = LatentBatchSeedBehavior.execute(None, samples=fixed, seed_behavior="random")
    assert random.batch_index is None
    (default,) = LatentBatchSeedBehavior.execute(None, samples=latent(2), seed_behavior="fixed")
    assert default.batch_index == (0, 0)


# -- compositing -----------------------------------------------------------------------------------------


def comfy_composite(to, src, x, y, feather):
    """ComfyUI's LatentComposite, written out."""
    x, y, feather = x // 8, y // 8, feather // 8
    s = to.clone()
    src = src[:, :, : to.shape[2] - y, : to.shape[3] - x]
    if feather == 0:
        s[:, :, y : y + src.shape[2], x : x + src.shape[3]] = src
        return s
    mask = torch.ones_like(src)
    for t in range(feather):
        f = (1.0 / feather) * (t + 1)
        if y != 0:
            mask[:, :, t : 1 + t, :] *= f
        if y + src.shape[2] < to.shape[2]:
            mask[:, :, mask.shape[2] - 1 - t : mask.shape[2] - t, :] *= f
        if x != 0:
            mask[:, :, :, t : 1 + t] *= f
        if x + src.shape[3] < to.shape[3]:
            mask[:, :, :, mask.shape[3] - 1 - t : mask.shape[3] - t] *= f
    region = s[:, :, y : y + src.shape[2], x : x + src.shape[3]]
    s[:, :, y : y + src.shape[2], x : x + src.shape[3]] = src * mask + region * (1 - mask)
    return s


def test_latent_composite_matches_comfyui_with_and_without_feather():
    to, src = latent(2, height=12, width=12), latent(2, height=6, width=8, seed=3)
    for x, y, feather in ((0, 0, 0), (16, 24, 0), (24, 8, 16), (64, 64, 24)):
        (out,) = LatentComposite.execute(None, samples_to=to, samples_from=src, x=x, y=y, feather=feather)
        torch.testing.assert_close(out.samples, comfy_composite(to.samples, src.samples, x, y, feather))
    assert to.samples.equal(latent(2, height=12, width=12).samples)  # input untouched


def test_latent_composite_masked_blends_by_the_mask():
    dest, src = latent(2, height=8, width=8), latent(1, height=4, width=4, seed=4)
    mask = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(5))
    (out,) = LatentCompositeMasked.execute(None, destination=dest, source=src, x=40, y=16, resize_source=False,
                                           mask=mask)
    want = dest.samples.clone()
    weight = mask[:, None, :4, :3]
    visible = src.samples[..., :4, :3] * weight + dest.samples[..., 2:6, 5:8] * (1 - weight)
    want[..., 2:6, 5:8] = visible  # x = 40 px = 5 latent pixels: 3 columns fit
    torch.testing.assert_close(out.samples, want)
    (stretched,) = LatentCompositeMasked.execute(None, destination=dest, source=src, x=0, y=0, resize_source=True)
    grown = F.interpolate(src.samples, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(stretched.samples, grown.expand(2, -1, -1, -1))


def test_latent_blend_mixes_and_resizes_bicubically():
    one, two = latent(1, height=8, width=8), latent(1, height=4, width=4, seed=6)
    (out,) = LatentBlend.execute(None, samples1=one, samples2=two, blend_factor=0.3)
    want = one.samples * 0.3 + resize(two.samples, 8, 8, "bicubic", "center") * 0.7
    torch.testing.assert_close(out.samples, want)


# -- geometry --------------------------------------------------------------------------------------------


def test_rotate_and_flip():
    source = latent(1, height=2, width=3)
    s = source.samples[0, 0]
    (quarter,) = LatentRotate.execute(None, samples=source, rotation="90 degrees")
    assert torch.equal(quarter.samples[0, 0], torch.rot90(s, k=-1))  # 90 degrees clockwise
    (half,) = LatentRotate.execute(None, samples=source, rotation="180 degrees")
    assert torch.equal(half.samples[0, 0], s.flip(0).flip(1))
    (three,) = LatentRotate.execute(None, samples=source, rotation="270 degrees")
    assert torch.equal(three.samples[0, 0], torch.rot90(s, k=1))
    (none,) = LatentRotate.execute(None, samples=source, rotation="none")
    assert torch.equal(none.samples, source.samples)
    (vertical,) = LatentFlip.execute(None, samples=source, flip_method="x-axis: vertically")
    assert torch.equal(vertical.samples[0, 0], s.flip(0))
    (horizontal,) = LatentFlip.execute(None, samples=source, flip_method="y-axis: horizontally")
    assert torch.equal(horizontal.samples[0, 0], s.flip(1))


def test_crop_in_pixels_keeps_at_least_8_latent_pixels():
    source = latent(1, height=20, width=16)
    (out,) = LatentCrop.execute(None, samples=source, width=64, height=80, x=16, y=32)
    assert torch.equal(out.samples, source.samples[..., 4:14, 2:10])
    (clamped,) = LatentCrop.execute(None, samples=source, width=64, height=64, x=1000, y=1000)
    assert torch.equal(clamped.samples, source.samples[..., 12:20, 8:16])
