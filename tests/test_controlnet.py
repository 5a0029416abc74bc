"""ControlNet: loading both layouts, and images that equal diffusers' StableDiffusionControlNetPipeline.

The same tiny random SD1 model, tiny random ControlNets, prompt, seed and hint image go through our graph
(CheckpointLoaderSimple, ControlNetLoader, LoadImage, ControlNetApplyAdvanced, KSampler euler/normal) and
through diffusers (Euler, linspace spacing, 10 steps, so every timestep is a whole number and no
interpolation rule differs; the initial noise pre-scaled as tests/test_pipeline_vs_diffusers.py explains).
Tolerance: max abs pixel difference < 1e-4 (0..1 images, fp32); measured values are printed (-s).
"""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline

from nodegraph.errors import NodeExecutionError
from nodegraph.formats.api import from_api
from nodegraph.registry import default_registry
from nodes import controlnet_nodes
from nodes.image import image_to_png_bytes
from nodes.sd.controlnet import (
    ControlApplied,
    load_controlnet,
    percent_to_sigma,
    resize_hint,
)
from nodes.sd.denoisers import calc_cond_batch, unet_denoiser
from nodes.sd.ksampler import prepare_noise, sample, sampling_sigmas
from nodes.sd.loading import load_checkpoint
from nodes.sd.schedules import model_sigmas
from nodes.sd.text import encode
from nodes.sd.tokenizer import clip_bpe_tokenizer
from nodes.sd.types import CondItem, Latent

SD_SCHEDULE = tm.SD_SCHEDULE
TOLERANCE = 1e-4
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and shares the machine better
    root = tmp_path_factory.mktemp("controlnet")
    models = root / "models"
    modules = tm.sd1_modules(seed=3, text_hidden=64)
    tm.write_checkpoint(modules, models / "checkpoints" / "tiny.safetensors")
    nets = {"a": tm.tiny_controlnet(modules, seed=7), "b": tm.tiny_controlnet(modules, seed=8)}
    tm.write_controlnet_ldm(nets["a"], models / "controlnet" / "tiny_ldm.safetensors")
    tm.write_controlnet_diffusers_file(nets["b"], models / "controlnet" / "tiny_b_diffusers.safetensors")
    nets["a"].save_pretrained(models / "controlnet" / "tiny_folder")
    (models / "controlnet" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    registry = default_registry()
    for node in controlnet_nodes.NODES:
        if node.schema.type_id not in registry:
            registry.register(node)
    engine = tm.engine_at(root, models_dir=models, registry=registry)
    generator = torch.Generator().manual_seed(11)
    for name in ("hint_a.png", "hint_b.png"):  # blocky hints, like edge or segmentation maps
        blocks = torch.rand(8, 8, 3, generator=generator).repeat_interleave(8, 0).repeat_interleave(8, 1)
        (engine.env.input_dir / name).write_bytes(image_to_png_bytes(blocks))
    yield engine, modules, nets
    torch.set_num_threads(threads)


def graph(*controls: dict, steps: int = 10, seed: int = 42) -> dict:
    """txt2img through KSampler with each control applied in turn (keys: net, image, strength, start, end)."""
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    positive, negative = ["6", 0], ["7", 0]
    for k, control in enumerate(controls):
        loader, image, apply = f"{20 + 3 * k}", f"{21 + 3 * k}", f"{22 + 3 * k}"
        prompt[loader] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control["net"]}}
        prompt[image] = {"class_type": "LoadImage", "inputs": {"image": control["image"]}}
        prompt[apply] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": [loader, 0], "image": [image, 0],
            "strength": control.get("strength", 1.0), "start_percent": control.get("start", 0.0),
            "end_percent": control.get("end", 1.0)}}
        positive, negative = [apply, 0], [apply, 1]
    prompt["3"] = {"class_type": "KSampler", "inputs": {
        "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": positive, "negative": negative, "latent_image": ["5", 0]}}
    return prompt


def ours(engine, prompt: dict) -> torch.Tensor:
    return engine.run(from_api(prompt), outputs=["8"]).values["8"][0]


A = {"net": "tiny_ldm.safetensors", "image": "hint_a.png", "strength": 0.8}
B = {"net": "tiny_b_diffusers.safetensors", "image": "hint_b.png", "strength": 0.5}


def test_each_layout_loads_the_source_weights(setup, tmp_path):
    engine, _, nets = setup
    folder = engine.env.models.folder_dirs("controlnet")[0]
    for name, source in (("tiny_ldm.safetensors", nets["a"]), ("tiny_b_diffusers.safetensors", nets["b"]),
                         ("tiny_folder", nets["a"])):
        loaded = load_controlnet(folder / name).model.state_dict()
        expected = source.state_dict()
        assert loaded.keys() == expected.keys(), name
        assert all(torch.equal(loaded[key], expected[key]) for key in expected), name
    # Our original-layout writer and loader share one key map; diffusers' own converter checks it independently.
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    converted = convert_controlnet_checkpoint(load_file(folder / "tiny_ldm.safetensors"), {"layers_per_block": 1})
    assert converted.keys() == nets["a"].state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in nets["a"].state_dict().items())


@pytest.mark.parametrize("controls", [(A,), (A, B)], ids=["one", "two-chained"])
def test_image_equals_diffusers_controlnet_pipeline(setup, controls):
    engine, modules, nets = setup
    image = ours(engine, graph(*controls))
    from PIL import Image

    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    sigma_max = float(scheduler.sigmas.max())
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 42, [0]) * (1 + sigma_max**2) ** 0.5 / float(scheduler.init_noise_sigma)
    which = [nets["a" if c is A else "b"] for c in controls]
    hints = [Image.open(engine.env.input_dir / c["image"]).convert("RGB") for c in controls]
    scales = [c["strength"] for c in controls]
    pipe = StableDiffusionControlNetPipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
        controlnet=which if len(which) > 1 else which[0], scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():
        expected = pipe(PROMPT, hints if len(hints) > 1 else hints[0], negative_prompt="", num_inference_steps=10,
                        guidance_scale=5.0, height=64, width=64, latents=noise, output_type="pt",
                        controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0]).images
    diff = (image.movedim(-1, 1) - expected).abs().max().item()
    plain = ours(engine, graph())
    effect = (image - plain).abs().max().item()
    print(f"controlnet x{len(controls)}: max abs pixel difference {diff:.2e} (control changes pixels by {effect:.2f})")
    assert diff < TOLERANCE
    assert effect > 0.05  # the control really steers the image


def test_strength_zero_is_exactly_no_control_and_percents_matter(setup):
    engine, _, _ = setup
    plain = ours(engine, graph(steps=6))
    assert torch.equal(ours(engine, graph({**A, "strength": 0.0}, steps=6)), plain)
    full = ours(engine, graph(A, steps=6))
    assert torch.equal(ours(engine, graph({**A, "start": 0.0, "end": 1.0}, steps=6)), full)
    first_half = ours(engine, graph({**A, "end": 0.5}, steps=6))
    second_half = ours(engine, graph({**A, "start": 0.5}, steps=6))
    for one, other in ((first_half, full), (second_half, full), (first_half, second_half), (first_half, plain)):
        assert (one - other).abs().max() > 1e-3


def test_percent_window_follows_the_models_sigmas(setup, tmp_path):
    """start/end percent map to sigmas as ComfyUI does; the ControlNet runs only for steps inside the window."""
    engine, _, _ = setup
    loaded = load_checkpoint(engine.env.models.resolve("checkpoints", "tiny.safetensors"), manager=engine.env.manager)
    sigmas = model_sigmas(loaded.model.alphas_cumprod)
    assert percent_to_sigma(0.0, sigmas) == float("inf") and percent_to_sigma(1.0, sigmas) == 0.0
    assert percent_to_sigma(0.5, sigmas) == pytest.approx(float(sigmas[500 - 1] * (sigmas[500] / sigmas[499]) ** 0.5), rel=1e-6)
    net = load_controlnet(engine.env.models.resolve("controlnet", "tiny_ldm.safetensors"))
    calls = []
    hook = net.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        hint = torch.rand(1, 64, 64, 3)
        (positive,), (negative,) = controlnet_nodes.apply_control(
            ((encode(loaded.clip, PROMPT),), (encode(loaded.clip, ""),)), net, hint, 1.0, 0.25, 0.6)
        sample(loaded.model, seed=1, steps=8, cfg=5.0, sampler_name="euler", scheduler="normal",
               positive=(positive,), negative=(negative,), latent=Latent(torch.zeros(1, 4, 8, 8)))
    finally:
        hook.remove()
    steps = sampling_sigmas(loaded.model.alphas_cumprod, "normal", "euler", 8, 1.0)[:-1]
    window = [s for s in steps.tolist() if percent_to_sigma(0.6, sigmas) <= s <= percent_to_sigma(0.25, sigmas)]
    assert 0 < len(window) < len(steps)
    assert len(calls) == len(window)  # positive and negative share one batched ControlNet call per step


def test_each_entry_gets_its_own_residuals_when_batched(setup):
    """A controlled and an uncontrolled entry, or two entries sharing a control, equal their separate evaluations."""
    engine, _, _ = setup
    loaded = load_checkpoint(engine.env.models.resolve("checkpoints", "tiny.safetensors"), manager=engine.env.manager)
    net = load_controlnet(engine.env.models.resolve("controlnet", "tiny_ldm.safetensors"))
    generator = torch.Generator().manual_seed(5)
    first = CondItem(torch.randn(1, 77, 64, generator=generator))
    second = CondItem(torch.randn(1, 77, 64, generator=generator))
    control = ControlApplied(net, torch.rand(1, 3, 64, 64, generator=generator), strength=1.0)
    controlled = CondItem(first.embeds, extras={"control": control})
    also = CondItem(second.embeds, extras={"control": control})
    model = unet_denoiser(loaded.model)
    x, sigma = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([3.0])
    with torch.no_grad():
        for pair in ((controlled, second), (controlled, also)):
            together = calc_cond_batch(model, [[pair[0]], [pair[1]]], x, sigma)
            alone = [calc_cond_batch(model, [[item]], x, sigma)[0] for item in pair]
            for got, want in zip(together, alone):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        uncontrolled = calc_cond_batch(model, [[first]], x, sigma)[0]
        assert (uncontrolled - calc_cond_batch(model, [[controlled]], x, sigma)[0]).abs().max() > 1e-3


def test_hint_is_centre_cropped_and_resized_to_the_latent():
    hint = torch.zeros(1, 3, 32, 64)
    hint[..., 16:48] = 1.0  # the centre square of a 2:1 image
    assert torch.equal(resize_hint(hint, 16, 16), torch.ones(1, 3, 16, 16))
    same = torch.rand(1, 3, 64, 64)
    assert resize_hint(same, 64, 64) is same


def test_bad_files_name_the_file_and_the_problem(setup, tmp_path):
    engine, _, _ = setup
    with pytest.raises(ValueError, match=r"broken\.safetensors: cannot read"):
        load_controlnet(engine.env.models.resolve("controlnet", "broken.safetensors"))
    not_controlnet = tm.write_kohya_lora(tm.sd1_modules(0), tmp_path / "a_lora.safetensors")
    with pytest.raises(ValueError, match=r"a_lora\.safetensors: not a ControlNet"):
        load_controlnet(not_controlnet)
    with pytest.raises(NodeExecutionError, match=r"broken\.safetensors"):
        ours(engine, graph({**A, "net": "broken.safetensors"}, steps=2))


def test_sdxl_controlnet_gets_the_added_conditioning(tmp_path):
    """An SDXL ControlNet (label_emb, heads from metadata) loads from the original layout, and one guided UNet
    evaluation equals diffusers' ControlNet -> UNet calls with the same text_embeds and time_ids."""
    modules = tm.sdxl_modules(0)
    source = tm.tiny_controlnet(modules, seed=9)
    net = load_controlnet(tm.write_controlnet_ldm(source, tmp_path / "xl.safetensors", with_metadata=True))
    assert dict(net.model.config)["attention_head_dim"] == list(source.config.attention_head_dim)
    loaded = load_checkpoint(tm.write_checkpoint(modules, tmp_path / "xl_ckpt.safetensors"))
    generator = torch.Generator().manual_seed(2)
    item = CondItem(torch.randn(1, 77, 96, generator=generator), pooled=torch.randn(1, 64, generator=generator),
                    extras={"control": ControlApplied(net, torch.rand(1, 3, 64, 64, generator=generator), 0.7)})
    x, sigma = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor([1.5])
    model = unet_denoiser(loaded.model)
    with torch.no_grad():
        (got,) = calc_cond_batch(model, [[item]], x, sigma)
        added = {"text_embeds": item.pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
        scaled, t = x / (sigma**2 + 1) ** 0.5, model.timestep(sigma)
        down, mid = source(scaled, t, item.embeds, item.extras["control"].hint, conditioning_scale=0.7,
                           added_cond_kwargs=added, return_dict=False)
        eps = modules.unet(scaled, t, item.embeds, added_cond_kwargs=added, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid).sample
    torch.testing.assert_close(got, x - sigma * eps, rtol=0, atol=1e-5)
