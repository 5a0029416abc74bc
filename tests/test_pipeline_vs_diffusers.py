"""Text-to-image and img2img through our nodes equal diffusers' pipelines on the same tiny SD1 model.

Same weights (a tiny random SD1 checkpoint written in the original single-file layout and loaded
through CheckpointLoaderSimple), same prompt, seed, steps, cfg and scheduler; diffusers gets our
initial noise as `latents`. Tolerance: max abs pixel difference < 1e-4 (0..1 images, fp32); measured differences are printed (-s).
"""

import pytest
import torch
from diffusers import (DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionPipeline)

from nodegraph.formats.api import from_api
from nodes.sd.ksampler import prepare_noise
from nodes.sd.tokenizer import clip_bpe_tokenizer
from tiny_models import SD_SCHEDULE, engine_at, sd1_modules, write_checkpoint

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodegraph")
    (root / "models" / "checkpoints").mkdir(parents=True)
    modules = sd1_modules(seed=3, text_hidden=64)
    write_checkpoint(modules, root / "models" / "checkpoints" / "tiny.safetensors")
    engine = engine_at(root)
    return engine, modules


def txt2img_prompt(sampler="euler", scheduler="normal", steps=10, cfg=5.0, seed=42, size=64):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "tiny"}},
    }


def pipeline(cls, modules, scheduler):
    return cls(vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
               scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def ours(engine, prompt):
    return engine.run(from_api(prompt), outputs=["8"]).values["8"][0]  # IMAGE [B, H, W, C]


@pytest.mark.parametrize("sampler, scheduler, reference", [
    ("euler", "normal", lambda: EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace")),
    ("euler", "karras", lambda: EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace", use_karras_sigmas=True)),
    ("dpmpp_2m", "simple", lambda: DPMSolverMultistepScheduler(**SD_SCHEDULE, timestep_spacing="trailing",
                                                                 final_sigmas_type="zero")),
])
def test_txt2img_equals_diffusers_pipeline(tiny, sampler, scheduler, reference):
    engine, modules = tiny
    image = ours(engine, txt2img_prompt(sampler, scheduler))
    reference_scheduler = reference()
    reference_scheduler.set_timesteps(10)
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 42, [0])
    if hasattr(reference_scheduler, "sigmas") and float(reference_scheduler.init_noise_sigma) > 1:
        # Like ComfyUI we start pure-noise sampling at x_T = sqrt(1 + sigma_max^2) * noise (the VP marginal);
        # diffusers' Euler multiplies by its `init_noise_sigma` (sigma_max alone for linspace spacing), so it
        # gets noise pre-scaled to the same x_T. (DPM-Solver works on VP latents: x_T = noise, as ours.)
        sigma_max = float(reference_scheduler.sigmas.max())
        noise = noise * (1 + sigma_max**2) ** 0.5 / float(reference_scheduler.init_noise_sigma)
    with torch.no_grad():  # 10 steps: linspace timesteps are whole numbers, so no interpolation rule differs
        expected = pipeline(StableDiffusionPipeline, modules, reference_scheduler)(
            "a red circle on a blue background", negative_prompt="", num_inference_steps=10, guidance_scale=5.0,
            height=64, width=64, latents=noise, output_type="pt").images
    diff = (image.movedim(-1, 1) - expected).abs().max().item()
    print(f"{sampler}/{scheduler}: max abs pixel difference {diff:.2e}")
    assert diff < TOLERANCE, f"{sampler}/{scheduler}: max abs pixel difference {diff:.2e}"
    assert image.std() > 0.01  # a real picture, not a constant


def test_img2img_equals_diffusers_pipeline(tiny):
    """denoise 0.625 over 10 steps runs the last 10 of a 16-step schedule: diffusers' strength 0.625 at 16 steps."""
    engine, modules = tiny
    from nodes.image import image_to_png_bytes

    torch.manual_seed(0)
    (engine.env.input_dir / "init.png").write_bytes(image_to_png_bytes(torch.rand(64, 64, 3)))
    prompt = txt2img_prompt(steps=10)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "init.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"].update(latent_image=["11", 0], denoise=0.625)
    result = engine.run(from_api(prompt), outputs=["8", "11"])
    image, init_latents = result.values["8"][0], result.values["11"][0].samples

    reference = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace")
    with torch.no_grad():  # 4-channel input is taken as latents; the generator then draws our noise
        expected = pipeline(StableDiffusionImg2ImgPipeline, modules, reference)(
            "a red circle on a blue background", image=init_latents, strength=0.625, num_inference_steps=16,
            guidance_scale=5.0, negative_prompt="", generator=torch.Generator().manual_seed(42),
            output_type="pt").images
    diff = (image.movedim(-1, 1) - expected).abs().max().item()
    print(f"img2img: max abs pixel difference {diff:.2e}")
    assert diff < TOLERANCE, f"img2img: max abs pixel difference {diff:.2e}"


def test_inpainting_keeps_the_unmasked_half(tiny):
    """SetLatentNoiseMask: the sampler changes only the masked half; the other half decodes as the original."""
    engine, _ = tiny
    from nodes.image import image_to_png_bytes

    torch.manual_seed(1)
    (engine.env.input_dir / "inpaint.png").write_bytes(image_to_png_bytes(torch.rand(64, 64, 3)))
    base = txt2img_prompt(steps=6)
    base["10"] = {"class_type": "LoadImage", "inputs": {"image": "inpaint.png"}}
    base["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1.0
    from nodes.latent import SetLatentNoiseMask

    encoded = engine.run(from_api(base), outputs=["11"]).values["11"][0]
    (masked,) = SetLatentNoiseMask.execute(None, samples=encoded, mask=mask)
    from nodes.sd.ksampler import sample

    loaded = engine.run(from_api(base), outputs=["4", "6", "7"]).values
    out = sample(loaded["4"][0], seed=5, steps=6, cfg=5.0, sampler_name="euler", scheduler="normal",
                 positive=loaded["6"][0], negative=loaded["7"][0], latent=masked)
    assert torch.equal(out.samples[..., :4], encoded.samples[..., :4])  # latent columns 0-3 = pixels 0-31
    assert (out.samples[..., 4:] - encoded.samples[..., 4:]).abs().mean() > 0.05


def test_diffusers_folder_is_listed_and_loads_like_the_single_file(tiny, tmp_path):
    engine, modules = tiny
    from tiny_models import write_diffusers_folder

    write_diffusers_folder(modules, engine.env.models.folder_dirs("checkpoints")[0] / "tiny-diffusers")
    options = engine.registry["CheckpointLoaderSimple"].schema.input("ckpt_name").resolve_options(engine.env)
    assert "tiny-diffusers" in options and "tiny.safetensors" in options
    single = ours(engine, txt2img_prompt(steps=4))
    prompt = txt2img_prompt(steps=4)
    prompt["4"]["inputs"]["ckpt_name"] = "tiny-diffusers"
    assert torch.equal(ours(engine, prompt), single)


def test_bf16_unet_on_cpu_stays_close_to_the_fp32_reference(tiny):
    engine, _ = tiny
    reference = ours(engine, txt2img_prompt(steps=6))
    engine.env.precision = "bf16"
    try:
        engine.cache.clear()
        image = ours(engine, txt2img_prompt(steps=6))
    finally:
        engine.env.precision = "auto"
        engine.cache.clear()
    diff = (image - reference).abs()
    print(f"bf16 vs fp32: mean {diff.mean():.2e}, max {diff.max():.2e}")
    assert diff.mean() < 0.05 and not torch.equal(image, reference)


def test_cli_runs_an_sd_workflow_with_step_progress_and_embedded_workflow(tiny, tmp_path, capsys):
    engine, _ = tiny
    import json

    from PIL import Image

    from nodegraph.cli import main

    path = tmp_path / "txt2img_api.json"
    path.write_text(json.dumps(txt2img_prompt(steps=4)))
    models = engine.env.models.roots[0]
    assert main(["run", str(path), "--models-dir", str(models), "--output-dir", str(tmp_path / "out"),
                 "--set", "3.seed=9"]) == 0
    captured = capsys.readouterr()
    assert "step 4/4" in captured.err and "KSampler #3" in captured.err
    png = tmp_path / "out" / "tiny_00001_.png"
    assert str(png) in captured.out
    with Image.open(png) as image:
        assert image.size == (64, 64)
        assert json.loads(image.text["prompt"])["3"]["inputs"]["seed"] == 9
        assert {"nodes", "links"} <= set(json.loads(image.text["workflow"]))
        assert json.loads(image.text["nodegraph_workflow"])["nodes"]["3"]["widgets"]["seed"] == 9
