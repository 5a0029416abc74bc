"""The embedded model's own adapters and guidance, measured on what they draw (fixed seeds, shipped workflows).

- Style LoRA (trigger ', striped'): strength 0 is the base image bit for bit; strength 1 raises the background's
  texture energy (mean |difference| of neighbouring background pixels, 0..255; flat about 1.2, the striped
  renders 5) well above the base: at least 2.5x and to 3.0 or more. Measured with scripts/evaluate_adapters.py:
  see the model card's adapters section.
- Outline ControlNet: the generated shape overlaps the outline's shape with IoU >= 0.7 at strength 1,
  clearly less at strength 0; start/end percent change the image.
- SEGA: adding 'red' raises the red pixel fraction, removing it lowers it, for most seeds.
- SAG: differs from plain CFG, is deterministic, and scale 0 is plain CFG exactly.
- Both adapters give diffusers' results (`load_lora_weights`, `StableDiffusionControlNetPipeline`) on
  this model to within 1e-4 per pixel.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from PIL import Image

from nodegraph.formats.api import from_api
from nodes.models.embedded import ADAPTERS, EMBEDDED_NAME, EMBEDDED_PATH, default_adapter_path
from nodes.sd.ksampler import prepare_noise
from nodes.sd.loading import load_checkpoint
from nodes.sd.tokenizer import clip_bpe_tokenizer
from tiny_models import SD_SCHEDULE, engine_at
from training import adapter_eval as ae

LORA_NAME, CONTROL_NAME = ADAPTERS["lora"][1], ADAPTERS["controlnet"][1]
TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(
    not all(p.is_file() for p in (EMBEDDED_PATH, default_adapter_path("lora"), default_adapter_path("controlnet"))),
    reason="the embedded model's adapters are not built yet",
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    (root / "input").mkdir()
    return engine_at(root, input_dir=root / "input")


def lora_graph(engine, prompt: str, seed: int, strength: float):
    graph = ae.workflow(engine, "lora").with_widget("6", "text", prompt).with_widget("3", "seed", seed)
    return graph.with_widget("10", "strength_model", strength).with_widget("10", "strength_clip", strength)


def test_adapters_are_listed_first_and_small(engine):
    assert engine.env.models.list("loras")[0] == LORA_NAME
    assert engine.env.models.list("controlnet")[0] == CONTROL_NAME
    for kind, (folder, _) in ADAPTERS.items():  # whole UNets (checkpoints/) are sized in test_embedded_ip2p_depth
        if folder != "checkpoints":
            assert default_adapter_path(kind).stat().st_size < 8 * 2**20


def test_lora_strength_zero_is_the_base_image_exactly(engine):
    prompt = "a red circle on a blue background, striped"
    base = ae.workflow(engine, "txt2img").with_widget("6", "text", prompt).with_widget("3", "seed", 3)
    for plain, patched in zip(ae.images(engine, base), ae.images(engine, lora_graph(engine, prompt, 3, 0.0))):
        assert np.array_equal(plain, patched)


def test_lora_draws_its_stripes(engine):
    energy = {0.0: [], 1.0: []}
    for seed, prompt in enumerate(["a yellow star on a purple background, striped",
                                   "a red circle on a blue background, striped"]):
        for strength in energy:
            batch = ae.images(engine, lora_graph(engine, prompt, seed, strength))
            energy[strength] += [ae.background_texture(image) for image in batch]
    base, styled = np.mean(energy[0.0]), np.mean(energy[1.0])
    print(f"background texture energy: base {base:.2f}, LoRA {styled:.2f}")
    assert styled >= 2.5 * base and styled >= 3.0, (base, styled)


def test_controlnet_puts_the_shape_on_its_outline(engine):
    on, off = [], []
    for index, spec in enumerate(ae.control_specs(3)):
        input_dir = engine.env.input_dir
        on += ae.control_iou(engine, spec, input_dir, index)
        off += ae.control_iou(engine, spec, input_dir, index, strength=0.0)
    print(f"IoU with the outline's shape: strength 1 {np.mean(on):.2f}, strength 0 {np.mean(off):.2f}")
    assert np.mean(on) >= 0.7
    assert np.mean(off) <= np.mean(on) - 0.2


def test_controlnet_start_and_end_percent_change_the_image(engine):
    spec = ae.control_specs(1)[0]
    graph = ae.workflow(engine, "controlnet").with_widget("10", "image", ae.write_outline(spec, engine.env.input_dir))
    full = ae.images(engine, graph)[0].astype(float)
    for name, value in (("end_percent", 0.3), ("start_percent", 0.5)):
        changed = ae.images(engine, graph.with_widget("12", name, value))[0].astype(float)
        assert np.abs(changed - full).mean() > 1.0, name


def test_sega_moves_the_concept_colour_for_most_seeds(engine):
    def red(graph) -> float:
        return float(np.mean([ae.colour_fraction(torch.from_numpy(i) / 255.0, "red") for i in ae.images(engine, graph)]))

    for text, direction in (("a circle on a blue background", "add"), ("a red circle on a blue background", "remove")):
        moved = 0
        for seed in range(4):
            graph = ae.workflow(engine, "sega").with_widget("6", "text", text).with_widget("3", "seed", seed)
            graph = graph.with_widget("20", "direction", direction)
            plain, guided = red(graph.with_widget("20", "scale", 0.0)), red(graph)
            moved += guided > plain if direction == "add" else guided < plain
        assert moved >= 3, (direction, moved)


def test_sag_differs_from_cfg_is_deterministic_and_scale_zero_is_cfg(engine, tmp_path):
    sag = ae.workflow(engine, "sag")
    plain = ae.images(engine, ae.workflow(engine, "txt2img"))
    assert all(np.array_equal(a, b) for a, b in zip(plain, ae.images(engine, sag.with_widget("20", "scale", 0.0))))
    guided = ae.images(engine, sag)
    assert np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(guided, plain)]) > 0.5
    again = ae.images(engine_at(tmp_path), sag)  # a fresh engine: recomputed, not cached
    assert all(np.array_equal(a, b) for a, b in zip(guided, again))


# -- the same images as diffusers' pipelines ------------------------------------------------------------------


def api_graph(prompt: str, **extra) -> dict:
    """Euler with the 'normal' schedule (diffusers' linspace spacing), 10 steps, one 128 px image, seed 42."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": 10, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        **extra,
    }  # fmt: skip


def diffusers_parts() -> tuple[dict, torch.Tensor]:
    """Private copies of the embedded model's modules, the scheduler, and our seed-42 noise as diffusers' x_T."""
    loaded = load_checkpoint(EMBEDDED_PATH)
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    noise = prepare_noise(torch.zeros(1, 4, 16, 16), 42, [0])
    noise = noise * (1 + float(scheduler.sigmas.max()) ** 2) ** 0.5 / float(scheduler.init_noise_sigma)
    parts = dict(vae=copy.deepcopy(loaded.vae.vae), text_encoder=copy.deepcopy(loaded.clip.encoders[0]),
                 tokenizer=clip_bpe_tokenizer(), unet=copy.deepcopy(loaded.model.unet), scheduler=scheduler,
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    return parts, noise


def run_pipe(pipe, prompt: str, noise: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return pipe(prompt, negative_prompt="", num_inference_steps=10, guidance_scale=6.0, height=128, width=128,
                    latents=noise, output_type="pt", **kwargs).images  # fmt: skip


def test_lora_equals_diffusers_load_lora_weights(engine):
    prompt = "a yellow star on a purple background, striped"
    graph = api_graph(prompt, **{"10": {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": LORA_NAME, "strength_model": 0.8, "strength_clip": 0.8}}})
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["10", 1]
    ours = engine.run(from_api(graph), outputs=["8"]).values["8"][0]
    parts, noise = diffusers_parts()
    pipe = StableDiffusionPipeline(**parts)
    pipe.load_lora_weights(str(default_adapter_path("lora")), adapter_name="striped")
    pipe.set_adapters("striped", 0.8)
    expected = run_pipe(pipe, prompt, noise)
    diff = (ours.movedim(-1, 1) - expected).abs().max().item()
    print(f"LoRA vs diffusers: max abs pixel difference {diff:.2e}")
    assert diff < TOLERANCE


def test_controlnet_equals_diffusers_controlnet_pipeline(engine):
    from nodes.sd.controlnet import load_controlnet

    spec = ae.control_specs(1)[0]
    hint = ae.write_outline(spec, engine.env.input_dir)
    prompt = f"a {spec.fg} {spec.shape} on a {spec.bg} background"
    graph = api_graph(prompt, **{
        "10": {"class_type": "LoadImage", "inputs": {"image": hint}},
        "11": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROL_NAME}},
        "12": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["11", 0], "image": ["10", 0],
            "strength": 0.9, "start_percent": 0.0, "end_percent": 1.0}}})  # fmt: skip
    graph["3"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    ours = engine.run(from_api(graph), outputs=["8"]).values["8"][0]
    parts, noise = diffusers_parts()
    controlnet = copy.deepcopy(load_controlnet(default_adapter_path("controlnet")).model)
    pipe = StableDiffusionControlNetPipeline(controlnet=controlnet, **parts)
    image = Image.open(engine.env.input_dir / hint).convert("RGB")
    expected = run_pipe(pipe, prompt, noise, image=image, controlnet_conditioning_scale=0.9)
    diff = (ours.movedim(-1, 1) - expected).abs().max().item()
    print(f"ControlNet vs diffusers: max abs pixel difference {diff:.2e}")
    assert diff < TOLERANCE
