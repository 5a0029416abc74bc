"""VAELoader: the embedded model's VAE as its first entry (read from the checkpoint, no second copy shipped),
VAE files of either family told apart by their weights, and TAESD pairs listed after the files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nodegraph import NodeContext
from nodegraph.environment import Environment, ModelPaths
from nodes.loaders import CheckpointLoaderSimple
from nodes.model_loaders.vae import VAELoader, vae_names
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH, add_embedded_checkpoint
from nodes.sd.vae import decode, encode
from test_taesd import taesd_files, tiny_taesd
from test_vae_family import ldm_tensors, scaled_vae


@pytest.fixture
def env(tmp_path):
    env = Environment(models=ModelPaths(roots=[tmp_path / "models"]))
    add_embedded_checkpoint(env)
    return env


def _ctx(env) -> NodeContext:
    return NodeContext("1", "VAELoader", env)


def test_the_embedded_vae_is_listed_first_and_is_the_checkpoints_vae(env):
    assert vae_names(env)[0] == EMBEDDED_NAME
    assert env.models.resolve("vae", EMBEDDED_NAME) == EMBEDDED_PATH  # a view of the checkpoint: no bytes twice
    (vae,) = VAELoader.execute(_ctx(env), EMBEDDED_NAME)
    ctx = NodeContext("2", "CheckpointLoaderSimple", env)
    _, _, checkpoint_vae = CheckpointLoaderSimple.execute(ctx, EMBEDDED_NAME)
    assert (vae.scaling_factor, vae.shift_factor) == (checkpoint_vae.scaling_factor, checkpoint_vae.shift_factor)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decode(vae, latents), decode(checkpoint_vae, latents), atol=0, rtol=0)
    image = decode(vae, latents)
    torch.testing.assert_close(encode(vae, image), encode(checkpoint_vae, image), atol=0, rtol=0)


@pytest.mark.parametrize(("scale", "seed"), [(0.18215, 0), (0.13025, 1)])
def test_a_vae_files_family_comes_from_its_weights(env, tmp_path, scale, seed):
    """No metadata: the latents' size decides between SD1's and SDXL's scaling (nodes/sd/loading/vae_family.py)."""
    folder = tmp_path / "models" / "vae"
    folder.mkdir(parents=True)
    source = scaled_vae(1 / scale, seed=seed)
    save_file(ldm_tensors(source), str(folder / "user_vae.safetensors"))
    (vae,) = VAELoader.execute(_ctx(env), "user_vae.safetensors")
    assert vae.scaling_factor == pytest.approx(scale)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ((source.decode(latents / scale).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(decode(vae, latents), expected, atol=1e-4, rtol=1e-4)


def test_listing_order_and_a_file_named_like_taesd(env, tmp_path):
    encoder, decoder = taesd_files(tiny_taesd(0))
    approx = tmp_path / "models" / "vae_approx"
    approx.mkdir(parents=True)
    for name, tensors in (("taesdxl_encoder", encoder), ("taesdxl_decoder", decoder), ("taesd_decoder", decoder)):
        save_file(tensors, str(approx / f"{name}.safetensors"))
    folder = tmp_path / "models" / "vae"
    folder.mkdir(parents=True)
    save_file(ldm_tensors(scaled_vae(1 / 0.18215)), str(folder / "a.safetensors"))
    assert vae_names(env) == [EMBEDDED_NAME, "a.safetensors", "taesdxl"]
    (handle,) = VAELoader.execute(_ctx(env), "taesdxl")
    assert handle.scaling_factor == pytest.approx(0.13025) and handle.source == "taesdxl"
    with pytest.raises(ValueError, match="taesd_encoder"):
        VAELoader.execute(_ctx(env), "taesd")  # not listed: half a pair
    first = VAELoader.fingerprint(_ctx(env), "taesdxl")
    save_file({k: v + 1 for k, v in decoder.items()}, str(approx / "taesdxl_decoder.safetensors"))
    assert VAELoader.fingerprint(_ctx(env), "taesdxl") != first  # either half changing re-runs the node
