"""Building modules on meta: thread-safe, complete (no meta tensor survives), and buffers as the library makes them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import tiny_models as tm
from nodes.sd.controlnet import load_controlnet
from nodes.sd.loading import load_checkpoint, load_vae
from nodes.sd.loading.build import empty_module, fill, meta_tensors, new_text_encoder
from nodes.sd.loading.keymap import KeyRule


def test_another_thread_gets_real_parameters_while_a_model_builds() -> None:
    """The meta device is this thread's mode, not a patch other threads see mid-build."""
    building, other_done = threading.Event(), threading.Event()
    seen: dict[str, torch.device] = {}

    def factory() -> torch.nn.Module:
        building.set()
        assert other_done.wait(timeout=30), "the other thread never finished"
        return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))

    def other() -> None:
        assert building.wait(timeout=30)
        layer = torch.nn.Linear(3, 2)
        seen["weight"], seen["bias"] = layer.weight.device, layer.bias.device
        seen["buffer"] = torch.nn.BatchNorm1d(2).running_mean.device
        other_done.set()

    thread = threading.Thread(target=other)
    thread.start()
    built = empty_module(factory)
    thread.join(timeout=30)
    assert seen == {"weight": torch.device("cpu"), "bias": torch.device("cpu"), "buffer": torch.device("cpu")}
    assert all(p.is_meta for p in built.parameters())  # and this thread's build allocated nothing
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # nor does the mode outlive the build


@pytest.mark.parametrize("with_projection", [False, True])
def test_computed_buffers_equal_a_normally_built_encoder(with_projection: bool) -> None:
    config = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "max_position_embeddings": 77, "projection_dim": 32,
              "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    built = new_text_encoder(config, with_projection=with_projection)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    reference = dict(cls(CLIPTextConfig(**config)).named_buffers())
    buffers = dict(built.named_buffers())
    assert buffers.keys() == reference.keys() and reference
    for name, value in reference.items():
        assert buffers[name].device.type == "cpu" and buffers[name].dtype == value.dtype
        assert torch.equal(buffers[name], value), name
    assert all(p.is_meta for p in built.parameters())


class _Computed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.register_buffer("window", torch.hann_window(8), persistent=False)


def test_a_buffer_without_a_recipe_is_named() -> None:
    with pytest.raises(NotImplementedError, match=r"Sequential: cannot restore buffers .*: 1\.window \(_Computed\)"):
        empty_module(lambda: torch.nn.Sequential(torch.nn.Linear(2, 2), _Computed()))


def test_fill_names_tensors_left_without_values() -> None:
    with torch.device("meta"):  # built past empty_module, so its computed buffer was never restored
        module = _Computed()
    rules = [KeyRule(k, k) for k in module.state_dict()]
    with pytest.raises(RuntimeError, match=r"probe: 1 tensors have no values after loading: window"):
        fill(module, rules, {k: torch.ones(v.shape) for k, v in module.state_dict().items()}, "probe")


def test_persistent_buffers_come_from_the_file() -> None:
    module = empty_module(lambda: torch.nn.BatchNorm1d(2))
    assert module.running_var.is_meta
    rules = [KeyRule(k, k) for k in module.state_dict()]
    filled = fill(module, rules, {k: torch.full(v.shape, 3).to(v.dtype) for k, v in module.state_dict().items()}, "bn")
    assert meta_tensors(filled) == [] and torch.equal(filled.running_var, torch.full((2,), 3.0))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("build")
    sd1 = tm.sd1_modules(0)
    paths = {family: tm.write_checkpoint(builder(0), root / f"{family}.safetensors")
             for family, builder in (("sd1", tm.sd1_modules), ("sd2", tm.sd2_modules), ("sdxl", tm.sdxl_modules))}
    paths["diffusers"] = tm.make_diffusers_folder(root, family="sdxl")
    paths["controlnet_ldm"] = tm.write_controlnet_ldm(tm.tiny_controlnet(sd1, seed=1), root / "cn.safetensors")
    paths["controlnet_folder"] = root / "cn_folder"
    tm.tiny_controlnet(sd1, seed=2).save_pretrained(paths["controlnet_folder"])
    return paths


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl", "diffusers"])
def test_no_meta_tensor_survives_a_checkpoint_load(files: dict[str, Path], name: str) -> None:
    loaded = load_checkpoint(files[name])
    modules = [loaded.model.unet, loaded.vae.vae, *loaded.clip.encoders]
    assert [meta_tensors(m) for m in modules] == [[]] * len(modules)
    assert all(b.device.type == "cpu" for m in modules for b in m.buffers())
    assert meta_tensors(load_vae(files[name]).vae) == []


@pytest.mark.parametrize("name", ["controlnet_ldm", "controlnet_folder"])
def test_no_meta_tensor_survives_a_controlnet_load(files: dict[str, Path], name: str) -> None:
    assert meta_tensors(load_controlnet(files[name]).model) == []
