"""The analytic classifier reads real renders right, at every size, position, rotation and resolution."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from nodes.sd.shapes import COLOURS, HORIZONTAL, SHAPES, SIZES, VERTICAL, ShapeSpec, render, spec_from_seed
from training.classifier import border_band, classify, shape_from_mask


def _check(spec: ShapeSpec, image) -> None:
    result = classify(image)
    assert (result.fg, result.bg, result.shape) == (spec.fg, spec.bg, spec.shape), spec


@pytest.mark.parametrize("held_out", [False, True])
def test_real_renders_score_100_percent(held_out):
    for seed in range(60):
        spec = spec_from_seed(seed, held_out=held_out)
        _check(spec, render(spec)[0])


@pytest.mark.parametrize("resolution", [96, 192])
def test_other_resolutions(resolution):
    for seed in range(100, 125):
        spec = spec_from_seed(seed)
        _check(spec, render(spec, resolution)[0])


def test_every_shape_size_position_and_extreme_rotation():
    """Size bins x corner and centre positions x rotation extremes, at the smallest radius of each size bin."""
    colours = itertools.cycle(itertools.permutations(COLOURS, 2))
    places = [("left", "top"), ("right", "top"), ("center", "middle"), ("left", "bottom"), ("right", "bottom")]
    for shape, size, rotation in itertools.product(SHAPES, SIZES, (-20.0, 20.0)):
        radius = SIZES[size][0]
        for horizontal, vertical in places:
            low, high = radius + 0.07, 1 - radius - 0.07
            cx = min(max(sum(HORIZONTAL[horizontal]) / 2, low), high)
            cy = min(max(sum(VERTICAL[vertical]) / 2, low), high)
            fg, bg = next(colours)
            spec = ShapeSpec(shape, fg, bg, size, horizontal, vertical, cx, cy, radius, rotation)
            _check(spec, render(spec)[0])


def test_reads_size_and_position():
    hits = 0
    for seed in range(80):
        spec = spec_from_seed(seed)
        result = classify(render(spec)[0])
        hits += (result.size, result.horizontal, result.vertical) == (spec.size, spec.horizontal, spec.vertical)
    assert hits == 80


def test_survives_blur_noise_and_a_dark_frame():
    """What VAE reconstructions and diffusion samples do to an image: soft edges, grain, a dark border."""
    rng = np.random.default_rng(0)
    for seed in range(40):
        spec = spec_from_seed(seed)
        image = render(spec)[0].filter(ImageFilter.GaussianBlur(1.5))
        pixels = np.asarray(image).astype(float) + rng.normal(0, 10, (128, 128, 3))
        pixels[:3], pixels[-3:], pixels[:, :3], pixels[:, -3:] = 20, 20, 20, 20
        _check(spec, Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


def test_shape_from_ground_truth_masks():
    for seed in range(40):
        spec = spec_from_seed(seed)
        mask = np.asarray(render(spec)[1]) >= 128
        assert shape_from_mask(mask)[0] == spec.shape


def test_plain_image_has_no_shape():
    result = classify(Image.new("RGB", (128, 128), COLOURS["green"]))
    assert (result.bg, result.fg, result.shape) == ("green", "none", "none")


def test_accepts_arrays_in_both_ranges():
    spec = spec_from_seed(3)
    array = np.asarray(render(spec)[0])
    assert classify(array) == classify(array / 255.0) == classify(render(spec)[0])
    with pytest.raises(ValueError, match="H, W, 3"):
        classify(array[..., 0])


def test_border_band_stays_clear_of_shapes():
    band = border_band(128, 128)
    for seed in random.Random(0).sample(range(10_000), 50):
        assert not (np.asarray(render(spec_from_seed(seed))[1])[band] > 0).any()


def test_background_texture_tells_striped_renders_from_plain_ones():
    from nodes.sd.shapes import render_striped, sample_spec
    from training.adapter_eval import background_texture, iou, shape_mask

    rng = random.Random(8)
    for _ in range(10):
        spec = sample_spec(rng)
        plain, mask, _ = render(spec)
        assert background_texture(plain) < 0.5  # flat colour: nothing but the shape's edge, which is left out
        assert background_texture(render_striped(spec)[0]) > 2.0  # bands of the least contrast (green) give 2.8
        assert iou(shape_mask(plain), np.asarray(mask) >= 128) > 0.9
