"""VAE encode/decode on a tiny random VAE: scaling, shift, layout, batching, cropping."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import tiny_models as tm
from nodes.sd.loading.handles import vae_handle
from nodes.sd.types import VaeHandle
from nodes.sd.vae import decode, downscale_factor, encode


@pytest.fixture(scope="module")
def vae() -> VaeHandle:
    return vae_handle(tm.tiny_vae(0), "cpu", "tiny")


def _images(count: int, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(0))


def test_encode_is_the_scaled_posterior_mean(vae: VaeHandle) -> None:
    images = _images(2)
    latents = encode(vae, images)
    with torch.no_grad():
        mean = vae.vae.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
    assert latents.shape == (2, 4, 4, 4) and latents.dtype == torch.float32 and latents.device.type == "cpu"
    assert torch.equal(latents, mean * 0.18215)
    assert torch.equal(encode(vae, images), latents)  # deterministic: no posterior sampling


def test_decode_unscales_and_returns_image_layout(vae: VaeHandle) -> None:
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    image = decode(vae, latents)
    with torch.no_grad():
        pixels = vae.vae.decode(latents / 0.18215).sample
    assert image.shape == (2, 32, 32, 3) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image, ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))


def test_shift_and_scaling_come_from_the_handle(vae: VaeHandle) -> None:
    images = _images(1)
    shifted = replace(vae, scaling_factor=0.5, shift_factor=0.25)
    base = encode(vae, images) / 0.18215
    assert torch.allclose(encode(shifted, images), (base - 0.25) * 0.5, atol=1e-6)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(decode(shifted, latents), decode(vae, (latents / 0.5 + 0.25) * 0.18215), atol=1e-5)


def test_batches_match_single_items(vae: VaeHandle) -> None:
    images = _images(3)
    together = encode(vae, images, batch_size=2)
    alone = torch.cat([encode(vae, images[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
    decoded = decode(vae, together, batch_size=2)
    assert torch.allclose(decoded, torch.cat([decode(vae, together[i : i + 1]) for i in range(3)]), atol=1e-5)


def test_alpha_dropped_and_odd_sizes_centre_cropped(vae: VaeHandle) -> None:
    assert downscale_factor(vae) == 8
    rgba = torch.cat([_images(1, 36, 42), torch.ones(1, 36, 42, 1)], dim=-1)
    latents = encode(vae, rgba)
    assert latents.shape == (1, 4, 4, 5)
    assert torch.equal(latents, encode(vae, rgba[:, 2:34, 1:41, :3]))


def test_bad_shapes_are_named(vae: VaeHandle) -> None:
    with pytest.raises(ValueError, match=r"IMAGE must be \[B, H, W, 3 or 4\], got shape \(3, 32, 32\)"):
        encode(vae, torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="smaller than the VAE's 8 px"):
        encode(vae, torch.rand(1, 4, 32, 3))
    with pytest.raises(ValueError, match=r"latents must be \[B, C, H, W\]"):
        decode(vae, torch.rand(4, 4, 4))
