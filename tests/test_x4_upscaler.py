"""Stable Diffusion's x4 upscaler: its checkpoints load (real LDM single-file layout and diffusers folder) and the
SD_4XUpscale_Conditioning -> KSampler -> VAEDecode chain equals diffusers' StableDiffusionUpscalePipeline.

The tiny model (tests/tiny_x4.py) has the real architecture's traits at small widths and is written without
metadata, so detection works from the layout alone. Equality with diffusers: same weights, same text embeddings
(passed as prompt_embeds: the text encoder is not what is checked here), same low-res image, augmentation noise and
initial noise, Euler on the x4 schedule with v-prediction. Tolerance 1e-4 on 0..1 pixels, as for the SD1 pipeline
test (tests/test_pipeline_vs_diffusers.py): both sides run the same fp32 operations in the same order except the
sigma/timestep arithmetic (float64 on ours), which measures at ~1e-6; a wrong schedule, prediction type, class label
or concat changes pixels by more than 1e-2.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, StableDiffusionUpscalePipeline
from safetensors.torch import load_file, save_file

from nodegraph.formats.api import from_api
from nodegraph.models import resolve
from nodes.control.upscale_diffusion import SD_4XUpscale_Conditioning
from nodes.sd.cond_batch import calc_cond_batch
from nodes.sd.denoisers import unet_denoiser
from nodes.sd.ksampler import prepare_noise
from nodes.sd.loading import load_checkpoint, open_checkpoint
from nodes.sd.loading.build import new_unet, new_vae
from nodes.sd.loading.configs import template, vae_config_from_weights
from nodes.sd.loading.keymap import to_original, unet_rules, vae_rules
from nodes.sd.loading.x4_upscaler import X4_KIND, x4_unet_config
from tiny_models import engine_at, make_sd2_checkpoint
from tiny_x4 import X4_DIFFUSERS_SCHEDULE, write_x4_checkpoint, write_x4_diffusers_folder, x4_modules

TOLERANCE = 1e-4
PROMPT = "a red circle on a blue background"
STEPS, CFG, SEED, AUGMENTATION = 4, 4.0, 7, 0.1  # 4 linspace steps: whole timesteps (999, 666, 333, 0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("x4")
    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    modules = x4_modules(seed=11)
    write_x4_checkpoint(modules, checkpoints / "x4-upscaler-ema.safetensors")
    engine = engine_at(root)
    from nodes.image import image_to_png_bytes

    low_res = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(5))
    (engine.env.input_dir / "low_res.png").write_bytes(image_to_png_bytes(low_res))
    return engine, modules


def upscale_prompt(ckpt="x4-upscaler-ema.safetensors", augmentation=AUGMENTATION, sampler="euler", scheduler="normal"):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "low_res.png"}},
        "5": {"class_type": "SD_4XUpscale_Conditioning", "inputs": {
            "images": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "scale_ratio": 4.0,
            "noise_augmentation": augmentation}},
        "6": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": sampler, "scheduler": scheduler, "denoise": 1.0,
            "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["5", 2]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
    }


def x4_pipeline(modules, scheduler):
    return StableDiffusionUpscalePipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=None, unet=modules.unet,
        low_res_scheduler=DDPMScheduler(**{**X4_DIFFUSERS_SCHEDULE, "prediction_type": "epsilon"}),
        scheduler=scheduler, max_noise_level=350)


def test_the_real_ldm_layout_is_detected_as_the_x4_upscaler_and_loads_exactly(tiny):
    engine, modules = tiny
    path = engine.env.models.resolve("checkpoints", "x4-upscaler-ema.safetensors")
    source = open_checkpoint(path)
    assert (source.family, source.kind, source.prediction) == ("sd2", X4_KIND, "v_prediction")
    assert source.schedule == {"beta_schedule": "scaled_linear", "beta_start": 0.0001, "beta_end": 0.02,
                               "num_train_timesteps": 1000}
    assert source.unet_config["only_cross_attention"] == [True, True, False]  # as the source UNet was built
    assert source.unet_config["num_class_embeds"] == 1000 and source.unet_config["in_channels"] == 7
    loaded = load_checkpoint(path)
    assert loaded.kind == X4_KIND and loaded.vae.scaling_factor == 0.08333 and loaded.model.prediction == "v_prediction"
    for ours, theirs in ((resolve(loaded.model.unet_ref), modules.unet), (resolve(loaded.vae.vae_ref), modules.vae)):
        mine, want = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in want)
    # the schedule is diffusers' scaled_linear 1e-4..0.02 (LDM's "linear"), not SD's 0.00085..0.012
    reference = DDPMScheduler(**X4_DIFFUSERS_SCHEDULE).alphas_cumprod.double()
    torch.testing.assert_close(loaded.model.alphas_cumprod.double(), reference, rtol=1e-6, atol=1e-7)


def test_ordinary_sd2_checkpoints_are_not_taken_for_the_x4_upscaler(tmp_path):
    assert open_checkpoint(make_sd2_checkpoint(tmp_path)).kind == "sd"


def test_full_size_layout_gives_the_published_diffusers_configs():
    """The real x4-upscaler-ema's shapes (a meta-device model in the LDM layout, no weights) give diffusers'
    published unet/vae configs, including [True, True, True, False] where the 1024-wide level cannot tell."""
    want = template("sd_x4_unet.json")
    unet = new_unet(want)
    shapes = to_original(unet_rules(list(unet.state_dict()), want), unet.state_dict())
    got = x4_unet_config(shapes, {})
    for key in ("in_channels", "block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                "cross_attention_dim", "attention_head_dim", "use_linear_projection", "num_class_embeds",
                "only_cross_attention"):
        assert got[key] == want[key], key
    assert "label_emb.weight" in shapes and tuple(shapes["label_emb.weight"].shape) == (1000, 1024)
    vae_want = template("sd_x4_vae.json")
    vae = new_vae(vae_want)
    vae_shapes = to_original(vae_rules(list(vae.state_dict()), vae_want), vae.state_dict())
    vae_got = vae_config_from_weights(vae_shapes, "sd2", {"scaling_factor": 0.08333})
    assert vae_got["block_out_channels"] == [128, 256, 512] and vae_got["layers_per_block"] == 2
    assert vae_got["scaling_factor"] == 0.08333


def test_one_denoiser_step_equals_the_upscale_pipelines_unet_call(tiny):
    """Ours: conditioning from the node, CFG's cond/uncond batched by calc_cond_batch, v -> x0 in VDenoiser.
    diffusers: the pipeline's own input assembly (scale, concat, class labels) and Euler's v -> x0."""
    engine, modules = tiny
    values = engine.run(from_api(upscale_prompt()), outputs=["1", "2", "3", "4"]).values
    model, positive, negative, image = values["1"][0], values["2"][0], values["3"][0], values["4"][0]
    pos, neg, latent = SD_4XUpscale_Conditioning.execute(None, images=image, positive=positive, negative=negative,
                                                          scale_ratio=4.0, noise_augmentation=AUGMENTATION)
    denoiser = unet_denoiser(model)
    scheduler = EulerDiscreteScheduler(**X4_DIFFUSERS_SCHEDULE, timestep_spacing="linspace")
    scheduler.set_timesteps(STEPS)
    t, sigma = scheduler.timesteps[1], scheduler.sigmas[1]
    x = torch.randn(latent.samples.shape, generator=torch.Generator().manual_seed(1)) * (sigma**2 + 1) ** 0.5
    with torch.no_grad():
        got_pos, got_neg = calc_cond_batch(denoiser, [pos, neg], x, sigma.reshape(1))
        low = image.movedim(-1, 1) * 2 - 1
        level = torch.tensor([round(350 * AUGMENTATION)])
        low = DDPMScheduler(**{**X4_DIFFUSERS_SCHEDULE, "prediction_type": "epsilon"}).add_noise(
            low, torch.randn(low.shape, generator=torch.Generator().manual_seed(0)), level)
        scheduler._step_index = None
        inputs = torch.cat([scheduler.scale_model_input(torch.cat([x, x]), t), torch.cat([low, low])], dim=1)
        embeds = torch.cat([positive[0].embeds, negative[0].embeds])
        v = modules.unet(inputs, t, encoder_hidden_states=embeds, class_labels=level.repeat(2)).sample
        x0 = v * (-sigma / (sigma**2 + 1) ** 0.5) + torch.cat([x, x]) / (sigma**2 + 1)
    diff = max((got_pos - x0[:1]).abs().max().item(), (got_neg - x0[1:]).abs().max().item())
    print(f"one step: max abs x0 difference {diff:.2e}")
    assert diff < 1e-5
    assert (x0[:1] - x0[1:]).abs().max() > 1e-3  # the prompt reaches the UNet, so the check can fail


@pytest.mark.parametrize("sampler, scheduler, reference", [
    ("euler", "normal", lambda: EulerDiscreteScheduler(**X4_DIFFUSERS_SCHEDULE, timestep_spacing="linspace")),
    # SD's DDIM config (leading spacing, steps_offset 1: timesteps 751, 501, 251, 1) is ComfyUI's ddim_uniform
    ("ddim", "ddim_uniform", lambda: DDIMScheduler(**X4_DIFFUSERS_SCHEDULE, timestep_spacing="leading", steps_offset=1,
                                                   clip_sample=False, set_alpha_to_one=True)),
])
def test_upscale_workflow_equals_diffusers_upscale_pipeline(tiny, sampler, scheduler, reference):
    engine, modules = tiny
    prompt = upscale_prompt(sampler=sampler, scheduler=scheduler)
    result = engine.run(from_api(prompt), outputs=["2", "3", "4", "7"]).values
    image, low_res = result["7"][0], result["4"][0]
    assert image.shape == (1, 64, 64, 3)  # 4x the 16 px input
    reference = reference()
    reference.set_timesteps(STEPS)
    noise = prepare_noise(torch.zeros(1, 4, 16, 16), SEED, [0])
    if hasattr(reference, "sigmas"):  # ours starts at sqrt(1 + sigma_max^2) * noise, as ComfyUI, at t = 999
        sigma_max = float(reference.sigmas.max())
        noise = noise * (1 + sigma_max**2) ** 0.5 / float(reference.init_noise_sigma)
    else:  # DDIM works on VP latents; ComfyUI starts below t = 999 at sigma * noise, i.e. sigma / sqrt(1 + sigma^2) there
        alpha = float(reference.alphas_cumprod[int(reference.timesteps[0])])
        sigma = ((1 - alpha) / alpha) ** 0.5
        noise = noise * sigma / (1 + sigma**2) ** 0.5
    with torch.no_grad():
        expected = x4_pipeline(modules, reference)(
            prompt_embeds=result["2"][0][0].embeds, negative_prompt_embeds=result["3"][0][0].embeds,
            image=low_res.movedim(-1, 1), num_inference_steps=STEPS, guidance_scale=CFG,
            noise_level=round(350 * AUGMENTATION), generator=torch.Generator().manual_seed(0), latents=noise,
            output_type="pt").images
    diff = (image.movedim(-1, 1) - expected).abs().max().item()
    print(f"x4 upscale {sampler}/{scheduler}: max abs pixel difference {diff:.2e}")
    assert diff < TOLERANCE
    assert image.std() > 0.01


def test_the_diffusers_folder_layout_loads_and_upscales_like_the_single_file(tiny):
    engine, modules = tiny
    folder = engine.env.models.folder_dirs("checkpoints")[0] / "stable-diffusion-x4-upscaler"
    write_x4_diffusers_folder(modules, folder)
    source = open_checkpoint(folder)
    assert (source.family, source.kind, source.prediction) == ("sd2", X4_KIND, "v_prediction")
    assert source.vae_config["scaling_factor"] == 0.08333
    single = engine.run(from_api(upscale_prompt()), outputs=["7"]).values["7"][0]
    from_folder = engine.run(from_api(upscale_prompt("stable-diffusion-x4-upscaler")), outputs=["7"]).values["7"][0]
    assert torch.equal(from_folder, single)


def _broken(tmp_path, edit):
    modules = x4_modules(seed=2)
    path = write_x4_checkpoint(modules, tmp_path / "x4.safetensors")
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"model.diffusion_model.label_emb.weight": torch.zeros(1000, 64)}),
     "label_emb.weight has width 64, the time embedding 128"),
    (lambda t: t.update({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 8, 3, 3)}),
     "takes 8 input channels, but an x4 upscaler takes its 4 latent channels plus 3"),
    (lambda t: t.pop("first_stage_model.decoder.up.0.block.0.conv1.weight"),
     "VAE weights do not match its architecture; 1 missing: decoder.up.0.block.0.conv1.weight"),
    (lambda t: t.update({"model.diffusion_model.input_blocks.5.1.transformer_blocks.0.attn1.to_k.weight":
                         torch.zeros(64, 48)}),
     "attn1.to_k.weight: shape (64, 48) in the file, the model needs (64, 64)"),
])
def test_broken_x4_files_fail_in_the_loader_naming_what_is_wrong(tmp_path, edit, message):
    path = _broken(tmp_path, edit)
    with pytest.raises(ValueError) as error:
        open_checkpoint(path)
    assert message in str(error.value)


def test_checkpoint_save_round_trip_keeps_the_x4_schedule_and_kind(tiny, tmp_path):
    """CheckpointSave's tensors and metadata reopen as the x4 upscaler, on its own schedule, v-prediction."""
    import json

    from nodes.sd.loading.configs import METADATA_KEY
    from nodes.sd.saving import checkpoint_tensors

    engine, _ = tiny
    loaded = load_checkpoint(engine.env.models.resolve("checkpoints", "x4-upscaler-ema.safetensors"))
    tensors, config = checkpoint_tensors(loaded.model, loaded.clip, loaded.vae)
    assert config["schedule"]["beta_start"] == 0.0001 and config["schedule"]["beta_end"] == 0.02
    path = tmp_path / "saved_x4.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(config)})
    again = load_checkpoint(path)
    assert again.kind == X4_KIND and again.model.prediction == "v_prediction" and again.vae.scaling_factor == 0.08333
    torch.testing.assert_close(again.model.alphas_cumprod, loaded.model.alphas_cumprod)
    mine, want = resolve(again.model.unet_ref).state_dict(), resolve(loaded.model.unet_ref).state_dict()
    assert all(torch.equal(mine[k], want[k]) for k in want)


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_unet_only_x4_files_load_as_the_x4_upscaler(tiny, tmp_path, layout):
    """UNETLoader's reader: an x4 UNet alone, in the LDM or the diffusers key layout."""
    from nodes.sd.loading.export import unet_state_dict
    from nodes.sd.unet_only import UnetFile

    _, modules = tiny
    tensors = unet_state_dict(modules.unet, prefix="") if layout == "ldm" else dict(modules.unet.state_dict())
    path = tmp_path / f"x4_unet_{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    unet_file = UnetFile(path)
    assert (unet_file.kind, unet_file.prediction, unet_file.schedule["beta_end"]) == (X4_KIND, "v_prediction", 0.02)
    built = unet_file.build(device="cpu", dtype=torch.float32)
    want = modules.unet.state_dict()
    assert all(torch.equal(built.state_dict()[k], want[k]) for k in want)
