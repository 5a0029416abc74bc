"""The procedural shapes generator: deterministic, captions that describe the picture, held-out set kept out."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nodes.sd.shapes import (
    COLOURS,
    HELD_OUT,
    HORIZONTAL,
    MARGIN,
    SHAPES,
    SIZES,
    VERTICAL,
    ShapeSpec,
    caption,
    render,
    sample_spec,
    spec_for,
    spec_from_seed,
    training_combinations,
)  # fmt: skip


def test_same_seed_same_image_and_caption():
    for seed in (0, 7, 123456):
        a, b = spec_from_seed(seed), spec_from_seed(seed)
        assert a == b and caption(a) == caption(b)
        for x, y in zip(render(a), render(b)):
            assert x.tobytes() == y.tobytes()
    assert spec_from_seed(1) != spec_from_seed(2)


def test_spec_sequence_is_pinned():
    """The data must not drift between library versions: seed 0 is always this picture."""
    spec = spec_from_seed(0)
    assert caption(spec) == "a purple star on a red background"
    assert (spec.size, spec.horizontal, spec.vertical) == ("medium", "left", "middle")


def _bin(value: float, bins: dict[str, tuple[float, float]]) -> str:
    return next(name for name, (a, b) in bins.items() if a <= value <= b)


@pytest.mark.parametrize("seed", range(60))
def test_caption_matches_render(seed):
    spec = spec_from_seed(seed, held_out=seed % 3 == 0)
    image, mask, edges = render(spec)
    pixels, coverage = np.asarray(image).astype(int), np.asarray(mask) / 255.0
    words = caption(spec).split()
    assert words[-2:] == [spec.bg, "background"]
    assert f" {spec.fg} {spec.shape} " in caption(spec)
    inside, outside = coverage == 1.0, coverage == 0.0
    assert (pixels[inside] == COLOURS[spec.fg]).all() and (pixels[outside] == COLOURS[spec.bg]).all()
    margin = int(MARGIN * 128)
    assert not coverage[:margin].any() and not coverage[-margin:].any()
    assert not coverage[:, :margin].any() and not coverage[:, -margin:].any()
    ys, xs = np.nonzero(coverage > 0.5)
    extent = max(xs.max() - xs.min(), ys.max() - ys.min()) / 2 / 128
    assert extent <= spec.radius + 1 / 128
    assert _bin(spec.cx, HORIZONTAL) == spec.horizontal and _bin(spec.cy, VERTICAL) == spec.vertical
    assert SIZES[spec.size][0] <= spec.radius <= SIZES[spec.size][1]
    if spec.mention_size:
        assert spec.size in words
    if spec.mention_position:
        assert any(w in words for w in ("top", "bottom", "left", "right", "center"))
    edge = np.asarray(edges) > 0
    assert edge.any() and set(np.unique(np.asarray(edges))) <= {0, 255}
    hard = coverage >= 0.5
    has_inside, has_outside = np.zeros_like(edge), np.zeros_like(edge)
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            has_inside |= np.roll(np.roll(hard, dy, 0), dx, 1)
            has_outside |= np.roll(np.roll(~hard, dy, 0), dx, 1)
    assert not (edge & ~(has_inside & has_outside)).any()  # edges lie on the outline only


def test_compositional_captions():
    spec = ShapeSpec("star", "red", "orange", "small", "left", "top", 0.25, 0.25, 0.14, 0.0, True, True)
    assert caption(spec) == "a small red star in the top left on an orange background"
    centre = ShapeSpec("ring", "orange", "blue", "large", "center", "middle", 0.5, 0.5, 0.3, 0.0, False, True)
    assert caption(centre) == "an orange ring in the center on a blue background"
    right = ShapeSpec("circle", "red", "blue", "medium", "right", "middle", 0.7, 0.5, 0.2, 0.0, False, True)
    assert caption(right) == "a red circle on the right on a blue background"


def test_held_out_combinations_never_sampled_for_training():
    rng = random.Random(0)
    seen = {sample_spec(rng).combination for _ in range(3000)}
    assert not seen & HELD_OUT
    assert {sample_spec(rng, held_out=True).combination for _ in range(300)} <= HELD_OUT
    training = training_combinations()
    assert len(training) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1) - len(HELD_OUT)
    for shape, fg, bg in HELD_OUT:  # every word of a held-out prompt is taught by other pictures
        assert any(s == shape and f == fg for s, f, _ in training)
        assert any(s == shape and b == bg for s, _, b in training)


def test_vocabulary_is_big_enough():
    assert len(COLOURS) >= 8 and {"circle", "square", "triangle", "star", "ring"} <= set(SHAPES)
    palette = np.array(list(COLOURS.values()), dtype=float)
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=2)
    assert distances[~np.eye(len(palette), dtype=bool)].min() > 80  # colours a classifier cannot confuse


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="unknown shape"):
        spec_for("hexagon", "red", "blue", random.Random(0))
    with pytest.raises(ValueError, match="both 'red'"):
        spec_for("circle", "red", "red", random.Random(0))


def test_render_any_resolution():
    spec = spec_from_seed(5)
    for side in (64, 256):
        image, mask, edges = render(spec, side)
        assert image.size == mask.size == edges.size == (side, side)
        assert image.mode == "RGB" and mask.mode == edges.mode == "L"


def test_striped_style_bands_the_background_and_keeps_the_shape():
    from nodes.sd.shapes import COLOURS, render_striped, stripe_shade, styled_caption

    spec = spec_for("star", "yellow", "blue", random.Random(5))
    plain, mask, edges = render(spec)
    striped, striped_mask, striped_edges = render_striped(spec)
    assert striped_mask.tobytes() == mask.tobytes() and striped_edges.tobytes() == edges.tobytes()
    pixels, inside = np.asarray(striped), np.asarray(mask) == 255
    assert np.array_equal(pixels[inside], np.asarray(plain)[inside])
    outside = pixels[np.asarray(mask) == 0]
    blue, shade = np.array(COLOURS["blue"]), np.array(stripe_shade(COLOURS["blue"]))
    assert 0.35 < (outside == blue).all(axis=1).mean() < 0.65 and 0.35 < (outside == shade).all(axis=1).mean() < 0.65
    assert styled_caption(spec).endswith(", striped")
