"""Canvas and batch nodes against ComfyUI's rules, on tiny pictures whose pixels say where they came from."""

import pytest
import torch

from nodes.image import (EmptyImage, GetImageSize, ImageAddNoise, ImageBatch, ImageCrop, ImageFlip, ImageFromBatch,
                         ImageInvert, ImagePadForOutpaint, ImageRotate, ImageScaleToMaxDimension,
                         ImageScaleToTotalPixels, ImageStitch, RepeatImageBatch, ResizeAndPadImage)


def coordinates(batch=1, height=4, width=6):
    """Pixel (b, y, x) holds (y / 10, x / 10, b / 10): every value names its position."""
    b, y, x = torch.meshgrid(torch.arange(batch), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([y, x, b], dim=-1).float() / 10


def test_crop_takes_the_window_and_keeps_the_corner_inside():
    image = coordinates(height=5, width=8)
    (out,) = ImageCrop.execute(None, image=image, width=3, height=2, x=4, y=1)
    assert out.shape == (1, 2, 3, 3) and torch.equal(out, image[:, 1:3, 4:7])
    (edge,) = ImageCrop.execute(None, image=image, width=512, height=512, x=100, y=100)
    assert torch.equal(edge, image[:, 4:, 7:])  # corner clamped to the last pixel, window cut at the edge


def test_rotate_turns_clockwise_and_flip_mirrors():
    image = coordinates(height=2, width=3)
    (quarter,) = ImageRotate.execute(None, image=image, rotation="90 degrees")
    assert quarter.shape == (1, 3, 2, 3)
    # clockwise: the old bottom-left corner (y=1, x=0) becomes the new top-left
    assert torch.equal(quarter[0, 0, 0], image[0, 1, 0]) and torch.equal(quarter[0, 0, 1], image[0, 0, 0])
    (half,) = ImageRotate.execute(None, image=image, rotation="180 degrees")
    assert torch.equal(half, image.flip(1).flip(2))
    (three,) = ImageRotate.execute(None, image=image, rotation="270 degrees")
    assert torch.equal(three[0, 0, 0], image[0, 0, 2])
    assert torch.equal(ImageRotate.execute(None, image=image, rotation="none")[0], image)
    (upside,) = ImageFlip.execute(None, image=image, flip_method="x-axis: vertically")
    (mirror,) = ImageFlip.execute(None, image=image, flip_method="y-axis: horizontally")
    assert torch.equal(upside[0, 0], image[0, 1]) and torch.equal(mirror[0, :, 0], image[0, :, 2])


def test_stitch_matches_sizes_with_lanczos_and_puts_an_even_spacer_between():
    left = torch.zeros(1, 8, 8, 3)
    right = torch.ones(2, 4, 6, 3)
    (out,) = ImageStitch.execute(None, image1=left, direction="right", match_image_size=True, spacing_width=3,
                                 spacing_color="red", image2=right)
    # batch extended to 2 by repeating image1's last picture; image2 resized to height 8, width int(8 * 6 / 4) = 12
    assert out.shape == (2, 8, 8 + 4 + 12, 3)
    assert torch.equal(out[:, :, :8], torch.zeros(2, 8, 8, 3))
    assert torch.equal(out[0, 0, 8], torch.tensor([1.0, 0.0, 0.0]))  # spacer rounded up to 4 columns of red
    assert torch.equal(out[:, :, 8:12], torch.tensor([1.0, 0.0, 0.0]).expand(2, 8, 4, 3))
    assert torch.allclose(out[:, :, 12:], torch.ones(2, 8, 12, 3), atol=1 / 255)
    (up,) = ImageStitch.execute(None, image1=left, direction="up", match_image_size=True, spacing_width=0,
                                spacing_color="white", image2=right)
    # vertical: image2 resized to width 8, height int(8 / 1.5) = 5, and placed above
    assert up.shape == (2, 13, 8, 3) and up[:, :5].min() > 0.99 and up[:, 5:].max() == 0
    assert torch.equal(ImageStitch.execute(None, image1=left, direction="left", match_image_size=True,
                                           spacing_width=0, spacing_color="white")[0], left)


def test_stitch_without_matching_pads_centred_and_evens_out_alpha():
    tall = torch.full((1, 6, 2, 4), 0.25)  # RGBA
    short = torch.full((1, 3, 2, 3), 0.75)  # RGB
    (out,) = ImageStitch.execute(None, image1=tall, direction="left", match_image_size=False, spacing_width=0,
                                 spacing_color="white", image2=short)
    assert out.shape == (1, 6, 4, 4)
    # image2 (left) padded from 3 to 6 rows: one above, two below, with white; its alpha added as 1
    assert torch.equal(out[0, :, :2, 0], torch.tensor([1, 0.75, 0.75, 0.75, 1, 1]).view(6, 1).expand(6, 2))
    assert out[0, 1:4, :2, 3].eq(1).all() and torch.equal(out[:, :, 2:], tall)
    (black,) = ImageStitch.execute(None, image1=tall[..., :3], direction="right", match_image_size=False,
                                   spacing_width=0, spacing_color="green", image2=short)
    assert black[0, 0, 2].eq(0).all()  # a coloured spacing pads with black


def test_resize_and_pad_fits_inside_and_centres():
    image = torch.ones(1, 10, 20, 3)
    (out,) = ResizeAndPadImage.execute(None, image=image, target_width=8, target_height=8, padding_color="black",
                                       interpolation="area")
    # scale min(8/20, 8/10) = 0.4 -> 8 x 4, centred vertically with offset (8 - 4) // 2 = 2
    assert out.shape == (1, 8, 8, 3)
    assert out[:, 2:6].eq(1).all() and out[:, :2].eq(0).all() and out[:, 6:].eq(0).all()
    (white,) = ResizeAndPadImage.execute(None, image=torch.zeros(1, 7, 3, 3), target_width=5, target_height=5,
                                         padding_color="white", interpolation="nearest-exact")
    # scale 5/7: int(3 * 5/7) = 2 columns, offset (5 - 2) // 2 = 1
    assert white[0, :, 1:3].eq(0).all() and white[0, :, 0].eq(1).all() and white[0, :, 3:].eq(1).all()


def test_scale_to_max_dimension_and_total_pixels_keep_the_aspect_ratio():
    (out,) = ImageScaleToMaxDimension.execute(None, image=torch.rand(1, 30, 20, 3), upscale_method="bilinear",
                                              largest_size=12)
    assert out.shape == (1, 12, 8, 3)
    (square,) = ImageScaleToMaxDimension.execute(None, image=torch.rand(1, 5, 5, 3), upscale_method="area",
                                                 largest_size=7)
    assert square.shape == (1, 7, 7, 3)
    (total,) = ImageScaleToTotalPixels.execute(None, image=torch.rand(1, 30, 20, 3), upscale_method="area",
                                               megapixels=0.01)
    scale = (int(0.01 * 1024 * 1024) / 600) ** 0.5
    assert total.shape == (1, round(30 * scale), round(20 * scale), 3)


def comfy_outpaint_mask(h, w, left, top, right, bottom, feathering):
    """ComfyUI's ImagePadForOutpaint mask, pixel by pixel as its loop states it."""
    mask = torch.ones(h + top + bottom, w + left + right)
    inner = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                d = min(i if top else h, h - i if bottom else h, j if left else w, w - j if right else w)
                if d < feathering:
                    inner[i, j] = ((feathering - d) / feathering) ** 2
    mask[top: top + h, left: left + w] = inner
    return mask


@pytest.mark.parametrize("sides", [(8, 0, 16, 0), (0, 8, 0, 8), (8, 8, 8, 8), (0, 0, 0, 0)])
def test_outpaint_mask_matches_comfyui_loop(sides):
    left, top, right, bottom = sides
    image = torch.rand(1, 20, 24, 3)
    padded, mask = ImagePadForOutpaint.execute(None, image=image, left=left, top=top, right=right, bottom=bottom,
                                               feathering=6)
    assert torch.equal(padded[:, top: top + 20, left: left + 24], image) and padded.shape == (1, 20 + top + bottom,
                                                                                              24 + left + right, 3)
    assert torch.allclose(mask[0], comfy_outpaint_mask(20, 24, left, top, right, bottom, 6))


def test_invert_empty_and_size():
    image = torch.rand(2, 3, 4, 3)
    assert torch.equal(ImageInvert.execute(None, image=image)[0], 1.0 - image)
    (empty,) = EmptyImage.execute(None, width=5, height=3, batch_size=2, color=0xFF8000)
    assert empty.shape == (2, 3, 5, 3)
    assert torch.equal(empty[1, 2, 4], torch.tensor([1.0, 128 / 255, 0.0]))
    assert GetImageSize.execute(None, image=image) == (4, 3, 2)


def test_batch_resizes_the_second_and_adds_an_opaque_alpha():
    rgb = torch.rand(1, 4, 4, 3)
    rgba = torch.rand(2, 8, 4, 4)
    (out,) = ImageBatch.execute(None, image1=rgb, image2=rgba)
    # image1 gains alpha 1; image2 (8x4) centre-cropped to 4x4's aspect (rows 2..6) and resized
    assert out.shape == (3, 4, 4, 4) and out[0, ..., 3].eq(1).all() and torch.equal(out[0, ..., :3], rgb[0])
    expected = torch.nn.functional.interpolate(rgba[:, 2:6].movedim(-1, 1), size=(4, 4), mode="bilinear")
    assert torch.allclose(out[1:], expected.movedim(1, -1))


def test_repeat_and_pick_from_batch():
    image = coordinates(batch=3)
    (repeated,) = RepeatImageBatch.execute(None, image=image, amount=2)
    assert repeated.shape[0] == 6 and torch.equal(repeated[3:], image)
    (picked,) = ImageFromBatch.execute(None, image=image, batch_index=1, length=5)
    assert torch.equal(picked, image[1:])  # length clipped to what is left
    (last,) = ImageFromBatch.execute(None, image=image, batch_index=100, length=1)
    assert torch.equal(last, image[2:])


def test_add_noise_is_comfyuis_seeded_gaussian_clipped():
    image = torch.full((1, 4, 5, 3), 0.5)
    (out,) = ImageAddNoise.execute(None, image=image, seed=123, strength=0.3)
    with torch.random.fork_rng():
        torch.manual_seed(123)  # ComfyUI seeds the global generator; the same stream, without touching ours
        expected = torch.clip(image + 0.3 * torch.randn(image.size()), 0.0, 1.0)
    assert torch.equal(out, expected)
    assert not torch.equal(ImageAddNoise.execute(None, image=image, seed=124, strength=0.3)[0], out)
    assert torch.equal(ImageAddNoise.execute(None, image=image, seed=123, strength=0.0)[0], image)
