"""SaveLatent / LoadLatent: ComfyUI's .latent layout round-trips; only safetensors is read, only inside the input
folder."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodegraph import NodeContext
from nodegraph.environment import Environment
from nodegraph.hooks import RunInfo
from nodegraph.paths import UnsafePath
from nodes.latent import LoadLatent, SaveLatent
from nodes.sd.types import Latent


@pytest.fixture
def env(tmp_path):
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir()
    return Environment(output_dir=(tmp_path / "output").resolve(), input_dir=(tmp_path / "input").resolve(),
                       temp_dir=(tmp_path / "temp").resolve())


def ctx(env, metadata=None):
    return NodeContext("9", "Test", env, run=RunInfo(run_id="r", outputs=[], metadata=metadata or {}))


def test_save_then_load_gives_the_same_latent(env):
    samples = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0))
    meta = {"prompt": {"1": {"class_type": "SaveLatent", "inputs": {}}}, "workflow": {"nodes": []}}
    result = SaveLatent.execute(ctx(env, meta), samples=Latent(samples), filename_prefix="latents/test")
    (saved,) = result.ui["latents"]
    assert saved == {"filename": "test_00001_.latent", "subfolder": "latents", "type": "output"}
    path = env.output_dir / "latents" / "test_00001_.latent"
    tensors = load_file(path)  # ComfyUI's layout: the latent plus an empty format marker
    assert set(tensors) == {"latent_tensor", "latent_format_version_0"}
    assert tensors["latent_format_version_0"].numel() == 0
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        assert json.loads(handle.metadata()["prompt"]) == meta["prompt"]
    (env.input_dir / "copy.latent").write_bytes(path.read_bytes())
    assert LoadLatent.schema.input("latent").resolve_options(env) == ["copy.latent"]
    (loaded,) = LoadLatent.execute(ctx(env), latent="copy.latent")
    assert torch.equal(loaded.samples, samples)
    before = LoadLatent.fingerprint(ctx(env), latent="copy.latent")
    SaveLatent.execute(ctx(env), samples=Latent(samples * 2), filename_prefix="x")
    (env.input_dir / "copy.latent").write_bytes((env.output_dir / "x_00001_.latent").read_bytes())
    assert LoadLatent.fingerprint(ctx(env), latent="copy.latent") != before


def test_first_format_files_are_rescaled(env):
    samples = torch.randn(1, 4, 3, 3)
    save_file({"latent_tensor": samples}, str(env.input_dir / "old.latent"))
    (loaded,) = LoadLatent.execute(ctx(env), latent="old.latent")
    torch.testing.assert_close(loaded.samples, samples / 0.18215)


def test_pickles_and_other_files_are_refused(env):
    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (env.input_dir / "evil.latent").write_bytes(pickle.dumps({"latent_tensor": Boom()}))
    torch.save({"latent_tensor": torch.zeros(1)}, env.input_dir / "torch.latent")
    for name in ("evil.latent", "torch.latent"):
        with pytest.raises(ValueError, match="not a safetensors"):
            LoadLatent.execute(ctx(env), latent=name)
    save_file({"other": torch.zeros(1)}, str(env.input_dir / "keyless.latent"))
    with pytest.raises(ValueError, match="latent_tensor"):
        LoadLatent.execute(ctx(env), latent="keyless.latent")
    with pytest.raises(ValueError, match=r"\.latent file"):
        LoadLatent.execute(ctx(env), latent="picture.png")


def test_names_leaving_the_input_folder_are_refused(env, tmp_path):
    save_file({"latent_tensor": torch.zeros(1, 4, 2, 2), "latent_format_version_0": torch.tensor([])},
              str(tmp_path / "outside.latent"))
    (env.input_dir / "link.latent").symlink_to(tmp_path / "outside.latent")
    assert LoadLatent.schema.input("latent").resolve_options(env) == []  # a link pointing out is not listed
    for name in ("../outside.latent", str(tmp_path / "outside.latent"), "link.latent"):
        with pytest.raises(UnsafePath):
            LoadLatent.execute(ctx(env), latent=name)
    assert SaveLatent.schema.input("filename_prefix").check("../escape", env) is not None
