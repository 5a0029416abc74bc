"""InstructPix2Pix (8-channel UNet) and depth-to-image (5-channel UNet) through our nodes equal diffusers'
StableDiffusionInstructPix2PixPipeline and StableDiffusionDepth2ImgPipeline on the same weights.

Tiny random SD1 models whose conv_in is widened (the extra input weights random, so the image and depth
inputs visibly matter) are written as ordinary single-file checkpoints and loaded through
CheckpointLoaderSimple; diffusers' pipelines are built offline from the very modules written. Same seed, steps
and Euler scheduler; diffusers gets our initial noise. Tolerance: max abs pixel difference < 1e-4 (fp32).

Documented difference: diffusers' depth pipeline is img2img only (it noises the encoded input image at the first
timestep), so for the comparison its `prepare_latents` returns our pure-noise x_T (KSampler at denoise 1 on an
empty latent); the depth map path (resize, normalisation, 5th channel, CFG) is diffusers' own.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionDepth2ImgPipeline, StableDiffusionInstructPix2PixPipeline

from nodegraph.formats.api import from_api
from nodes.sd.ksampler import prepare_noise
from nodes.sd.tokenizer import clip_bpe_tokenizer
from tiny_models import SD_SCHEDULE, engine_at, randomize, sd1_modules, write_checkpoint
from training.concat_unet import widen_conv_in

TOLERANCE = 1e-4
SIZE, STEPS, SEED = 64, 4, 42


def widened(in_channels: int, seed: int):
    modules = sd1_modules(seed=seed, text_hidden=64)
    unet = widen_conv_in(modules.unet, in_channels)
    with torch.no_grad():  # random weights for the new channels too, so what they read shows in the image
        extra = randomize(copy.deepcopy(unet.conv_in), seed + 10).weight[:, 4:]
        unet.conv_in.weight[:, 4:] = extra * 3.0
    return modules


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip2p_depth")
    pix2pix, depth_model = widened(8, 3), widened(5, 5)
    write_checkpoint(pix2pix, root / "models" / "checkpoints" / "pix2pix.safetensors")
    write_checkpoint(depth_model, root / "models" / "checkpoints" / "depth.safetensors")
    engine = engine_at(root)
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(SIZE, SIZE, 3, generator=generator) * 255).round() / 255  # what the PNG holds exactly
    from nodes.image import image_to_png_bytes

    (engine.env.input_dir).mkdir(parents=True, exist_ok=True)
    (engine.env.input_dir / "input.png").write_bytes(image_to_png_bytes(pixels))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = (yy - 24) ** 2 + (xx - 36) ** 2 < 18**2
    from nodes.sd.depth import height_field

    depth = torch.from_numpy(height_field(mask))
    (engine.env.input_dir / "depth.png").write_bytes(image_to_png_bytes(depth[..., None].expand(-1, -1, 3)))
    depth = (depth * 255).round() / 255
    return engine, pix2pix, depth_model, depth, pixels


def scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace")


def x_t(reference: EulerDiscreteScheduler) -> torch.Tensor:
    """Our initial noise for seed SEED at sigma_max, x_T = sqrt(1 + sigma_max^2) * noise (KSampler at denoise 1)."""
    reference.set_timesteps(STEPS)
    noise = prepare_noise(torch.zeros(1, 4, SIZE // 8, SIZE // 8), SEED, [0])
    return noise * (1 + float(reference.sigmas.max()) ** 2) ** 0.5


def pix2pix_graph(instruction: str, text_scale: float, image_scale: float) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "pix2pix.safetensors"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "input.png"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": instruction, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "11": {"class_type": "InstructPixToPixConditioning",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0]}},
        "12": {"class_type": "DualCFGGuider", "inputs": {
            "model": ["4", 0], "cond1": ["11", 0], "cond2": ["11", 1], "negative": ["7", 0],
            "cfg_conds": text_scale, "cfg_cond2_negative": image_scale, "style": "regular"}},
        "13": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "14": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "15": {"class_type": "BasicScheduler",
               "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": STEPS, "denoise": 1.0}},
        "3": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["13", 0], "guider": ["12", 0], "sampler": ["14", 0], "sigmas": ["15", 0],
            "latent_image": ["11", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def depth_graph(prompt: str, cfg: float) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "depth.safetensors"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "depth.png"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "12": {"class_type": "DepthToImageConditioning",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "depth": ["10", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["12", 0], "negative": ["12", 1], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def run(engine, graph: dict, outputs=("8",)) -> dict:
    return engine.run(from_api(graph), outputs=list(outputs)).values


@pytest.mark.parametrize("text_scale, image_scale", [(5.0, 1.5), (3.0, 2.5)])
def test_instruct_pix2pix_equals_diffusers_pipeline(tiny, text_scale, image_scale):
    engine, modules, _, _, pixels = tiny
    ours = run(engine, pix2pix_graph("make the circle green", text_scale, image_scale))["8"][0]
    reference = scheduler()
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
        scheduler=reference, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    noise = x_t(reference) / float(reference.init_noise_sigma)  # the pipeline multiplies by init_noise_sigma
    with torch.no_grad():
        expected = pipe("make the circle green", image=pixels.movedim(-1, 0)[None], num_inference_steps=STEPS,
                        guidance_scale=text_scale, image_guidance_scale=image_scale, negative_prompt="",
                        latents=noise, output_type="pt").images
    diff = (ours.movedim(-1, 1) - expected).abs().max().item()
    print(f"InstructPix2Pix text {text_scale}, image {image_scale}: max abs pixel difference {diff:.2e}")
    assert diff < TOLERANCE
    assert ours.std() > 0.01


def test_instruct_pix2pix_image_input_changes_the_result(tiny):
    """The cross-check would pass vacuously if the image latent never reached the UNet: a different input
    image must give a different edit."""
    engine, _, _, _, pixels = tiny
    from nodes.image import image_to_png_bytes

    first = run(engine, pix2pix_graph("make the circle green", 5.0, 1.5))["8"][0]
    (engine.env.input_dir / "input.png").write_bytes(image_to_png_bytes(1.0 - pixels))
    try:
        second = run(engine, pix2pix_graph("make the circle green", 5.0, 1.5))["8"][0]
    finally:
        (engine.env.input_dir / "input.png").write_bytes(image_to_png_bytes(pixels))
    assert (first - second).abs().mean() > 0.01


def test_depth2img_equals_diffusers_pipeline(tiny):
    engine, _, modules, depth, pixels = tiny
    values = run(engine, depth_graph("a red circle on a blue background", 5.0), outputs=("8", "12"))
    ours, concat = values["8"][0], values["12"][0][0].concat.latent
    reference = scheduler()
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
        scheduler=reference, depth_estimator=None, feature_extractor=None)
    start = x_t(reference)
    pipe.prepare_latents = lambda *args, **kwargs: start.clone()  # see the module docstring
    with torch.no_grad():
        expected_depth = pipe.prepare_depth_map(pixels.movedim(-1, 0)[None], depth[None], 1, False, torch.float32,
                                                torch.device("cpu"))
        expected = pipe("a red circle on a blue background", image=pixels.movedim(-1, 0)[None], depth_map=depth[None],
                        strength=1.0, num_inference_steps=STEPS, guidance_scale=5.0, negative_prompt="",
                        output_type="pt").images
    assert torch.allclose(concat, expected_depth, atol=1e-5)  # DepthToImageConditioning = prepare_depth_map
    diff = (ours.movedim(-1, 1) - expected).abs().max().item()
    print(f"depth2img: max abs pixel difference {diff:.2e}")
    assert diff < TOLERANCE
    assert ours.std() > 0.01


def test_depth_model_without_depth_conditioning_says_which_node_is_missing(tiny):
    engine, *_ = tiny
    graph = depth_graph("a red circle", 5.0)
    graph["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    with pytest.raises(Exception, match="DepthToImageConditioning"):
        run(engine, graph)
