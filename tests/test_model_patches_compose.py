"""Model patches compose with LoRA and ControlNet through the one patch mechanism, and never change the cached
models: a tiny random SD1 checkpoint (it has self-attention at its top level, so ToMe acts) with a LoRA and a
ControlNet, every kind of patch chained on one branch, a plain branch from the same loader beside it."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch

from nodegraph.formats.api import from_api
from nodes.image import image_to_png_bytes

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("compose")
    models = root / "models"
    modules = tm.sd1_modules(seed=3, text_hidden=64)
    tm.write_checkpoint(modules, models / "checkpoints" / "tiny.safetensors")
    tm.write_peft_lora(modules, models / "loras" / "peft.safetensors", seed=1)
    tm.write_controlnet_ldm(tm.tiny_controlnet(modules, seed=7), models / "controlnet" / "tiny.safetensors")
    engine = tm.engine_at(root, models_dir=models)
    blocks = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(11))
    (engine.env.input_dir / "hint.png").write_bytes(image_to_png_bytes(blocks.repeat_interleave(8, 0)
                                                                       .repeat_interleave(8, 1)))
    yield engine
    torch.set_num_threads(threads)


PATCHES = [("RescaleCFG", {"multiplier": 0.5}), ("APG", {"eta": 0.5, "norm_threshold": 5.0, "momentum": 0.3}),
           ("PerturbedAttentionGuidance", {"scale": 2.0}), ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
           ("TomePatchModel", {"ratio": 0.3}), ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
           ("UNetCrossAttentionMultiply", {"q": 1.0, "k": 1.2, "v": 1.0, "out": 1.0})]


def graph(patches=PATCHES, *, lora: bool = True, control: bool = True, clip_multiply: bool = True) -> dict:
    g = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    model, clip = ["4", 0], ["4", 1]
    if lora:
        g["10"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": "peft.safetensors",
                                                         "strength_model": 0.8, "strength_clip": 0.8}}
        model, clip = ["10", 0], ["10", 1]
    if clip_multiply:
        g["11"] = {"class_type": "CLIPAttentionMultiply", "inputs": {"clip": clip, "q": 1.0, "k": 1.1, "v": 1.0,
                                                                    "out": 1.0}}
        clip = ["11", 0]
    for k, (class_type, inputs) in enumerate(patches):
        g[str(20 + k)] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [str(20 + k), 0]
    g["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}}
    g["7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}}
    positive, negative = ["6", 0], ["7", 0]
    if control:
        g["12"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny.safetensors"}}
        g["13"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        g["14"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": ["12", 0], "image": ["13", 0],
            "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}}
        positive, negative = ["14", 0], ["14", 1]
    g["3"] = {"class_type": "KSampler", "inputs": {
        "seed": 42, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": model, "positive": positive, "negative": negative, "latent_image": ["5", 0]}}
    return g


def latent(engine, g) -> torch.Tensor:
    return engine.run(from_api(g), outputs=["3"]).values["3"][0].samples


def plain_graph() -> dict:
    return graph([], lora=False, control=False, clip_multiply=False)


def test_every_patch_contributes_alongside_lora_and_controlnet(engine):
    full = latent(engine, graph())
    assert torch.isfinite(full).all()
    for left_out in range(len(PATCHES)):
        partial = latent(engine, graph(PATCHES[:left_out] + PATCHES[left_out + 1 :]))
        assert (partial - full).abs().max() > 1e-4, PATCHES[left_out][0]
    for flag in ("lora", "control", "clip_multiply"):
        assert (latent(engine, graph(**{flag: False})) - full).abs().max() > 1e-4, flag


def test_the_plain_branch_and_the_cached_models_stay_as_they_were(engine):
    engine.cache.clear()
    reference = latent(engine, plain_graph())
    loaded = engine.run(from_api(plain_graph()), outputs=["4"]).values["4"]
    unet, encoder = loaded[0].unet, loaded[1].encoders[0]
    unet_state = {k: v.clone() for k, v in unet.state_dict().items()}
    text_state = {k: v.clone() for k, v in encoder.state_dict().items()}
    processors = dict(unet.attn_processors)
    engine.cache.clear()
    both = graph()
    both["30"] = {**both["3"], "inputs": {**both["3"]["inputs"], "model": ["4", 0], "positive": ["31", 0],
                                           "negative": ["32", 0]}}
    both["31"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}}
    both["32"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}}
    result = engine.run(from_api(both), outputs=["3", "30"])
    assert torch.equal(result.values["30"][0].samples, reference)
    assert not torch.equal(result.values["3"][0].samples, reference)
    assert all(torch.equal(v, unet_state[k]) for k, v in unet.state_dict().items())
    assert all(torch.equal(v, text_state[k]) for k, v in encoder.state_dict().items())
    assert all(unet.attn_processors[name] is proc for name, proc in processors.items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())
