"""TAESD: tiny random autoencoders written in the real taesd_encoder/taesd_decoder key layouts load as VAEs
that compute what TAESD's own Sequential architecture computes, are listed by VAELoader only as complete
pairs, and decode step previews."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file
from torch import nn

from nodegraph import NodeContext
from nodegraph.environment import Environment, ModelPaths
from nodes.model_loaders.vae import VAELoader, vae_names
from nodes.sampling.ksampler import step_progress
from nodes.sd.taesd import preview_function
from nodes.sd.vae import decode, encode
from tiny_models import randomize


def taesd_files(tiny: AutoencoderTiny) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """diffusers keys -> TAESD's: `encoder.layers.N.*` -> `N.*`, `decoder.layers.N.*` -> `N+1.*` (clamp at 0)."""
    encoder, decoder = {}, {}
    for key, value in tiny.state_dict().items():
        side, _, index, rest = key.split(".", 3)
        if side == "encoder":
            encoder[f"{index}.{rest}"] = value.clone()
        else:
            decoder[f"{int(index) + 1}.{rest}"] = value.clone()
    return encoder, decoder


def tiny_taesd(seed: int = 0, channels: int = 8) -> AutoencoderTiny:
    model = AutoencoderTiny(encoder_block_out_channels=(channels,) * 4, decoder_block_out_channels=(channels,) * 4)
    return randomize(model, seed)


class _Block(nn.Module):
    """TAESD's block: conv-ReLU-conv-ReLU-conv plus a 1x1 skip when widths differ, then ReLU."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n_out, n_out, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n_out, n_out, 3, padding=1))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def reference_taesd(c: int) -> tuple[nn.Sequential, nn.Sequential]:
    """TAESD's published encoder/decoder Sequentials (the file layout), written from its architecture."""
    def conv(n_in, n_out, **kw):
        return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)

    encoder = nn.Sequential(conv(3, c), _Block(c, c), conv(c, c, stride=2, bias=False), _Block(c, c), _Block(c, c),
                            _Block(c, c), conv(c, c, stride=2, bias=False), _Block(c, c), _Block(c, c), _Block(c, c),
                            conv(c, c, stride=2, bias=False), _Block(c, c), _Block(c, c), _Block(c, c), conv(c, 4))
    decoder = nn.Sequential(_Clamp(), conv(4, c), nn.ReLU(), _Block(c, c), _Block(c, c), _Block(c, c),
                            nn.Upsample(scale_factor=2), conv(c, c, bias=False), _Block(c, c), _Block(c, c),
                            _Block(c, c), nn.Upsample(scale_factor=2), conv(c, c, bias=False), _Block(c, c),
                            _Block(c, c), _Block(c, c), nn.Upsample(scale_factor=2), conv(c, c, bias=False),
                            _Block(c, c), conv(c, 3))
    return encoder, decoder


def _install(root, name: str, tensors: dict[str, torch.Tensor], pickle: bool = False) -> None:
    folder = root / "models" / "vae_approx"
    folder.mkdir(parents=True, exist_ok=True)
    if pickle:
        torch.save(tensors, folder / f"{name}.pth")
    else:
        save_file(tensors, str(folder / f"{name}.safetensors"))


@pytest.fixture
def env(tmp_path):
    return Environment(models=ModelPaths(roots=[tmp_path / "models"]))


def test_key_layout_matches_taesd_published_sequentials():
    """Full-size TAESD (64 channels) in diffusers maps onto exactly the keys of TAESD's own Sequentials."""
    encoder, decoder = taesd_files(AutoencoderTiny())
    ref_encoder, ref_decoder = reference_taesd(64)
    assert set(encoder) == set(ref_encoder.state_dict())
    assert set(decoder) == set(ref_decoder.state_dict())
    # the strided and post-upsample convolutions have no bias, the output convolution has one
    assert "2.bias" not in encoder and "19.bias" in decoder and "7.bias" not in decoder


def test_vae_loader_lists_pairs_and_computes_taesd(env, tmp_path):
    tiny = tiny_taesd(0)
    encoder, decoder = taesd_files(tiny)
    _install(tmp_path, "taesd_encoder", encoder)
    _install(tmp_path, "taesd_decoder", decoder, pickle=True)
    _install(tmp_path, "taesdxl_decoder", decoder)  # no taesdxl encoder: not listed
    assert vae_names(env)[-1:] == ["taesd"]
    (handle,) = VAELoader.execute(NodeContext("1", "VAELoader", env), "taesd")
    assert handle.scaling_factor == pytest.approx(0.18215)

    ref_encoder, ref_decoder = reference_taesd(8)
    ref_encoder.load_state_dict(encoder)
    ref_decoder.load_state_dict(decoder)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 4, 4, generator=g) * 2
    with torch.no_grad():
        expected = ref_decoder(latents).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(decode(handle, latents), expected, atol=1e-5, rtol=1e-5)
    image = torch.rand(1, 32, 40, 3, generator=g)
    with torch.no_grad():
        expected_latents = ref_encoder(image.permute(0, 3, 1, 2))
    torch.testing.assert_close(encode(handle, image), expected_latents, atol=1e-5, rtol=1e-5)


def test_broken_pair_is_refused_with_its_key(env, tmp_path):
    encoder, decoder = taesd_files(tiny_taesd(1))
    del decoder["3.conv.2.weight"]
    _install(tmp_path, "taesd_encoder", encoder)
    _install(tmp_path, "taesd_decoder", decoder)
    with pytest.raises(ValueError, match="3.conv.2.weight"):
        VAELoader.execute(NodeContext("1", "VAELoader", env), "taesd")


def test_previews_decode_with_taesd_when_installed(env, tmp_path):
    _, decoder = taesd_files(tiny_taesd(2))
    _install(tmp_path, "taesdxl_decoder", decoder)
    latents = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(3))
    _, ref_decoder = reference_taesd(8)
    ref_decoder.load_state_dict(decoder)
    preview = preview_function(env, "sdxl")
    with torch.no_grad():
        expected = ref_decoder(latents[:1]).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(preview(latents), expected, atol=1e-5, rtol=1e-5)
    assert preview_function(env, "sd1") is None  # no taesd_decoder: the caller's linear projection
    env.preview_method = "latent2rgb"
    assert preview_function(env, "sdxl") is None

    frames = []
    env.preview_method, env.preview_interval_s = "auto", 0.0
    ctx = SimpleNamespace(env=env, progress=lambda step, total, image: frames.append(image))
    step_progress(ctx, "sdxl")(1, 2, latents)
    step_progress(ctx, "sd1")(1, 2, latents)
    env.preview_method = "none"
    step_progress(ctx, "sdxl")(1, 2, latents)
    assert frames[0].shape == (1, 24, 40, 3) and frames[1].shape == (1, 3, 5, 3) and frames[2] is None


def test_the_preview_method_option_reaches_the_environment(tmp_path):
    from nodegraph.app import build_environment
    from nodegraph.cli import _config, build_parser
    from nodegraph.registry import NodeRegistry

    args = build_parser().parse_args(["run", "w.json", "--preview-method", "none", "--output-dir",
                                      str(tmp_path / "o"), "--input-dir", str(tmp_path / "i")])
    config = _config(args, temp_dir=tmp_path / "t")
    assert build_environment(config, NodeRegistry()).preview_method == "none"
    with pytest.raises(ValueError, match="unknown preview method 'fast'"):
        preview_function(SimpleNamespace(preview_method="fast"), "sd1")
