"""Conditioning that says where, when and how strongly an entry acts: what each node puts on the entries, and
proof that calc_cond_batch honours it, on a fake UNet that records its calls and predicts each entry's own
constant (so the weighted average is readable off the output), plus one run of the embedded model."""

from __future__ import annotations

import math

import pytest
import torch

from nodes.conditioning import (ConditioningConcat, ConditioningSetArea, ConditioningSetAreaPercentage,
                                ConditioningSetAreaStrength, ConditioningSetMask, ConditioningSetTimestepRange)
from nodes.sd.cond_regions import percent_to_sigma
from nodes.sd.denoisers import EpsDenoiser, calc_cond_batch
from nodes.sd.schedules import model_sigmas, scaled_linear_alphas_cumprod
from nodes.sd.types import CondItem
from recording_unet import RecordingUNet

ALPHAS = scaled_linear_alphas_cumprod()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine's 2 cores are shared; more threads than free cores makes small convolutions crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def entry(value: float, **fields) -> CondItem:
    return CondItem(torch.full((1, 3, 8), float(value)), **fields)


def evaluate(items, *, sigma: float = 1.0, size: tuple[int, int] = (8, 8), in_channels: int = 4):
    """x0 of one conditioning set at x = 0, divided by -sigma: the weighted average of the entries' values."""
    unet = RecordingUNet(in_channels)
    denoiser = EpsDenoiser(unet, ALPHAS)
    x = torch.zeros(1, 4, *size)
    (out,) = calc_cond_batch(denoiser, [tuple(items)], x, torch.tensor([sigma]))
    return out / -sigma, unet.calls


# -- what the nodes put on the entries ----------------------------------------------------------------


def test_concat_appends_the_first_source_entrys_tokens():
    to = (entry(1), CondItem(torch.full((1, 2, 8), 2.0), strength=0.5))
    (out,) = ConditioningConcat.execute(None, conditioning_to=to, conditioning_from=(entry(7), entry(9)))
    assert [tuple(item.embeds.shape) for item in out] == [(1, 6, 8), (1, 5, 8)]
    assert out[0].embeds[0, 3:].eq(7).all() and out[1].embeds[0, :2].eq(2).all() and out[1].strength == 0.5
    with pytest.raises(ValueError, match="empty"):
        ConditioningConcat.execute(None, conditioning_to=to, conditioning_from=())


def test_area_nodes_set_fraction_strength_mask_and_range():
    (pct,) = ConditioningSetAreaPercentage.execute(None, conditioning=(entry(1),), width=0.5, height=0.25, x=0.5,
                                                   y=0.75, strength=2.0)
    assert pct[0].area_fraction == (0.25, 0.5, 0.75, 0.5) and pct[0].area is None and pct[0].strength == 2.0
    (strong,) = ConditioningSetAreaStrength.execute(None, conditioning=pct, strength=0.3)
    assert strong[0].strength == 0.3 and strong[0].area_fraction == pct[0].area_fraction
    mask = torch.zeros(16, 16)
    (masked,) = ConditioningSetMask.execute(None, conditioning=(entry(1),), mask=mask, strength=1.5,
                                            set_cond_area="mask bounds")
    assert masked[0].mask.shape == (1, 16, 16) and masked[0].mask_bounds and masked[0].mask_strength == 1.5
    (ranged,) = ConditioningSetTimestepRange.execute(None, conditioning=(entry(1),), start=0.2, end=0.7)
    assert ranged[0].timestep_range == (0.2, 0.7)
    (area,) = ConditioningSetArea.execute(None, conditioning=masked, width=64, height=64, x=0, y=0, strength=1.0)
    assert area[0].area == (8, 8, 0, 0) and not area[0].mask_bounds  # ComfyUI: set_area_to_bounds False


# -- what the denoiser does with them ---------------------------------------------------------------


def test_strength_weights_the_average():
    out, _ = evaluate([entry(1), entry(4, strength=2.0)])
    torch.testing.assert_close(out, torch.full_like(out, (1 + 2 * 4) / 3))


def test_mask_weights_each_pixel_without_feathering():
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    mask[:, 0, 0] = 0.5
    out, calls = evaluate([entry(1), entry(3, mask=mask, mask_strength=2.0, strength=1.5)])
    weight = mask[0] * 2.0 * 1.5
    want = (1 + 3 * weight) / (1 + weight)
    torch.testing.assert_close(out[0, 0], want)
    assert all(call["sample"].shape[-2:] == (8, 8) for call in calls)


def test_mask_is_resized_to_the_latent_bilinearly():
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0  # right half, at image resolution
    out, _ = evaluate([entry(1), entry(5, mask=mask)])
    small = torch.nn.functional.interpolate(mask[:, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out[0, 0], (1 + 5 * small) / (1 + small))


def test_mask_bounds_evaluate_the_entry_on_the_mask_box_only():
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:5, 3:7] = 1.0
    out, calls = evaluate([entry(1), entry(3, mask=mask, mask_bounds=True)])
    assert sorted(tuple(call["sample"].shape[-2:]) for call in calls) == [(3, 4), (8, 8)]
    want = torch.ones(8, 8)
    want[2:5, 3:7] = 2.0
    torch.testing.assert_close(out[0, 0], want)


def test_percentage_area_is_rounded_to_latent_pixels_and_feathered_like_comfyui():
    item = entry(3, area_fraction=(0.5, 0.5, 0.5, 0.25))  # h, w, y, x of a 16x16 latent: (8, 8, 8, 4)
    out, calls = evaluate([entry(1), item], size=(16, 16))
    assert sorted(tuple(call["sample"].shape[-2:]) for call in calls) == [(8, 8), (16, 16)]
    weight = torch.ones(8, 8)  # ramps of min(8, 8 // 4) = 2 pixels, (t + 1) / 2, on edges inside the image:
    weight[0] *= 0.5  # top (y = 8); the bottom touches the image edge
    weight[:, 0] *= 0.5  # left (x = 4)
    weight[:, 7] *= 0.5  # right (4 + 8 < 16)
    want = torch.ones(16, 16)
    want[8:, 4:12] = (1 + 3 * weight) / (1 + weight)
    torch.testing.assert_close(out[0, 0], want)


def comfy_percent_to_sigma(percent: float) -> float:
    """ComfyUI's ModelSamplingDiscrete.percent_to_sigma, written out: log-linear sigma at timestep (1-p) * 999."""
    sigmas = model_sigmas(ALPHAS).double()
    t = (1.0 - percent) * 999.0
    low = math.floor(t)
    frac = t - low
    return math.exp((1 - frac) * math.log(sigmas[low]) + frac * math.log(sigmas[min(low + 1, 999)]))


def test_timestep_range_maps_percent_to_sigma_like_comfyui():
    sigmas = model_sigmas(ALPHAS)
    for percent in (0.1, 0.25, 0.5, 0.9):
        assert percent_to_sigma(percent, sigmas) == pytest.approx(comfy_percent_to_sigma(percent), rel=1e-9)
    assert percent_to_sigma(0.0, sigmas) == math.inf and percent_to_sigma(1.0, sigmas) == 0.0


def test_timestep_range_evaluates_the_entry_only_while_sigma_is_inside():
    late = entry(5, timestep_range=(0.5, 1.0))  # the second half of sampling: sigma <= sigma(0.5)
    early = entry(9, timestep_range=(0.0, 0.5))
    boundary = comfy_percent_to_sigma(0.5)
    high, _ = evaluate([entry(1), late, early], sigma=boundary * 1.01)
    low, calls = evaluate([entry(1), late, early], sigma=boundary * 0.99)
    torch.testing.assert_close(high, torch.full_like(high, (1 + 9) / 2))
    torch.testing.assert_close(low, torch.full_like(low, (1 + 5) / 2))
    assert len(calls) == 2  # the inactive group is not evaluated at all
    nothing, _ = evaluate([late], sigma=boundary * 2)
    assert nothing.eq(0).all()  # no entry applies: x0 is 0, as in ComfyUI


# -- one embedded-model run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd.loading import load_checkpoint

    if not EMBEDDED_PATH.is_file():
        pytest.skip("the embedded model's weights are not built yet")
    return load_checkpoint(EMBEDDED_PATH)


def test_timestep_ranges_switch_prompts_mid_run_on_the_embedded_model(embedded):
    """A prompt switched in halfway (ConditioningSetTimestepRange 0.5..1) decides the flat background colour of
    this model's pictures, whichever prompt ran first; a full range 0..1 gives the plain prompt's picture."""
    from nodes.sd.ksampler import sample
    from nodes.sd.text import encode
    from nodes.sd.types import Latent
    from nodes.sd.vae import decode

    green = (encode(embedded.clip, "a red circle on a green background"),)
    blue = (encode(embedded.clip, "a red circle on a blue background"),)
    negative = (encode(embedded.clip, ""),)

    def run(positive):
        out = sample(embedded.model, seed=2, steps=10, cfg=6.0, sampler_name="euler", scheduler="normal",
                     positive=positive, negative=negative, latent=Latent(torch.zeros(1, 4, 16, 16)))
        return decode(embedded.vae, out.samples)[0]

    def switched(first, second):
        (early,) = ConditioningSetTimestepRange.execute(None, conditioning=first, start=0.0, end=0.5)
        (late,) = ConditioningSetTimestepRange.execute(None, conditioning=second, start=0.5, end=1.0)
        return run(early + late)

    def border_rgb(image):  # the top rows: background, away from the centred shape
        return image[:12].mean(dim=(0, 1))

    ends_blue, ends_green = border_rgb(switched(green, blue)), border_rgb(switched(blue, green))
    assert ends_blue[2] > ends_blue[1] + 0.3, ends_blue
    assert ends_green[1] > ends_green[2] + 0.3, ends_green
    (whole,) = ConditioningSetTimestepRange.execute(None, conditioning=green, start=0.0, end=1.0)
    # not bit for bit: the ranged entry runs in its own UNet batch, apart from the negative
    torch.testing.assert_close(run(whole), run(green), rtol=0, atol=1e-4)
