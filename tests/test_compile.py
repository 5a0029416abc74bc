"""TorchCompileModel and --compile: the sampler runs a compiled UNet, compiled once and reused across prompts."""

from __future__ import annotations

import pytest
import torch

import tiny_models as tm
from nodegraph.formats.api import from_api


def graph(seed: int, compiled: bool) -> dict:
    model = ["9", 0] if compiled else ["4", 0]
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "9": {"class_type": "TorchCompileModel", "inputs": {"model": ["4", 0], "backend": "inductor"}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    }


def test_compiled_sampling_matches_eager_and_compiles_once(tmp_path):
    pytest.importorskip("torch._inductor")
    tm.write_checkpoint(tm.sd1_modules(seed=3, text_hidden=64), tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    engine = tm.engine_at(tmp_path)
    run = lambda seed, compiled: engine.run(from_api(graph(seed, compiled)), outputs=["3"]).values["3"][0].samples  # noqa: E731
    first = run(0, compiled=True)
    manager = engine.env.manager
    loads = manager.loads
    torch._dynamo.utils.counters.clear()
    second = run(1, compiled=True)  # another prompt (new seed), same shapes: the compiled UNet is reused
    assert manager.loads == loads and torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    compiled = [m for m in manager.stats()["models"] if m["name"].endswith("compiled")]
    assert len(compiled) == 1 and compiled[0]["derived"] and compiled[0]["nbytes"] == 0
    torch.testing.assert_close(first, run(0, compiled=False), rtol=0, atol=2e-3)
    torch.testing.assert_close(second, run(1, compiled=False), rtol=0, atol=2e-3)


def test_unknown_backend_is_refused_by_validation(tmp_path):
    from nodegraph.errors import ValidationFailed

    tm.write_checkpoint(tm.sd1_modules(seed=3, text_hidden=64), tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    engine = tm.engine_at(tmp_path)
    bad = graph(0, compiled=True)
    bad["9"]["inputs"]["backend"] = "tensorrt"
    with pytest.raises(ValidationFailed, match="backend"):
        engine.run(from_api(bad), outputs=["3"])
