"""LoRA: every file layout places all its layers, results equal diffusers' peft loading, and the cached
checkpoint is never changed (the plain branch of a graph stays bit-identical to a graph without LoRA).

Cross-check: the same tiny random SD1 model, a tiny LoRA written in diffusers' PEFT layout (and in kohya's
layout with diffusers' UNet names, which diffusers converts itself), same prompt, seed and scale, through
our graph (LoraLoader at strength 0.7) and diffusers (`load_lora_weights` + `set_adapters(..., 0.7)`).
We add the update to the weights, peft runs the low-rank branch beside them, so only rounding differs.
Tolerance: max abs pixel difference < 1e-4 (0..1 images, fp32); measured values are printed (-s).
"""

from __future__ import annotations

import logging

import pytest
import tiny_models as tm
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from nodegraph.errors import NodeExecutionError
from nodegraph.formats.api import from_api
from nodegraph.registry import default_registry
from nodes import lora_nodes
from nodes.sd.denoisers import unet_denoiser
from nodes.sd.ksampler import prepare_noise
from nodes.sd.loading import load_checkpoint
from nodes.sd.lora import match_lora, read_lora
from nodes.sd.text import encode
from nodes.sd.tokenizer import clip_bpe_tokenizer

SD_SCHEDULE = tm.SD_SCHEDULE
TOLERANCE = 1e-4
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and shares the machine better
    root = tmp_path_factory.mktemp("lora")
    models = root / "models"
    modules = tm.sd1_modules(seed=3, text_hidden=64)
    tm.write_checkpoint(modules, models / "checkpoints" / "tiny.safetensors")
    loras = models / "loras"
    tm.write_peft_lora(modules, loras / "peft.safetensors", seed=1)
    tm.write_kohya_lora(modules, loras / "kohya_ldm.safetensors", seed=2, ldm_names=True)
    tm.write_kohya_lora(modules, loras / "kohya_diffusers.safetensors", seed=2, ldm_names=False)
    tm.write_kohya_lora(modules, loras / "other.safetensors", seed=4, conv=False)
    (loras / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, str(loras / "not_a_lora.safetensors"))
    registry = default_registry()
    for node in lora_nodes.NODES:
        if node.schema.type_id not in registry:
            registry.register(node)
    engine = tm.engine_at(root, models_dir=models, registry=registry)
    yield engine, modules, root
    torch.set_num_threads(threads)


def base_graph(steps: int = 10, seed: int = 42) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def lora_branch(prompt: dict, first: int, loras: list[tuple[str, float, float]], steps: int = 10) -> tuple[str, str]:
    """Add a second branch from checkpoint "4", numbered from `first`: the LoRAs chained, its own encodes,
    sampler and decode. Returns the ids of its sampler and decode."""
    model, clip = ["4", 0], ["4", 1]
    ids = iter(str(n) for n in range(first, first + len(loras) + 4))
    for name, strength_model, strength_clip in loras:
        node = next(ids)
        prompt[node] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": name,
                                                               "strength_model": strength_model,
                                                               "strength_clip": strength_clip}}
        model, clip = [node, 0], [node, 1]
    positive, negative, sampler, decode = ids
    prompt[positive] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}}
    prompt[negative] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}}
    prompt[sampler] = {"class_type": "KSampler", "inputs": {**base_graph(steps)["3"]["inputs"], "model": model,
                                                            "positive": [positive, 0], "negative": [negative, 0]}}
    prompt[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": ["4", 2]}}
    return sampler, decode


def renumbered(prompt: dict, mapping: dict[str, str]) -> dict:
    """The same graph with some node ids changed (the engine runs ready nodes in id order)."""
    def link(value):
        return [mapping.get(value[0], value[0]), value[1]] if isinstance(value, list) else value

    return {mapping.get(nid, nid): {**node, "inputs": {k: link(v) for k, v in node["inputs"].items()}}
            for nid, node in prompt.items()}


def run(engine, prompt: dict, *outputs: str) -> list[torch.Tensor]:
    values = engine.run(from_api(prompt), outputs=list(outputs)).values
    return [values[out][0] for out in outputs]


def with_lora(engine, loras: list[tuple[str, float, float]], steps: int = 10) -> torch.Tensor:
    prompt = base_graph(steps)
    _, out = lora_branch(prompt, 50, loras, steps)
    return run(engine, prompt, out)[0]


@pytest.mark.parametrize("name", ["peft.safetensors", "kohya_diffusers.safetensors"])
def test_image_equals_diffusers_load_lora_weights(setup, name):
    engine, _, root = setup
    image = with_lora(engine, [(name, 0.7, 0.7)])
    modules = tm.sd1_modules(seed=3, text_hidden=64)  # fresh: diffusers injects peft layers into its modules
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 42, [0])
    noise = noise * (1 + float(scheduler.sigmas.max()) ** 2) ** 0.5 / float(scheduler.init_noise_sigma)
    pipe = StableDiffusionPipeline(vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(),
                                   unet=modules.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(root / "models" / "loras" / name), adapter_name="tiny")
    pipe.set_adapters("tiny", 0.7)
    with torch.no_grad():
        expected = pipe(PROMPT, negative_prompt="", num_inference_steps=10, guidance_scale=5.0, height=64, width=64,
                        latents=noise, output_type="pt").images
    diff = (image.movedim(-1, 1) - expected).abs().max().item()
    effect = (image - run(engine, base_graph(), "8")[0]).abs().max().item()
    print(f"{name}: max abs pixel difference {diff:.2e} (the LoRA changes pixels by {effect:.2f})")
    assert diff < TOLERANCE
    assert effect > 0.05


@pytest.mark.parametrize("ldm_names", [True, False])
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_kohya_files_place_every_layer(tmp_path, family, ldm_names):
    """kohya: LDM or diffusers UNet names, conv LoRA (3x3 down, 1x1 up), lora_te_ / lora_te1_ + lora_te2_."""
    modules = tm.sd1_modules(0) if family == "sd1" else tm.sdxl_modules(0)
    lora = read_lora(tm.write_kohya_lora(modules, tmp_path / "k.safetensors", ldm_names=ldm_names))
    matched = match_lora(lora, modules.unet, modules.encoders)
    assert matched.not_loaded == ()
    placed = len(matched.unet.by_param) + sum(len(u.by_param) for u in matched.encoders)
    assert placed == len(lora.layers)
    assert any(modules.unet.get_parameter(n).dim() == 4 and modules.unet.get_parameter(n).shape[-1] == 3
               for n in matched.unet.by_param)  # a 3x3 conv got its update
    assert all(len(u.by_param) > 0 for u in matched.encoders)  # te1 and te2 for SDXL


def test_ldm_and_diffusers_kohya_names_give_the_same_updates(setup):
    engine, modules, _ = setup
    folder = engine.env.models.folder_dirs("loras")[0]
    by_ldm = match_lora(read_lora(folder / "kohya_ldm.safetensors"), modules.unet, modules.encoders)
    by_diffusers = match_lora(read_lora(folder / "kohya_diffusers.safetensors"), modules.unet, modules.encoders)
    for ours, theirs in ((by_ldm.unet, by_diffusers.unet), (by_ldm.encoders[0], by_diffusers.encoders[0])):
        assert ours.by_param.keys() == theirs.by_param.keys()
        for name, ((layer, _),) in ours.by_param.items():
            ((other, _),) = theirs.by_param[name]
            assert torch.equal(layer.up, other.up) and torch.equal(layer.down, other.down)
            assert layer.scale == other.scale == 0.5  # alpha 2 / rank 4


def test_peft_sdxl_and_alpha_from_metadata(tmp_path):
    modules = tm.sdxl_modules(0)
    lora = read_lora(tm.write_peft_lora(modules, tmp_path / "p.safetensors", alpha=8.0))
    assert {layer.scale for layer in lora.layers.values()} == {2.0}  # lora_alpha 8 / r 4
    matched = match_lora(lora, modules.unet, modules.encoders)
    assert matched.not_loaded == () and all(u.by_param for u in matched.encoders)
    no_metadata = read_lora(tm.write_peft_lora(modules, tmp_path / "q.safetensors", alpha=None))
    assert {layer.scale for layer in no_metadata.layers.values()} == {1.0}  # PEFT's convention: alpha = rank


def test_two_branches_plain_one_is_bit_identical_in_either_order_and_from_cache(setup, tmp_path):
    """One checkpoint feeds a LoRA branch and a plain one; the plain image equals a LoRA-free graph exactly."""
    engine, _, root = setup
    reference_engine = tm.engine_at(tmp_path, models_dir=root / "models")
    reference = run(reference_engine, base_graph(steps=4), "8")[0]
    checkpoint = load_checkpoint(engine.env.models.resolve("checkpoints", "tiny.safetensors"), manager=engine.env.manager)
    before = {k: v.clone() for k, v in checkpoint.model.unet.state_dict().items()}
    loras = [("peft.safetensors", 0.9, 0.9), ("kohya_ldm.safetensors", 0.6, 1.0)]
    moved = {"3": "203", "6": "206", "7": "207", "8": "208"}
    for lora_first in (True, False):
        engine.cache.clear()
        prompt = renumbered(base_graph(steps=4), moved) if lora_first else base_graph(steps=4)
        plain_sampler, plain_out = ("203", "208") if lora_first else ("3", "8")
        lora_sampler, lora_out = lora_branch(prompt, 10 if lora_first else 300, loras, steps=4)
        for attempt in ("fresh", "cached"):
            result = engine.run(from_api(prompt), outputs=[plain_out, lora_out])
            plain, patched = result.values[plain_out][0], result.values[lora_out][0]
            assert torch.equal(plain, reference), (lora_first, attempt)
            assert (patched - reference).abs().max() > 0.05
            if attempt == "fresh":
                order = result.executed
                assert (order.index(lora_sampler) < order.index(plain_sampler)) == lora_first, order
            else:
                assert result.executed == [] and plain_out in result.cached
    after = checkpoint.model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a LoRA-free graph run after all this on the same engine still gives the reference
    engine.cache.clear()
    assert torch.equal(run(engine, base_graph(steps=4), "8")[0], reference)


def test_strength_zero_is_an_exact_no_op(setup):
    engine, _, _ = setup
    loaded = load_checkpoint(engine.env.models.resolve("checkpoints", "tiny.safetensors"), manager=engine.env.manager)
    ctx = type("Ctx", (), {"env": engine.env})()
    model, clip = lora_nodes.LoraLoader.execute(ctx, loaded.model, loaded.clip, "peft.safetensors", 0.0, 0.0)
    assert model is loaded.model and clip is loaded.clip
    model, clip = lora_nodes.LoraLoader.execute(ctx, loaded.model, loaded.clip, "peft.safetensors", 0.0, 1.0)
    assert model is loaded.model and clip is not loaded.clip
    (only,) = lora_nodes.LoraLoaderModelOnly.execute(ctx, loaded.model, "peft.safetensors", 0.0)
    assert only is loaded.model


def _patched_unet_output(engine, loras: list[tuple[str, float]]) -> torch.Tensor:
    """One UNet evaluation (x0 at sigma 2) with LoRAs stacked in this order through LoraLoaderModelOnly."""
    from nodes.sd.denoisers import patches_applied

    loaded = load_checkpoint(engine.env.models.resolve("checkpoints", "tiny.safetensors"), manager=engine.env.manager)
    ctx = type("Ctx", (), {"env": engine.env})()
    model = loaded.model
    for name, strength in loras:
        (model,) = lora_nodes.LoraLoaderModelOnly.execute(ctx, model, name, strength)
    denoiser = unet_denoiser(model)
    generator = torch.Generator().manual_seed(0)
    x, embeds = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 64, generator=generator)
    with torch.no_grad(), patches_applied(model.patches, unet_denoiser=denoiser, cfg_denoiser=None):  # type: ignore[arg-type]
        return denoiser(x, torch.tensor([2.0]), encoder_hidden_states=embeds)


def test_stacking_is_order_independent_and_negative_strength_reverses(setup):
    engine, _, _ = setup
    base = _patched_unet_output(engine, [])
    one_two = _patched_unet_output(engine, [("peft.safetensors", 0.8), ("other.safetensors", 0.5)])
    two_one = _patched_unet_output(engine, [("other.safetensors", 0.5), ("peft.safetensors", 0.8)])
    torch.testing.assert_close(one_two, two_one, rtol=0, atol=1e-5)
    assert (one_two - base).abs().max() > 0.05
    # +s then -s of one LoRA cancels to rounding (W + dW - dW); never used to restore weights
    there_and_back = _patched_unet_output(engine, [("peft.safetensors", 0.8), ("peft.safetensors", -0.8)])
    torch.testing.assert_close(there_and_back, base, rtol=0, atol=1e-5)
    negative = _patched_unet_output(engine, [("peft.safetensors", -0.8)])
    assert (negative - base).abs().max() > 0.05 and (negative - one_two).abs().max() > 0.05


def test_clip_lora_changes_the_encoding_and_not_the_encoder(setup):
    engine, _, _ = setup
    loaded = load_checkpoint(engine.env.models.resolve("checkpoints", "tiny.safetensors"), manager=engine.env.manager)
    ctx = type("Ctx", (), {"env": engine.env})()
    before = encode(loaded.clip, PROMPT).embeds
    _, clip = lora_nodes.LoraLoader.execute(ctx, loaded.model, loaded.clip, "kohya_ldm.safetensors", 1.0, 1.0)
    assert (encode(clip, PROMPT).embeds - before).abs().max() > 0.05
    assert torch.equal(encode(loaded.clip, PROMPT).embeds, before)


def test_unplaceable_keys_are_reported(setup, tmp_path, caplog):
    engine, modules, _ = setup
    source = tm.write_kohya_lora(modules, tmp_path / "x.safetensors", conv=False, text=False)
    from safetensors.torch import load_file

    tensors = load_file(source)
    tensors["lora_unet_no_such_block_to_q.lora_up.weight"] = torch.zeros(8, 4)
    tensors["lora_unet_no_such_block_to_q.lora_down.weight"] = torch.zeros(4, 8)
    assert "lora_unet_middle_block_1_proj_in.lora_up.weight" in tensors
    tensors["lora_unet_middle_block_1_proj_in.dora_scale"] = torch.zeros(1)  # DoRA: not applied as plain LoRA
    folder = engine.env.models.folder_dirs("loras")[0]
    save_file(tensors, str(folder / "extra_keys.safetensors"))
    loaded = load_checkpoint(engine.env.models.resolve("checkpoints", "tiny.safetensors"), manager=engine.env.manager)
    ctx = type("Ctx", (), {"env": engine.env})()
    with caplog.at_level(logging.WARNING, logger="nodes.sd.lora"):
        lora_nodes.LoraLoaderModelOnly.execute(ctx, loaded.model, "extra_keys.safetensors", 1.0)
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "5 key(s) not loaded" in message  # the unknown layer, and all 4 keys of the DoRA layer
    assert "lora_unet_no_such_block_to_q" in message and "lora_unet_middle_block_1_proj_in.alpha" in message


def test_bad_files_name_the_file_and_the_problem(setup):
    engine, _, _ = setup
    with pytest.raises(ValueError, match=r"broken\.safetensors: cannot read"):
        read_lora(engine.env.models.resolve("loras", "broken.safetensors"))
    with pytest.raises(ValueError, match=r"not_a_lora\.safetensors: no LoRA layers found.*conv_in"):
        read_lora(engine.env.models.resolve("loras", "not_a_lora.safetensors"))
    prompt = base_graph(steps=2)
    _, out = lora_branch(prompt, 50, [("broken.safetensors", 1.0, 1.0)], steps=2)
    with pytest.raises(NodeExecutionError, match=r"broken\.safetensors"):
        run(engine, prompt, out)


def test_lora_key_formats_older_diffusers_spellings(tmp_path):
    """diffusers' pre-PEFT files: `.lora.up/.down`, `.lora_linear_layer.*` and attention processors' `to_q_lora`."""
    modules = tm.sd1_modules(0)
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    tensors = {
        f"unet.{attn}.processor.to_q_lora.up.weight": torch.randn(32, 4),
        f"unet.{attn}.processor.to_q_lora.down.weight": torch.randn(4, 32),
        f"unet.{attn}.processor.to_out_lora.up.weight": torch.randn(32, 4),
        f"unet.{attn}.processor.to_out_lora.down.weight": torch.randn(4, 32),
        f"unet.{attn.replace('attn1', 'attn2')}.to_k.lora.up.weight": torch.randn(32, 4),
        f"unet.{attn.replace('attn1', 'attn2')}.to_k.lora.down.weight": torch.randn(4, 32),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": torch.randn(32, 4),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": torch.randn(4, 32),
    }
    save_file(tensors, str(tmp_path / "old.safetensors"))
    matched = match_lora(read_lora(tmp_path / "old.safetensors"), modules.unet, modules.encoders)
    assert matched.not_loaded == ()
    assert set(matched.unet.by_param) == {f"{attn}.to_q.weight", f"{attn}.to_out.0.weight",
                                          f"{attn.replace('attn1', 'attn2')}.to_k.weight"}
    assert set(matched.encoders[0].by_param) == {"encoder.layers.0.self_attn.q_proj.weight"}
