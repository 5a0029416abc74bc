"""Mask nodes compute what ComfyUI's do: each checked against the formula on small tensors."""

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image

from nodegraph import NodeContext
from nodegraph.environment import Environment
from nodes.mask import (CropMask, FeatherMask, GrowMask, ImageColorToMask, ImageCompositeMasked, ImageToMask,
                        InvertMask, MaskComposite, MaskPreview, MaskToImage, SolidMask, ThresholdMask)

CTX = NodeContext("1", "Test", None)


def test_mask_to_image_and_back_per_channel():
    mask = torch.rand(2, 3, 4)
    image = MaskToImage.execute(CTX, mask=mask)[0]
    assert image.shape == (2, 3, 4, 3) and all(torch.equal(image[..., c], mask) for c in range(3))
    assert MaskToImage.execute(CTX, mask=mask[0])[0].shape == (1, 3, 4, 3)  # a single [H,W] mask
    rgba = torch.rand(2, 3, 4, 4)
    for index, channel in enumerate(("red", "green", "blue", "alpha")):
        assert torch.equal(ImageToMask.execute(CTX, image=rgba, channel=channel)[0], rgba[..., index])
    with pytest.raises(ValueError, match="ImageToMask input 'channel'.*3 channels"):
        ImageToMask.execute(CTX, image=rgba[..., :3], channel="alpha")


def test_image_color_to_mask_matches_exact_8bit_colours_only():
    image = torch.zeros(1, 2, 3, 3)
    image[0, 0, 0] = torch.tensor([0x12, 0x34, 0x56]) / 255.0
    image[0, 0, 1] = torch.tensor([0x12, 0x34, 0x57]) / 255.0  # blue off by one
    image[0, 1, 2] = torch.tensor([0x12 + 0.4, 0x34 - 0.4, 0x56]) / 255.0  # rounds to the colour
    mask = ImageColorToMask.execute(CTX, image=image, color=0x123456)[0]
    expected = torch.zeros(1, 2, 3)
    expected[0, 0, 0] = expected[0, 1, 2] = 1.0
    assert torch.equal(mask, expected)
    white = ImageColorToMask.execute(CTX, image=torch.full((1, 2, 2, 3), 1.5), color=0xFFFFFF)[0]
    assert white.eq(1).all()  # values above 1 are clamped before comparing


def test_solid_invert_threshold():
    solid = SolidMask.execute(CTX, value=0.25, width=5, height=3)[0]
    assert solid.shape == (1, 3, 5) and solid.eq(0.25).all() and solid.dtype == torch.float32
    mask = torch.tensor([[[0.0, 0.5, 0.51, 1.0]]])
    assert torch.equal(InvertMask.execute(CTX, mask=mask)[0], 1.0 - mask)
    assert torch.equal(ThresholdMask.execute(CTX, mask=mask, value=0.5)[0], torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))


def test_crop_mask_bounds():
    mask = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    crop = CropMask.execute(CTX, mask=mask, x=1, y=2, width=3, height=5)[0]
    assert torch.equal(crop, mask[:, 2:4, 1:4])  # the height is cut at the bottom edge
    assert CropMask.execute(CTX, mask=mask[0], x=5, y=0, width=512, height=512)[0].shape == (1, 4, 1)


def _composite_reference(dest, src, x, y, op):
    """ComfyUI's MaskComposite, pixel by pixel."""
    out = dest.clone()
    for b in range(out.shape[0]):
        for i in range(src.shape[-2]):
            for j in range(src.shape[-1]):
                if y + i >= out.shape[-2] or x + j >= out.shape[-1]:
                    continue
                d, s = float(dest[b, y + i, x + j]), float(src[b if src.shape[0] > 1 else 0, i, j])
                value = {"multiply": d * s, "add": d + s, "subtract": d - s,
                         "and": float(round(d) and round(s)), "or": float(round(d) or round(s)),
                         "xor": float(bool(round(d)) != bool(round(s)))}[op]
                out[b, y + i, x + j] = value
    return out.clamp(0, 1)


@pytest.mark.parametrize("op", ["multiply", "add", "subtract", "and", "or", "xor"])
def test_mask_composite_operations(op):
    gen = torch.Generator().manual_seed(3)
    dest, src = torch.rand(2, 5, 6, generator=gen), torch.rand(1, 3, 4, generator=gen)
    got = MaskComposite.execute(CTX, destination=dest, source=src, x=3, y=1, operation=op)[0]
    assert torch.allclose(got, _composite_reference(dest, src, 3, 1, op), atol=1e-6)
    assert torch.equal(dest, dest.clone())  # the input is left alone
    outside = MaskComposite.execute(CTX, destination=dest, source=src, x=50, y=0, operation=op)[0]
    assert torch.equal(outside, dest)


def _feather_reference(mask, left, top, right, bottom):
    """ComfyUI's FeatherMask loop, including its trailing-edge indexing (-0 is the first column)."""
    out = mask.clone()
    left, right = min(left, out.shape[-1]), min(right, out.shape[-1])
    top, bottom = min(top, out.shape[-2]), min(bottom, out.shape[-2])
    for i in range(left):
        out[:, :, i] *= (i + 1.0) / left
    for i in range(right):
        out[:, :, -i] *= (i + 1) / right
    for i in range(top):
        out[:, i, :] *= (i + 1) / top
    for i in range(bottom):
        out[:, -i, :] *= (i + 1) / bottom
    return out


@pytest.mark.parametrize("edges", [(3, 0, 0, 0), (0, 2, 0, 4), (2, 1, 3, 2), (20, 0, 1, 30)])
def test_feather_mask_linear_ramps(edges):
    mask = torch.ones(2, 6, 8)
    got = FeatherMask.execute(CTX, mask=mask, left=edges[0], top=edges[1], right=edges[2], bottom=edges[3])[0]
    assert torch.allclose(got, _feather_reference(mask, *edges), atol=1e-6)
    if edges == (3, 0, 0, 0):
        assert torch.allclose(got[0, 0, :4], torch.tensor([1 / 3, 2 / 3, 1.0, 1.0]))


@pytest.mark.parametrize("expand", [2, -1, 0])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_matches_scipy_grey_morphology(expand, tapered):
    gen = torch.Generator().manual_seed(5)
    mask = (torch.rand(2, 9, 11, generator=gen) > 0.8).float() * torch.rand(2, 9, 11, generator=gen)
    mask[1, 2:7, 3:9] = 1.0
    got = GrowMask.execute(CTX, mask=mask, expand=expand, tapered_corners=tapered)[0]
    c = 0 if tapered else 1
    footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    expected = []
    for m in mask.numpy():
        for _ in range(abs(expand)):
            op = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
            m = op(m, footprint=footprint)
        expected.append(torch.from_numpy(m))
    assert torch.equal(got, torch.stack(expected))


def test_grow_mask_tapered_corners_make_a_diamond():
    point = torch.zeros(1, 7, 7)
    point[0, 3, 3] = 1.0
    diamond = GrowMask.execute(CTX, mask=point, expand=2, tapered_corners=True)[0][0]
    square = GrowMask.execute(CTX, mask=point, expand=2, tapered_corners=False)[0][0]
    ys, xs = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    assert torch.equal(diamond, ((ys - 3).abs() + (xs - 3).abs() <= 2).float())
    assert torch.equal(square, (torch.maximum((ys - 3).abs(), (xs - 3).abs()) <= 2).float())


def _paste_reference(dest, src, x, y, mask):
    """out = m * source + (1 - m) * destination over the pasted area, pixel by pixel."""
    out = dest.clone()
    for b in range(dest.shape[0]):
        for i in range(src.shape[1]):
            for j in range(src.shape[2]):
                if y + i < dest.shape[1] and x + j < dest.shape[2]:
                    m = 1.0 if mask is None else float(mask[b if mask.shape[0] > 1 else 0, i, j])
                    out[b, y + i, x + j] = m * src[b % src.shape[0], i, j] + (1 - m) * dest[b, y + i, x + j]
    return out


def test_image_composite_masked_offsets_and_mask():
    gen = torch.Generator().manual_seed(7)
    dest, src = torch.rand(2, 6, 7, 3, generator=gen), torch.rand(1, 4, 5, 3, generator=gen)
    mask = torch.rand(1, 4, 5, generator=gen)
    got = ImageCompositeMasked.execute(CTX, destination=dest, source=src, x=4, y=3, resize_source=False, mask=mask)[0]
    assert torch.allclose(got, _paste_reference(dest, src, 4, 3, mask), atol=1e-6)
    opaque = ImageCompositeMasked.execute(CTX, destination=dest, source=src, x=0, y=0, resize_source=False)[0]
    assert torch.allclose(opaque, _paste_reference(dest, src, 0, 0, None), atol=1e-6)
    assert not torch.equal(got, dest) and dest.shape == got.shape


def test_image_composite_masked_resizes_source_and_mask_bilinearly():
    gen = torch.Generator().manual_seed(8)
    dest, src = torch.rand(1, 8, 8, 3, generator=gen), torch.rand(1, 4, 4, 3, generator=gen)
    mask = torch.rand(1, 2, 2, generator=gen)
    big = F.interpolate(src.movedim(-1, 1), size=(8, 8), mode="bilinear").movedim(1, -1)
    big_mask = F.interpolate(mask[:, None], size=(8, 8), mode="bilinear")[:, 0]
    for x, y in ((0, 0), (3, 2)):  # with an offset the stretched source is cut at the far edges
        got = ImageCompositeMasked.execute(CTX, destination=dest, source=src, x=x, y=y, resize_source=True,
                                           mask=mask)[0]
        assert torch.allclose(got, _paste_reference(dest, big, x, y, big_mask), atol=1e-6)


def test_image_composite_masked_alpha_channels():
    rgb, rgba = torch.rand(1, 3, 3, 3), torch.rand(1, 3, 3, 4)
    onto_rgba = ImageCompositeMasked.execute(CTX, destination=rgba, source=rgb, x=1, y=1, resize_source=False)[0]
    assert onto_rgba.shape == (1, 3, 3, 4) and torch.equal(onto_rgba[0, 1:, 1:, 3], torch.ones(2, 2))
    onto_rgb = ImageCompositeMasked.execute(CTX, destination=rgb, source=rgba, x=0, y=0, resize_source=False)[0]
    assert torch.equal(onto_rgb, rgba[..., :3])


def test_mask_preview_writes_a_grey_png(tmp_path):
    from nodegraph.hooks import RunInfo

    env = Environment(output_dir=tmp_path, input_dir=tmp_path, temp_dir=(tmp_path / "temp").resolve())
    ctx = NodeContext("1", "MaskPreview", env, run=RunInfo(run_id="r", outputs=[], metadata={}))
    mask = torch.zeros(1, 2, 3)
    mask[0, 1, 2] = 1.0
    entry = MaskPreview.execute(ctx, mask=mask).ui["images"][0]
    assert entry["type"] == "temp"
    with Image.open(env.temp_dir / entry["subfolder"] / entry["filename"]) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape == (2, 3, 3) and pixels[1, 2].tolist() == [255, 255, 255] and pixels[0].max() == 0
