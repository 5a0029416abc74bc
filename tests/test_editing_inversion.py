"""DDIM inversion, DiffEdit and Pix2Pix-Zero (nodes/sd/inversion.py, diffedit.py, pix2pix_zero.py; nodes/editing)
on the embedded shapes model.

Cross-checks against diffusers, on the same modules: DDIM "trailing" spacing is Euler's method in sigma space on our
"simple" schedule (see test_sag.py), so
- inversion equals a DDIMInverseScheduler loop (set_alpha_to_one: the first step starts from the clean latent);
- DiffEditMask equals StableDiffusionDiffEditPipeline.generate_mask given the latent and the same CPU generator;
- Pix2Pix-Zero's record + guidance + edit direction equals StableDiffusionPix2PixZeroPipeline.__call__ from the same
  inverted latent (both pipelines are in diffusers.pipelines.deprecated).
Effects (scripts/evaluate_editing.py measures them on 16 seeds; docs/controlled_generation_inversion.md) are
asserted here on two seeds with margins.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from editing_helpers import as_uint8, background_for, caption_lists, cond, iou, source_image
from tiny_models import SD_SCHEDULE, engine_at

from nodegraph.formats.api import from_api
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH
from nodes.sd import vae as vae_ops
from nodes.sd.diffedit import binarise, diffedit_mask
from nodes.sd.guiders import CFGGuide
from nodes.sd.inversion import as_noise, image_psnr, inversion_sigmas, invert, latent_psnr, sample_back
from nodes.sd.ksampler import sample_custom
from nodes.sd.noise import Noise
from nodes.sd.pix2pix_zero import add_direction, edit_direction, pix2pix_zero_patch, record_cross_attention
from nodes.sd.sampler_spec import SamplerSpec
from nodes.sd.shapes import COLOURS
from nodes.sd.text import encode
from nodes.sd.tokenizer import clip_bpe_tokenizer
from nodes.sd.types import Latent
from training.classifier import classify

pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model's weights are not built yet")
torch.set_num_threads(1)

STEPS = 10
SOURCE, TARGET = "a red circle on a blue background", "a green circle on a blue background"


@pytest.fixture(scope="module")
def ck():
    from nodes.sd.loading import load_checkpoint

    return load_checkpoint(EMBEDDED_PATH)


def ddim(kind):  # noqa: ANN001
    return kind(**SD_SCHEDULE, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)


# -- DDIM inversion ---------------------------------------------------------------------------------------


def test_inversion_matches_diffusers_ddim_inverse_scheduler(ck):
    src = source_image(ck.vae, "circle", "red", "blue", 0)
    sigmas = inversion_sigmas(ck.model, "simple", STEPS)
    ours = invert(ck.model, cond(ck.clip, SOURCE), cond(ck.clip, ""), 1.0, sigmas, Latent(src.latent)).samples
    scheduler = ddim(DDIMInverseScheduler)
    scheduler.set_timesteps(STEPS)
    embeds = encode(ck.clip, SOURCE).embeds
    latents = src.latent.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = ck.model.unet(latents, t, encoder_hidden_states=embeds).sample
            latents = scheduler.step(eps, t, latents).prev_sample
    theirs = latents * math.sqrt(1.0 + float(sigmas[0]) ** 2)  # VP x_T -> our sigma-scaled x at sigma_max
    assert float((ours - theirs).abs().max()) < 1e-3  # on values up to ~46 (measured 1.4e-4)


def test_round_trip_through_the_sampler_and_refinement(ck):
    src = source_image(ck.vae, "square", "yellow", "purple", 1)
    pos, neg = cond(ck.clip, src.caption), cond(ck.clip, "")
    sigmas = inversion_sigmas(ck.model, "normal", STEPS)
    plain = invert(ck.model, pos, neg, 1.0, sigmas, Latent(src.latent))
    refined = invert(ck.model, pos, neg, 1.0, sigmas, Latent(src.latent), refine_iterations=2)
    _, psnr_plain = latent_psnr(src.latent, sample_back(ck.model, pos, neg, 1.0, sigmas, plain).samples)
    _, psnr_refined = latent_psnr(src.latent, sample_back(ck.model, pos, neg, 1.0, sigmas, refined).samples)
    assert psnr_plain > 30.0  # measured 36.2 dB
    assert psnr_refined > psnr_plain + 2.0  # fixed-point refinement inverts the euler step (measured +4.2 dB)
    # The NOISE form starts SamplerCustomAdvanced at the same point from the source latent.
    noise = as_noise(ck.model, Latent(src.latent), plain, sigmas)
    start = noise.initial(Latent(src.latent)) * math.sqrt(1 + float(sigmas[0]) ** 2) + src.latent
    assert torch.allclose(start, plain.samples, atol=1e-4)


def test_nodes_in_a_graph_round_trip(ck, tmp_path):
    """DDIMInversion -> SamplerCustom (add_noise off, euler, same scheduler) gives the image back; the node's
    reported error is that round trip's; ImageReconstructionError measures the decoded pair."""
    (tmp_path / "input").mkdir()
    src = source_image(ck.vae, "star", "orange", "cyan", 2)
    from PIL import Image

    Image.fromarray(as_uint8(src.image)).save(tmp_path / "input" / "source.png")
    engine = engine_at(tmp_path)
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": src.caption, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "source.png"}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "20": {"class_type": "DDIMInversion", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["11", 0],
            "steps": STEPS, "cfg": 1.0, "scheduler": "simple", "denoise": 1.0, "refine_iterations": 1,
            "report_error": True}},
        "21": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "22": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "simple", "steps": STEPS,
                                                          "denoise": 1.0}},
        "23": {"class_type": "SamplerCustom", "inputs": {
            "model": ["4", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["6", 0],
            "negative": ["7", 0], "sampler": ["21", 0], "sigmas": ["22", 0], "latent_image": ["20", 0]}},
        "24": {"class_type": "VAEDecode", "inputs": {"samples": ["23", 0], "vae": ["4", 2]}},
        "25": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}},
        "26": {"class_type": "ImageReconstructionError", "inputs": {"reference": ["25", 0], "image": ["24", 0]}},
    }
    values = engine.run(from_api(graph), outputs=["20", "23", "26", "11"]).values
    _, _, mse, psnr = values["20"]
    back = values["23"][0].samples
    source = values["11"][0].samples
    assert mse == pytest.approx(float(torch.mean((back - source) ** 2)), rel=1e-3)
    assert psnr > 28.0
    image_mse, image_psnr_db = values["26"]
    assert image_psnr_db > 28.0 and image_mse < 2e-3


def test_image_psnr_formula():
    a = torch.zeros(1, 4, 4, 3)
    b = a + 0.1
    mse, psnr = image_psnr(a, b)
    assert mse == pytest.approx(0.01) and psnr == pytest.approx(20.0)


# -- DiffEdit -----------------------------------------------------------------------------------------


def test_diffedit_mask_matches_diffusers_generate_mask(ck):
    from diffusers import StableDiffusionDiffEditPipeline

    src = source_image(ck.vae, "circle", "red", "blue", 0)
    pipe = StableDiffusionDiffEditPipeline(
        vae=ck.vae.vae, text_encoder=ck.clip.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=ck.model.unet,
        scheduler=ddim(DDIMScheduler), inverse_scheduler=ddim(DDIMInverseScheduler), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe.generate_mask(image=src.latent, source_prompt=SOURCE, target_prompt=TARGET, num_maps_per_mask=4,
                                mask_encode_strength=0.5, mask_thresholding_ratio=3.0, num_inference_steps=STEPS,
                                guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="np")
    pos_s, pos_t, neg = cond(ck.clip, SOURCE), cond(ck.clip, TARGET), cond(ck.clip, "")
    ours, _ = diffedit_mask(ck.model, src.latent, (pos_s, neg), (pos_t, neg), cfg=5.0, scheduler="simple",
                            steps=STEPS, strength=0.5, num_maps=4, threshold_ratio=3.0, seed=7, image_scale=1)
    assert ours.shape == (1, 16, 16) and ours.sum() > 0
    assert np.array_equal(ours.numpy(), theirs.astype(np.float32))


def test_binarise_is_diffusers_rule():
    guidance_map = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])  # mean 2: clamp at 4, threshold at 2 (> 2 is 1)
    assert binarise(guidance_map, 2.0).tolist() == [[[0.0, 0.0], [0.0, 1.0]]]


@pytest.mark.parametrize("seed", [0, 3])
def test_diffedit_recolours_the_shape_and_keeps_the_rest(ck, seed):
    src = source_image(ck.vae, "circle", "red", "blue", seed)
    pos_s, pos_t, neg = cond(ck.clip, SOURCE), cond(ck.clip, TARGET), cond(ck.clip, "")
    mask, _ = diffedit_mask(ck.model, src.latent, (pos_s, neg), (pos_t, neg), cfg=6.0, scheduler="simple",
                            steps=20, strength=0.5, num_maps=10, threshold_ratio=3.0, seed=seed)
    region = mask[0].numpy() > 0.5
    assert iou(region, src.true_mask) > 0.5  # measured 0.86 and 0.62 (16 seeds: docs)
    sigmas = inversion_sigmas(ck.model, "simple", 20)
    inverted = invert(ck.model, pos_s, neg, 1.0, sigmas, Latent(src.latent))
    noise = as_noise(ck.model, Latent(src.latent), inverted, sigmas)
    out = sample_custom(noise, CFGGuide(ck.model, pos_t, neg, 6.0), SamplerSpec("euler"), sigmas,
                        Latent(src.latent, noise_mask=mask[:, None]), keep_denoised=False).output
    edited = vae_ops.decode(ck.vae, out.samples)
    reconstruction = vae_ops.decode(ck.vae, src.latent)
    result = classify(as_uint8(edited))
    assert (result.fg, result.bg) == ("green", "blue")
    # Outside the mask the latent is the source's exactly; decoded pixels still move a little there, since the
    # VAE decoder's mid-block attention and convolutions reach across the mask's edge.
    latent_mask = torch.nn.functional.interpolate(mask[:, None], size=src.latent.shape[-2:], mode="nearest")
    assert float(((out.samples - src.latent) * (1 - latent_mask)).abs().max()) < 1e-5
    outside = (edited - reconstruction).abs().mean(-1)[0].numpy()[~region]
    assert outside.mean() < 0.07  # measured 0.046 and 0.016 (mean |change| in 0..1 outside the mask)


# -- Pix2Pix-Zero ---------------------------------------------------------------------------------------


def test_edit_direction_is_mean_difference():
    a, b, c = torch.ones(1, 3, 2), torch.zeros(1, 3, 2), torch.full((1, 3, 2), 4.0)
    assert torch.equal(edit_direction([a, b], [c]), torch.full((1, 3, 2), 3.5))


def test_pix2pix_zero_matches_diffusers_pipeline(ck):
    from diffusers import StableDiffusionPix2PixZeroPipeline

    src = source_image(ck.vae, "circle", "red", "blue", 0)
    cfg, amount = 3.0, 0.5
    pos, neg = cond(ck.clip, src.caption), cond(ck.clip, "")
    sigmas = inversion_sigmas(ck.model, "simple", STEPS)
    inverted = invert(ck.model, pos, neg, 1.0, sigmas, Latent(src.latent))
    source_caps, target_caps = (captions[::9] for captions in caption_lists("circle", "square"))
    source_embeds = torch.cat([encode(ck.clip, text).embeds for text in source_caps])
    target_embeds = torch.cat([encode(ck.clip, text).embeds for text in target_caps])
    maps, _ = record_cross_attention(CFGGuide(ck.model, pos, neg, cfg), SamplerSpec("euler"), sigmas, inverted)
    edited = add_direction(pos, edit_direction(list(source_embeds.split(1)), list(target_embeds.split(1))))
    guided = ck.model.with_patch(pix2pix_zero_patch(maps, amount))
    run = lambda model: sample_custom(Noise(0, enabled=False), CFGGuide(model, edited, neg, cfg),  # noqa: E731
                                      SamplerSpec("euler"), sigmas, inverted, keep_denoised=False).output.samples
    ours, unguided = run(guided), run(ck.model)

    unet = ck.model.unet
    processors, trainable = unet.attn_processors, {n: p.requires_grad for n, p in unet.named_parameters()}
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=ck.vae.vae, text_encoder=ck.clip.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=unet,
        scheduler=ddim(DDIMScheduler), inverse_scheduler=ddim(DDIMInverseScheduler), safety_checker=None,
        feature_extractor=None, caption_generator=None, caption_processor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    try:
        theirs = pipe(prompt=src.caption, negative_prompt="", source_embeds=source_embeds, target_embeds=target_embeds,
                      num_inference_steps=STEPS, guidance_scale=cfg, cross_attention_guidance_amount=amount,
                      latents=inverted.samples / math.sqrt(1.0 + float(sigmas[0]) ** 2), output_type="latent").images
    finally:  # the pipeline swaps processors and requires_grad on the shared UNet: put them back
        unet.set_attn_processor(processors)
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_(trainable[name])
    effect = float((ours - unguided).abs().max())
    assert effect > 0.01  # the guidance changes the result ...
    assert float((ours - theirs).abs().max()) < 1e-4  # ... exactly as diffusers' does (measured 3e-6)


@pytest.mark.parametrize("seed", [0, 2])
def test_pix2pix_zero_turns_circle_into_square_in_place(ck, seed):
    """scripts/evaluate_editing.py's Pix2Pix-Zero setting (10 steps, cfg 3, amount 0.1) on two of its seeds."""
    fg = list(COLOURS)[seed % len(COLOURS)]
    bg = background_for(seed, (fg,))
    src = source_image(ck.vae, "circle", fg, bg, seed)
    cfg = 3.0
    pos, neg = cond(ck.clip, src.caption), cond(ck.clip, "")
    sigmas = inversion_sigmas(ck.model, "simple", STEPS)
    inverted = invert(ck.model, pos, neg, 1.0, sigmas, Latent(src.latent))
    maps, _ = record_cross_attention(CFGGuide(ck.model, pos, neg, cfg), SamplerSpec("euler"), sigmas, inverted)
    source_caps, target_caps = caption_lists("circle", "square")
    direction = edit_direction([encode(ck.clip, t).embeds for t in source_caps],
                               [encode(ck.clip, t).embeds for t in target_caps])
    guided = ck.model.with_patch(pix2pix_zero_patch(maps, 0.1))
    out = sample_custom(Noise(0, enabled=False), CFGGuide(guided, add_direction(pos, direction), neg, cfg),
                        SamplerSpec("euler"), sigmas, inverted, keep_denoised=False).output
    result = classify(as_uint8(vae_ops.decode(ck.vae, out.samples)))
    assert (result.fg, result.bg, result.shape) == (fg, bg, "square")
    assert math.hypot(result.cx - src.spec.cx, result.cy - src.spec.cy) < 0.1  # measured 0.036 and 0.009
