"""A half-precision VAE whose decode (or encode) overflows is redone in fp32, batch by batch."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

import tiny_models as tm
from nodes.sd.loading.handles import vae_handle
from nodes.sd.types import VaeHandle
from nodes.sd.vae import decode, encode


def _overflowing(part: str) -> torch.nn.Module:
    """A tiny VAE whose `part` (encoder/decoder) input conv outputs up to ~1e5: inf in fp16, harmless in
    fp32, where the GroupNorm that follows scales it back down. Its weights (up to ~3e4) still fit fp16."""
    vae = tm.tiny_vae(0)
    with torch.no_grad():
        getattr(vae, part).conv_in.weight.mul_(5e4)
    return vae


def _half(vae: torch.nn.Module) -> VaeHandle:
    return vae_handle(copy.deepcopy(vae).half(), "cpu", "tiny-fp16.safetensors")


def _latents(count: int) -> torch.Tensor:
    return torch.randn(count, 4, 4, 4, generator=torch.Generator().manual_seed(0))


def test_the_probes_really_overflow_in_fp16_only() -> None:
    decoder, encoder = _overflowing("decoder"), _overflowing("encoder")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        for vae in (decoder, encoder):
            assert all(torch.isfinite(p).all() for p in copy.deepcopy(vae).half().parameters())
        assert not torch.isfinite(copy.deepcopy(decoder).half().decode(_latents(1).half()).sample).all()
        assert torch.isfinite(decoder.decode(_latents(1)).sample).all()
        assert not torch.isfinite(copy.deepcopy(encoder).half().encode(image.half()).latent_dist.mean).all()
        assert torch.isfinite(encoder.encode(image).latent_dist.mean).all()


def test_an_overflowing_decode_is_redone_in_fp32(caplog: pytest.LogCaptureFixture) -> None:
    half = _half(_overflowing("decoder"))
    fp32 = vae_handle(copy.deepcopy(half.vae).float(), "cpu", "reference")  # the same (fp16-rounded) weights
    with caplog.at_level(logging.WARNING, logger="nodes.sd.vae"):
        image = decode(half, _latents(3), batch_size=2)
    assert torch.isfinite(image).all()
    assert torch.equal(image, decode(fp32, _latents(3), batch_size=2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per overflowing batch
    first = "VAE tiny-fp16.safetensors: decoding latents 0..1 in float16 gave inf/NaN values; retrying in fp32"
    assert warnings[0] == first
    assert "decoding latents 2..2" in warnings[1]


def test_the_fp32_copy_comes_from_the_provider_once_per_call() -> None:
    source = _overflowing("decoder")
    calls = []

    def upcast() -> torch.nn.Module:
        calls.append(1)
        return source  # e.g. a model manager's cached fp32 original: not the fp16-rounded weights

    image = decode(_half(source), _latents(3), batch_size=1, upcast=upcast)
    assert calls == [1]
    assert torch.equal(image, decode(vae_handle(source, "cpu", "fp32"), _latents(3), batch_size=1))


def test_a_finite_half_decode_never_upcasts(caplog: pytest.LogCaptureFixture) -> None:
    half = _half(tm.tiny_vae(0))

    def upcast() -> torch.nn.Module:
        raise AssertionError("upcast asked for although fp16 was finite")

    with caplog.at_level(logging.WARNING, logger="nodes.sd.vae"):
        image = decode(half, _latents(2), upcast=upcast)
        latents = encode(half, image, upcast=upcast)
    assert torch.isfinite(image).all() and torch.isfinite(latents).all()
    assert not caplog.records
    with torch.no_grad():  # and it really ran in half precision
        pixels = half.vae.decode(_latents(2).half() / half.scaling_factor).sample
    assert torch.equal(image, ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))


def test_an_overflowing_encode_is_redone_in_fp32(caplog: pytest.LogCaptureFixture) -> None:
    half = _half(_overflowing("encoder"))
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.WARNING, logger="nodes.sd.vae"):
        latents = encode(half, images)
    assert torch.isfinite(latents).all()
    assert torch.equal(latents, encode(vae_handle(copy.deepcopy(half.vae).float(), "cpu", "ref"), images))
    assert any("encoding images 0..1 in float16 gave inf/NaN values; retrying in fp32" in r.getMessage()
               for r in caplog.records)


def test_an_fp32_vae_is_never_retried(caplog: pytest.LogCaptureFixture) -> None:
    source = _overflowing("decoder")
    with torch.no_grad():
        source.decoder.conv_in.weight.mul_(1e40)  # past fp32's range too: nothing better to retry with
    with caplog.at_level(logging.WARNING, logger="nodes.sd.vae"):
        image = decode(vae_handle(source, "cpu", "fp32"), _latents(1), upcast=lambda: pytest.fail("upcast on fp32"))
    assert torch.isnan(image).any() and not caplog.records


def test_a_managed_vae_keeps_its_fp32_copy_in_the_model_manager() -> None:
    from nodegraph.models import ModelManager

    manager = ModelManager()
    module = copy.deepcopy(_overflowing("decoder")).half()
    ref = manager.ref("vae", lambda device: module, name="tiny VAE")
    half = vae_handle(ref, "cpu", "tiny-fp16.safetensors")
    first = decode(half, _latents(1))
    assert torch.isfinite(first).all() and manager.loads == 2  # the VAE, then its fp32 copy
    assert torch.equal(decode(half, _latents(1)), first) and manager.loads == 2  # the copy is reused
    names = {m["name"]: m for m in manager.stats()["models"]}
    assert names["tiny VAE as fp32"]["derived"] and names["tiny VAE as fp32"]["nbytes"] == 2 * names["tiny VAE"]["nbytes"]
    manager.unload(ref)
    assert manager.loaded_bytes() == 0  # the copy goes with its base
