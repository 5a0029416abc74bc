"""Attend-and-Excite (nodes/sd/attend_excite.py) and MultiDiffusion (nodes/sd/multidiffusion.py) on the embedded model.

Cross-checks: diffusers' StableDiffusionAttendAndExcitePipeline and StableDiffusionPanoramaPipeline built from the
embedded model's own modules, with DDIMScheduler (eta 0, "trailing" spacing, alpha 1 at the end, no clipping): that
is Euler in sigma space on our "simple" schedule, from the same noise. Tolerance: max abs latent difference < 1e-4
on latents up to ~2.5 (measured 6.0e-6 and 3.3e-5 at these 5 steps). Documented settings that differ from the pipelines' defaults:
diffusers' A&E softmax spans positions 1..75 (padding included) where the paper's code and our node span the
prompt's own tokens, so the cross-check builds the patch with stop=76; the panorama pipeline's window (64) and
stride (8) are fixed in get_views, so the check passes window 16 (the embedded model's 16 x 16 latent) to it.
Measured effects (scripts/evaluate_guidance_methods.py, docs/controlled_generation_guidance.md) are asserted here
on a few seeds with margins.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionAttendAndExcitePipeline, StableDiffusionPanoramaPipeline
from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
    pipeline_stable_diffusion_attend_and_excite as diffusers_ae,
)
from tiny_models import SD_SCHEDULE, engine_at

from nodegraph.formats.api import from_api
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH
from nodes.sd.attend_excite import (
    AttendAndExcite, ExciteSettings, attend_excite_patch, max_attention_per_token, parse_thresholds, smoothing_kernel,
    subject_token_positions,
)
from nodes.sd.denoisers import CFGDenoiser, unet_denoiser
from nodes.sd.ksampler import ksampler_sigmas, sample
from nodes.sd.loading import load_checkpoint
from nodes.sd.multidiffusion import fused_call, multidiffusion_patch, view_weights, views
from nodes.sd.noise import prepare_noise
from nodes.sd.text import encode
from nodes.sd.tokenizer import clip_bpe_tokenizer
from nodes.sd.types import Latent
from nodes.sd.vae import decode
from training.adapter_eval import colour_fraction
from training.classifier import classify
from training.guidance_eval import seam_ratio, window_edges

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model's weights are not built yet")

AE_PROMPT = "a red circle and a blue square"
PANORAMA_PROMPT = "a red circle on a blue background"
CFG = 6.0


@pytest.fixture(scope="module")
def embedded():
    return load_checkpoint(EMBEDDED_PATH)


def ddim() -> DDIMScheduler:
    return DDIMScheduler(**SD_SCHEDULE, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)


def ours(model, clip, prompt: str, shape: tuple[int, ...], steps: int, seed: int = 42) -> torch.Tensor:
    return sample(model, seed=seed, steps=steps, cfg=CFG, sampler_name="euler", scheduler="simple",
                  positive=[encode(clip, prompt)], negative=[encode(clip, "")], latent=Latent(torch.zeros(shape))).samples


def test_attend_and_excite_matches_diffusers_pipeline(embedded):
    model, clip, vae = embedded.model, embedded.clip, embedded.vae
    steps, indices = 5, (3, 7)  # "simple" equals DDIM "trailing" when steps divide 1000
    settings = ExciteSettings(indices=indices, stop=76, max_iter_to_alter=3, attention_downscale=2)
    excited = ours(model.with_patch(attend_excite_patch(settings)), clip, AE_PROMPT, (1, 4, 16, 16), steps)
    plain = ours(model, clip, AE_PROMPT, (1, 4, 16, 16), steps)
    processors = dict(model.unet.attn_processors)
    pipe = StableDiffusionAttendAndExcitePipeline(
        vae=vae.vae, text_encoder=clip.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=model.unet, scheduler=ddim(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    try:
        reference = pipe(AE_PROMPT, token_indices=list(indices), negative_prompt="", num_inference_steps=steps,
                         guidance_scale=CFG, height=128, width=128, latents=prepare_noise(torch.zeros(1, 4, 16, 16), 42),
                         output_type="latent", max_iter_to_alter=3, attn_res=(8, 8)).images
    finally:
        model.unet.set_attn_processor(processors)
    diff = (excited - reference).abs().max().item()
    effect = (reference - plain).abs().max().item()
    print(f"A&E vs diffusers: max abs diff {diff:.2e}; A&E effect (vs plain) {effect:.2f}")
    assert diff < 1e-4 and effect > 0.1


def test_panorama_matches_diffusers_pipeline(embedded):
    model, clip, vae = embedded.model, embedded.clip, embedded.vae
    steps, shape = 5, (1, 4, 16, 64)
    fused = ours(model.with_patch(multidiffusion_patch(16, 8)), clip, PANORAMA_PROMPT, shape, steps)
    pipe = StableDiffusionPanoramaPipeline(
        vae=vae.vae, text_encoder=clip.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=model.unet, scheduler=ddim(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.get_views = functools.partial(pipe.get_views, window_size=16, stride=8)
    with torch.no_grad():
        reference = pipe(PANORAMA_PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=CFG,
                         height=128, width=512, latents=prepare_noise(torch.zeros(shape), 42),
                         output_type="latent").images
    diff = (fused - reference).abs().max().item()
    print(f"MultiDiffusion vs diffusers panorama: max abs diff {diff:.2e}")
    assert diff < 1e-4


# -- the maths on small tensors ------------------------------------------------------------------------


def test_smoothing_and_max_attention_match_diffusers():
    assert torch.allclose(smoothing_kernel(), diffusers_ae.GaussianSmoothing().weight[0, 0])
    maps = torch.rand(8, 8, 77, generator=torch.Generator().manual_seed(0))
    expected = diffusers_ae.StableDiffusionAttendAndExcitePipeline._compute_max_attention_per_index(maps.clone(), [2, 5])
    assert torch.allclose(max_attention_per_token(maps, [2, 5], 76), torch.stack(expected))
    # the paper's softmax over the prompt's own tokens concentrates more on each than one over 75 positions
    assert (max_attention_per_token(maps, [2, 5], 8) > max_attention_per_token(maps, [2, 5], 76)).all()


def test_subject_tokens_and_thresholds():
    tokenizer = clip_bpe_tokenizer()
    window = tokenizer(AE_PROMPT)["input_ids"] + [49407] * 3
    word_ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in ("circle", "square")]
    assert subject_token_positions(window, word_ids, 49407, ["circle", "square"]) == ((3, 7), 8)
    with pytest.raises(ValueError, match="'star' is not in the prompt"):
        subject_token_positions(window, [tokenizer("star", add_special_tokens=False)["input_ids"]], 49407, ["star"])
    assert parse_thresholds("0:0.05, 10:0.5") == {0: 0.05, 10: 0.5} and parse_thresholds("") == {}
    with pytest.raises(ValueError, match="step:value"):
        parse_thresholds("0.05")


def test_views_cover_the_latent_diffusers_way():
    assert views(16, 64, 16, 8) == [(0, 16, left, left + 16) for left in range(0, 49, 8)]  # diffusers' 7 views
    assert views(16, 60, 16, 8)[-1] == (0, 16, 44, 60)  # one more view ends at the edge (diffusers leaves a gap)
    assert views(8, 8, 16, 8) == [(0, 8, 0, 8)]
    with pytest.raises(ValueError, match="stride >= 1"):
        views(16, 64, 16, 0)


def test_fused_call_averages_windows_and_crops_spatial_inputs():
    """A pointwise "UNet" fused over windows equals the whole call; a per-window constant is averaged where
    windows overlap; a half-resolution input (ControlNet residual) is cropped on its own grid."""
    sample_ = torch.randn(2, 4, 16, 48)
    residual = torch.randn(2, 4, 8, 24)

    def pointwise(x, t, kwargs):
        up = torch.nn.functional.interpolate(kwargs["residuals"][0], scale_factor=2.0)
        return x * 2 + up + kwargs["context"].mean()

    kwargs = {"residuals": [residual], "context": torch.ones(2, 77, 8)}
    for weighting in ("uniform", "gaussian"):
        assert torch.allclose(fused_call(pointwise, sample_, torch.ones(2), kwargs, 16, 8, weighting),
                              pointwise(sample_, torch.ones(2), kwargs), atol=1e-5)
    calls = []

    def window_id(x, t, kwargs):
        calls.append(x.shape[-1])
        return torch.full_like(x, float(len(calls)))

    fused = fused_call(window_id, sample_, torch.ones(2), {}, 16, 8)
    assert calls == [16] * 5 and fused[0, 0, 0, 0] == 1 and fused[0, 0, 0, 8] == 1.5 and fused[0, 0, 0, 47] == 5
    with pytest.raises(ValueError, match="divisible by 2"):
        fused_call(pointwise, sample_, torch.ones(2), kwargs, 15, 8)
    # gaussian (spread 0.1 window): at its border a window weighs exp(-0.5 (7.5 / 1.6)^2) ~ 2e-5 of its centre
    calls.clear()
    fused = fused_call(window_id, sample_, torch.ones(2), {}, 16, 8, "gaussian")
    weights = view_weights(16, 16, "gaussian")[0, 0, 0]
    assert weights[0] / weights[7] < 2e-4
    expected = (1 * weights[8] + 2 * weights[0]) / (weights[8] + weights[0])  # column 8: window 1's centre half
    assert torch.isclose(fused[0, 0, 0, 8], expected) and fused[0, 0, 0, 9] < 1.001  # window 2 fades in late


# -- through the engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return engine_at(tmp_path_factory.mktemp("attend"))


def graph(patch: dict | None, *, text: str, width: int = 128, steps: int = 6, seed: int = 0) -> dict:
    g = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": 128, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    if patch is not None:
        g["20"] = {**patch, "inputs": {"model": ["4", 0], **patch["inputs"]}}
        g["3"]["inputs"]["model"] = ["20", 0]
        if patch["class_type"] == "AttendAndExcite":
            g["3"]["inputs"]["positive"] = ["20", 1]
    return g


def attend_node(**overrides) -> dict:
    inputs = {"clip": ["4", 1], "text": AE_PROMPT, "words": "circle, square", "scale": 20.0, "max_iter_to_alter": 3,
              "thresholds": "0:0.05", "max_refinement_steps": 5, "attention_downscale": 2, **overrides}
    return {"class_type": "AttendAndExcite", "inputs": inputs}


def test_attend_and_excite_node_leaves_the_base_model_alone(engine):
    plain_graph = graph(None, text=AE_PROMPT)
    plain = engine.run(from_api(plain_graph), outputs=["3"]).values["3"][0].samples
    result = engine.run(from_api(graph(attend_node(), text=AE_PROMPT)), outputs=["3", "4", "20"])
    excited, base = result.values["3"][0].samples, result.values["4"][0]
    assert base.patches == () and [p.name for p in result.values["20"][0].patches] == ["attend_and_excite"]
    assert (excited - plain).abs().max() > 0.1
    assert base.unet.attn_processors.keys() and not any(
        type(p).__name__ == "CrossAttentionRecorder" for p in base.unet.attn_processors.values())
    engine.cache.clear()
    assert torch.equal(engine.run(from_api(plain_graph), outputs=["3"]).values["3"][0].samples, plain)
    with pytest.raises(Exception, match="'triangle' is not in the prompt"):
        engine.run(from_api(graph(attend_node(words="triangle"), text=AE_PROMPT)), outputs=["3"])


def test_attend_and_excite_step_raises_the_weakest_subject(embedded):
    """One A&E update lowers the loss (1 - the weaker subject's smoothed attention) on each seed's starting latent,
    and the step taken the other way raises it: the gradient goes the paper's way before any image is judged.
    The embedded model's attention barely moves at pure noise (loss 0.998 -> 0.994 at scale 2000, measured), so
    the margin is small; the sign is the point."""
    model, clip = embedded.model, embedded.clip
    unet = unet_denoiser(model)
    guided = CFGDenoiser(unet, [encode(clip, AE_PROMPT)], [encode(clip, "")], CFG)
    guided.run_sigmas = ksampler_sigmas(model.alphas_cumprod, "normal", "euler", 20)
    sigma = guided.run_sigmas[:1]
    scale = float((sigma**2 + 1).sqrt())
    for seed in (0, 1):
        x = prepare_noise(torch.zeros(1, 4, 16, 16), seed) * scale
        losses = []
        for step_size in (2000.0, -2000.0):
            settings = ExciteSettings(indices=(3, 7), stop=8, scale=step_size, thresholds={}, attention_downscale=2)
            excite = AttendAndExcite(settings, guided)
            unet.wrappers[:] = [excite.record]
            before = float(excite.loss(x / scale, sigma))
            moved = excite(x.clone(), sigma)
            losses.append((before, float(excite.loss(moved / scale, sigma))))
        print(f"seed {seed}: loss before -> after the step, and the step reversed: {losses}")
        (before, after), (_, reversed_after) = losses
        assert after < before - 1e-3 and reversed_after > before


def test_attend_and_excite_makes_the_neglected_subject_appear(embedded):
    """"a red circle and a blue square": plain sampling draws the circle on every seed (16 of 16 measured); with
    both subject words excited (scale 500, the evaluation's settings) the square appears (7 of 16 measured, seeds
    0-3 among them). Two seeds here: plain never shows the square, A&E shows it at least once."""
    model, clip, vae = embedded.model, embedded.clip, embedded.vae
    from nodes.guidance.attend_multidiffusion import AttendAndExcite as AttendNode

    excited, _ = AttendNode.execute(None, model, clip, AE_PROMPT, "circle, square", 500.0, 10, "0:0.05, 4:0.5, 8:0.8",
                                    5, 2)
    shapes = {}
    for name, patched in (("plain", model), ("excited", excited)):
        latent = Latent(torch.zeros(2, 4, 16, 16), batch_index=(0, 1))
        images = decode(vae, sample(patched, seed=0, steps=20, cfg=CFG, sampler_name="euler", scheduler="normal",
                                    positive=[encode(clip, AE_PROMPT)], negative=[encode(clip, "")],
                                    latent=latent).samples)
        shapes[name] = [classify((image.clamp(0, 1).numpy() * 255).round().astype("uint8")).shape for image in images]
    print(f"shapes drawn: {shapes}")
    assert "square" not in shapes["plain"] and "square" in shapes["excited"]


def test_panorama_is_seam_free_and_region_prompts_compose(embedded):
    """512 x 128 from the 128 px model. Issue #18's bar (gradient energy across the window borders within 10 % of the
    rest) is NOT met on the embedded model: over 16 seeds (docs/controlled_generation_guidance.md) the border
    columns carry 1.59x (uniform) and 1.32x (gaussian) the energy of the columns around them. Asserted here, on the
    2 seeds measured at 1.19 / 1.18: the ratio stays below 1.5, so a regression to visible tiling shows. A
    ConditioningSetArea region prompt on the right quarter changes that quarter, not the left of the image
    (measured 0.108 vs 0.015 mean abs pixel change)."""
    model, clip, vae = embedded.model, embedded.clip, embedded.vae

    def panorama(weighting: str, positive: list, seeds: int = 2) -> torch.Tensor:
        latent = Latent(torch.zeros(seeds, 4, 16, 64), batch_index=tuple(range(seeds)))
        samples = sample(model.with_patch(multidiffusion_patch(16, 8, weighting)), seed=0, steps=12, cfg=CFG,
                         sampler_name="euler", scheduler="normal", positive=positive,
                         negative=[encode(clip, "")], latent=latent).samples
        return decode(vae, samples)

    whole = [encode(clip, PANORAMA_PROMPT)]
    edges = window_edges(64, 16, 8)
    smooth = panorama("gaussian", whole)
    gaussian, uniform = seam_ratio(smooth, edges), seam_ratio(panorama("uniform", whole), edges)
    star = replace(encode(clip, "a yellow star on a blue background"), area=(16, 16, 0, 48))
    region = panorama("gaussian", whole + [star])
    change = (region - smooth).abs().mean(dim=(0, 1, 3))
    right, left = float(change[384:].mean()), float(change[:320].mean())
    print(f"seam ratio: gaussian {gaussian:.3f}, uniform {uniform:.3f}; region prompt's change right {right:.4f}, "
          f"left {left:.4f}")
    assert gaussian < 1.5 and uniform < 1.5
    assert right > 5 * left
