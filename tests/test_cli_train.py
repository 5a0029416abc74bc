"""`nodegraph train lora`: a headless LoRA run writes a file LoraLoader reads, and a second run resumes from the
saved state (here: finds it complete) and writes the same LoRA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodegraph.cli import main
from nodes.models.embedded import EMBEDDED_PATH

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model's weights are not built yet")


def test_train_lora_writes_a_loadable_lora_and_resumes(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = tmp_path / "stars"
        shutil.copytree(ROOT / "workflows" / "input" / "training_striped", images)
        args = ["train", "lora", "--images", str(images), "--steps", "3", "--rank", "2", "--lr", "0.002",
                "--models-dir", str(tmp_path / "models"), "--temp-dir", str(tmp_path / "state"), "-q", "--cpu"]
        assert main([*args, "--out", str(tmp_path / "a.safetensors")]) == 0
        assert "trained 3 step(s)" in capsys.readouterr().err
        first = load_file(str(tmp_path / "a.safetensors"))
        assert list((tmp_path / "state" / "training").glob("lora-*.safetensors"))  # the resumable state
        assert main([*args, "--out", str(tmp_path / "b.safetensors")]) == 0
        second = load_file(str(tmp_path / "b.safetensors"))
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(k.endswith(".lora_up.weight") for k in first) and all(k.startswith("lora_unet_") for k in first)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".nodegraph-train-")] == []  # staging removed

    from nodes.sd.lora import parse_lora

    parsed = parse_lora(first, {}, "a.safetensors")
    assert parsed.unrecognised == () and all(layer.scale == 1.0 for layer in parsed.layers.values())


def test_train_lora_refuses_a_bad_out_name(tmp_path, capsys):
    assert main(["train", "lora", "--images", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 2
    assert "--out" in capsys.readouterr().err
