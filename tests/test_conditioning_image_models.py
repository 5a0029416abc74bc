"""InpaintModelConditioning and InstructPixToPixConditioning: what they encode (ComfyUI's formulas on a tiny
VAE), and that the denoiser stacks their latents onto the input of 9- and 8-channel UNets (a recording fake)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
from nodes.conditioning import InpaintModelConditioning, InstructPixToPixConditioning
from nodes.sd.denoisers import EpsDenoiser, calc_cond_batch
from nodes.sd.loading.handles import vae_handle
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.types import ConcatLatent, CondItem, VaeHandle
from nodes.sd.vae import encode
from recording_unet import RecordingUNet


@pytest.fixture(scope="module")
def vae() -> VaeHandle:
    return vae_handle(tm.tiny_vae(0), "cpu", "tiny")


def text(value: float) -> CondItem:
    return CondItem(torch.full((1, 3, 8), float(value)))


def test_inpaint_conditioning_follows_comfyuis_formula(vae):
    g = torch.Generator().manual_seed(0)
    pixels, mask = torch.rand(1, 20, 20, 3, generator=g), torch.zeros(1, 10, 10)
    mask[:, 2:6, 3:8] = 1.0
    positive, negative, latent = InpaintModelConditioning.execute(
        None, positive=(text(1),), negative=(text(2), text(3)), vae=vae, pixels=pixels, mask=mask, noise_mask=True)
    # ComfyUI: mask to image size (bilinear), both centre-cropped to multiples of 8, repaint area set to grey
    full = F.interpolate(mask[:, None], size=(20, 20), mode="bilinear", align_corners=False)
    want_mask = full[:, :, 2:18, 2:18]
    image = pixels[:, 2:18, 2:18]
    grey = (image - 0.5) * (1 - want_mask.round()).movedim(1, -1) + 0.5
    concat = positive[0].concat
    assert isinstance(concat, ConcatLatent) and all(item.concat is concat for item in (*positive, *negative))
    torch.testing.assert_close(concat.mask, want_mask)
    torch.testing.assert_close(concat.latent, encode(vae, grey))
    torch.testing.assert_close(latent.samples, encode(vae, image))
    torch.testing.assert_close(latent.noise_mask, want_mask)
    *_, without = InpaintModelConditioning.execute(None, positive=(text(1),), negative=(text(2),), vae=vae,
                                                   pixels=pixels, mask=mask, noise_mask=False)
    assert without.noise_mask is None


def test_ip2p_conditioning_carries_the_unscaled_image_latent(vae):
    pixels = torch.rand(2, 16, 24, 3, generator=torch.Generator().manual_seed(1))
    positive, negative, latent = InstructPixToPixConditioning.execute(None, positive=(text(1),),
                                                                      negative=(text(2),), vae=vae, pixels=pixels)
    with torch.no_grad():
        raw = vae.vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
    torch.testing.assert_close(positive[0].concat.latent, raw, rtol=1e-5, atol=1e-5)
    assert negative[0].concat is positive[0].concat and positive[0].concat.mask is None
    assert latent.samples.shape == (2, 4, 2, 3) and latent.samples.eq(0).all()


def run(items, in_channels: int, size=(8, 8), batch: int = 1):
    unet = RecordingUNet(in_channels)
    x = torch.randn(batch, 4, *size, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([2.0])
    calc_cond_batch(EpsDenoiser(unet, scaled_linear_alphas_cumprod()), [tuple(items)], x, sigma)
    return x, sigma, unet.calls


def test_inpainting_unet_gets_mask_and_masked_latent_stacked_on_its_input():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 8:32] = 1.0
    image_latent = torch.randn(1, 4, 8, 8)
    item = CondItem(torch.ones(1, 3, 8), concat=ConcatLatent(latent=image_latent, mask=mask))
    x, sigma, calls = run([item], in_channels=9, batch=2)
    sample = calls[0]["sample"]
    assert sample.shape == (2, 9, 8, 8)
    torch.testing.assert_close(sample[:, :4], x / (sigma**2 + 1) ** 0.5)  # only the latent is scaled by c_in
    small = F.interpolate(mask, size=(8, 8), mode="bilinear", align_corners=False).round()
    torch.testing.assert_close(sample[:, 4:5], small.expand(2, -1, -1, -1))
    torch.testing.assert_close(sample[:, 5:], image_latent.expand(2, -1, -1, -1))


def test_concat_is_cropped_to_an_entrys_area_and_ignored_by_4_channel_unets():
    image_latent = torch.arange(4 * 64, dtype=torch.float32).reshape(1, 4, 8, 8)
    item = CondItem(torch.ones(1, 3, 8), area=(4, 4, 2, 3), concat=ConcatLatent(latent=image_latent))
    _, _, calls = run([item], in_channels=8)
    torch.testing.assert_close(calls[0]["sample"][:, 4:], image_latent[:, :, 2:6, 3:7])
    _, _, plain = run([item], in_channels=4)
    assert plain[0]["sample"].shape[1] == 4


def test_a_9_channel_unet_without_concat_conditioning_is_named():
    with pytest.raises(ValueError, match="InpaintModelConditioning"):
        run([text(1)], in_channels=9)
