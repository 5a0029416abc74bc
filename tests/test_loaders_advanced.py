"""CheckpointLoader (LDM config), DiffusersLoader and DiffControlNetLoader: what each loads, checked on tiny
models in the real layouts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.loaders import CheckpointLoaderSimple
from nodes.loaders_advanced import CheckpointLoader, DiffControlNetLoader, DiffusersLoader
from tests.tiny_models import (engine_at, sd1_modules, sd2_modules, tiny_controlnet, write_checkpoint,
                               write_controlnet_diffusers_file, write_diffusers_folder)

V_CONFIG = """model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    scale_factor: 0.5
    unet_config:
      params:
        context_dim: 64
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    return engine_at(root)


def ctx(engine):
    return SimpleNamespace(env=engine.env, fingerprint_file=lambda path: str(path))


def test_checkpoint_loader_takes_prediction_and_scale_from_the_config(engine):
    models = engine.env.models.folder_dirs("checkpoints")[0]
    configs = engine.env.models.folder_dirs("configs")[0]
    configs.mkdir(parents=True, exist_ok=True)
    write_checkpoint(sd2_modules(0, v_prediction=False), models / "plain_sd2.safetensors")
    (configs / "v2-inference-v.yaml").write_text(V_CONFIG)
    (configs / "broken.yaml").write_text("model: [1, 2")
    assert "v2-inference-v.yaml" in engine.env.models.list("configs")

    plain = CheckpointLoaderSimple.execute(ctx(engine), ckpt_name="plain_sd2.safetensors")
    model, _, vae = CheckpointLoader.execute(ctx(engine), config_name="v2-inference-v.yaml",
                                             ckpt_name="plain_sd2.safetensors")
    assert plain[0].prediction == "epsilon" and model.prediction == "v_prediction"
    assert vae.scaling_factor == 0.5 and plain[2].scaling_factor != 0.5
    assert model.unet is plain[0].unet  # the same managed UNet: only the sampling parametrisation differs
    with pytest.raises(ValueError, match="broken.yaml"):
        CheckpointLoader.execute(ctx(engine), config_name="broken.yaml", ckpt_name="plain_sd2.safetensors")


def test_diffusers_loader_lists_and_loads_pipeline_folders(engine):
    folder = engine.env.models.folder_dirs("diffusers")[0]
    modules = sd1_modules(3)
    write_diffusers_folder(modules, folder / "tiny_pipeline")
    assert engine.env.models.list("diffusers") == ["tiny_pipeline"]
    model, clip, vae = DiffusersLoader.execute(ctx(engine), model_path="tiny_pipeline")
    expected = modules.unet.state_dict()
    loaded = model.unet.state_dict()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    assert model.family == "sd1" and len(clip.encoders) == 1 and vae.vae is not None


def test_diff_controlnet_gets_the_models_weights_added(engine):
    modules = sd1_modules(5)
    net = tiny_controlnet(modules, seed=7)
    unet_weights = modules.unet.state_dict()
    diff = {key: (value - unet_weights[key]) if key in unet_weights and unet_weights[key].shape == value.shape
            else value for key, value in net.state_dict().items()}
    shared = [key for key in diff if key in unet_weights and unet_weights[key].shape == diff[key].shape]
    assert any(key.startswith("down_blocks") for key in shared) and "conv_in.weight" in shared
    folder = engine.env.models.folder_dirs("controlnet")[0]
    path = write_controlnet_diffusers_file(net, folder / "diff.safetensors")
    save_file({**{k: v.contiguous() for k, v in diff.items()}, "difference": torch.zeros(0)}, str(path))
    write_controlnet_diffusers_file(net, folder / "plain.safetensors")
    model = SimpleNamespace(unet_ref=modules.unet, unet=modules.unet)

    (restored,) = DiffControlNetLoader.execute(ctx(engine), model=model, control_net_name="diff.safetensors")
    got = restored.model.state_dict()
    for key, value in net.state_dict().items():
        assert torch.allclose(got[key], value, atol=1e-6), key
    (plain,) = DiffControlNetLoader.execute(ctx(engine), model=model, control_net_name="plain.safetensors")
    assert all(torch.equal(plain.model.state_dict()[k], v) for k, v in net.state_dict().items())
    assert "difference" in load_file(str(path))  # the file stays as it was
