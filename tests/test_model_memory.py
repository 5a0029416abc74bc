"""The model manager with real (tiny) checkpoints: what a user sees when switching LoRAs and checkpoints,
freeing memory, and running under a RAM budget.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tiny_models as tm
from nodegraph.formats.api import from_api
from nodegraph.registry import default_registry
from nodes import lora_nodes
from nodes.sd.loading import load_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("memory")
    modules = tm.sd1_modules(seed=3, text_hidden=64)
    for name in ("a.safetensors", "b.safetensors", "c.safetensors"):
        tm.write_checkpoint(tm.sd1_modules(seed=len(name) + ord(name[0]), text_hidden=64),
                           root / "models" / "checkpoints" / name)
    tm.write_checkpoint(modules, root / "models" / "checkpoints" / "tiny.safetensors")
    tm.write_peft_lora(modules, root / "models" / "loras" / "A.safetensors", seed=1)
    tm.write_kohya_lora(modules, root / "models" / "loras" / "B.safetensors", seed=2, ldm_names=True)
    return root


def engine_for(root: Path, tmp_path: Path, **config):
    registry = default_registry()
    for node in lora_nodes.NODES:
        if node.schema.type_id not in registry:
            registry.register(node)
    engine = tm.engine_at(tmp_path, models_dir=root / "models", registry=registry)
    for name, value in config.items():
        setattr(engine.env.manager, name, value)
    return engine


def prompt(ckpt: str = "tiny.safetensors", lora: str | None = None, seed: int = 0) -> dict:
    model, clip = ["4", 0], ["4", 1]
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    if lora is not None:
        graph["10"] = {"class_type": "LoraLoader", "inputs": {"lora_name": lora, "strength_model": 0.8,
                                                               "strength_clip": 0.8, "model": model, "clip": clip}}
        graph["3"]["inputs"]["model"] = ["10", 0]
        graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["10", 1]
    return graph


def image(engine, graph: dict) -> torch.Tensor:
    return engine.run(from_api(graph), outputs=["8"]).values["8"][0]


def digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def test_lora_switching_reloads_nothing_merges_once_and_leaves_the_base_bit_identical(root, tmp_path):
    engine = engine_for(root, tmp_path)
    manager = engine.env.manager
    plain = image(engine, prompt())
    base = load_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors", manager=manager)
    unet_digest, encoder_digest = digest(base.model.unet), digest(base.clip.encoders[0])
    loads_after_plain = manager.loads  # the header's inspection, UNet, text encoder, VAE
    assert loads_after_plain == 4

    first_a = image(engine, prompt(lora="A.safetensors"))
    merges_a = manager.loads - loads_after_plain  # the LoRA file, merged UNet, merged text encoder
    assert merges_a == 3
    image(engine, prompt(lora="A.safetensors", seed=1))  # sampling the same patched model again: no new merge
    assert manager.loads == loads_after_plain + merges_a
    image(engine, prompt(lora="B.safetensors"))
    loads_after_b = manager.loads
    engine.cache.clear()  # even with no cached outputs, A's merged copies are still held by the manager
    assert torch.equal(image(engine, prompt(lora="A.safetensors")), first_a)
    assert manager.loads == loads_after_b  # A -> B -> A: no checkpoint reload, no second merge of A

    # unpatching is exact: the base modules never changed, and a plain run is the plain image bit for bit
    assert digest(base.model.unet) == unet_digest and digest(base.clip.encoders[0]) == encoder_digest
    engine.cache.clear()
    assert torch.equal(image(engine, prompt()), plain)
    fresh = load_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors")  # from the file, no manager
    assert digest(fresh.model.unet) == unet_digest


def test_merged_copies_count_only_the_weights_they_replace_and_the_output_cache_counts_no_model(root, tmp_path):
    engine = engine_for(root, tmp_path)
    image(engine, prompt(lora="A.safetensors"))
    models = {m["name"]: m for m in engine.env.manager.stats()["models"]}
    unet = next(m for name, m in models.items() if name.startswith("tiny.safetensors UNet") and not m["derived"])
    merged = next(m for name, m in models.items() if "UNet" in name and "LoRA" in name)
    from nodes.sd.lora import match_lora, read_lora

    base = load_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors", manager=engine.env.manager)
    updates = match_lora(read_lora(root / "models" / "loras" / "A.safetensors"), base.model.unet, ()).unet
    parameters = dict(base.model.unet.named_parameters())
    replaced = sum(parameters[name].numel() * parameters[name].element_size() for name in updates.by_param)
    assert merged["derived"] and merged["nbytes"] == replaced < unet["nbytes"]
    assert engine.cache.nbytes < 1_000_000  # handles are refs: the checkpoint is counted once, by the manager
    assert engine.env.manager.loaded_bytes() > unet["nbytes"]


def test_three_checkpoints_under_a_two_checkpoint_budget_evict_and_never_fail(root, tmp_path):
    reference = engine_for(root, tmp_path / "reference")
    expected = {name: image(reference, prompt(name)) for name in ("a.safetensors", "b.safetensors", "c.safetensors")}
    one = reference.env.manager.loaded_bytes() // 3
    engine = engine_for(root, tmp_path / "budget", ram_budget=int(2.5 * one))
    for name in ("a.safetensors", "b.safetensors", "c.safetensors", "a.safetensors"):
        engine.cache.clear()
        assert torch.equal(image(engine, prompt(name)), expected[name]), name  # reloaded models give the same image
        assert engine.env.manager.loaded_bytes() <= 2.5 * one
    stats = engine.env.manager.stats()
    assert stats["evictions"] >= 3 and stats["loads"] >= 12  # a's parts were dropped and loaded again


def test_free_returns_the_memory_to_the_os(tmp_path):
    """POST /free's work, measured the way a user sees it: the process' RSS falls back."""
    script = textwrap.dedent("""
        import torch
        from nodegraph.models import ModelManager, return_large_frees_to_the_os

        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

        return_large_frees_to_the_os()
        manager = ModelManager()
        before = rss()
        refs = [manager.ref(i, lambda device: torch.nn.Linear(4096, 4096 * 6), name=f"m{i}") for i in range(4)]
        for ref in refs:
            ref.get()
        loaded, counted = rss(), manager.loaded_bytes()
        released = manager.free()
        print(before, loaded, rss(), counted, released, manager.loaded_bytes())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    before, loaded, after, counted, released, left = map(int, done.stdout.split())
    assert counted == released and left == 0
    assert loaded - before > 0.9 * counted  # ~1.6 GB really resident
    assert after - before < 100_000_000, (before, loaded, after)
