"""SAG (nodes/sd/sag.py, SelfAttentionGuidance node) on a tiny random SD1 model.

Cross-check: diffusers' StableDiffusionSAGPipeline needs integer timesteps, so it runs DDIMScheduler (eta 0,
"trailing" spacing: timesteps 999, 899, ..., 99, then alpha 1, no sample clipping), which is Euler's method in
sigma space on those sigmas: our euler sampler with the "simple" scheduler. DDIM starts from x_T = noise, as our
sqrt(1 + sigma_max^2) scaling does, so both get the same noise. diffusers blurs with sigma 1.0 (fixed), so the
node's blur_sigma is 1.0 there. Tolerance: max abs latent difference < 2e-4 on latents of magnitude ~60 (plain
CFG alone differs by ~8e-5 here), and the SAG effect (guided - plain) agrees to 1e-4 relative.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionSAGPipeline
from guidance_helpers import PROMPT, SD_SCHEDULE, add_plain_branch, base_graph, tiny_engine

import nodes.sd.sag as sag_module
from nodegraph.formats.api import from_api
from nodes.sd.denoisers import CFGDenoiser, patches_applied, unet_denoiser
from nodes.sd.ksampler import prepare_noise
from nodes.sd.sag import gaussian_blur_2d, sag_patch
from nodes.sd.tokenizer import clip_bpe_tokenizer

torch.set_num_threads(1)

SIZE = 128  # 16x16 latents: an 8x8 middle block, so the attention mask has structure


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_engine(tmp_path_factory.mktemp("sag"))


def sag_graph(scale: float, blur_sigma: float = 1.0, **graph_args) -> dict:
    graph = base_graph(sampler="euler", scheduler="simple", size=SIZE, **graph_args)
    graph["20"] = {"class_type": "SelfAttentionGuidance",
                   "inputs": {"model": ["4", 0], "scale": scale, "blur_sigma": blur_sigma}}
    graph["3"]["inputs"]["model"] = ["20", 0]
    return graph


def plain_graph(**graph_args) -> dict:
    return base_graph(sampler="euler", scheduler="simple", size=SIZE, **graph_args)


def latent_of(engine, graph, node: str = "3") -> torch.Tensor:
    return engine.run(from_api(graph), outputs=[node]).values[node][0].samples


def diffusers_sag(modules, scale: float) -> torch.Tensor:
    scheduler = DDIMScheduler(**SD_SCHEDULE, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    pipe = StableDiffusionSAGPipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = prepare_noise(torch.zeros(1, 4, SIZE // 8, SIZE // 8), 42, [0])
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt="", num_inference_steps=10, guidance_scale=5.0, sag_scale=scale,
                    height=SIZE, width=SIZE, latents=noise, output_type="latent").images


def test_matches_stable_diffusion_sag_pipeline(tiny, monkeypatch):
    engine, modules = tiny
    masks: list[float] = []
    real_mask = sag_module.attention_mask

    def recording_mask(*args, **kwargs):
        mask = real_mask(*args, **kwargs)
        masks.append(float(mask.mean()))
        return mask

    monkeypatch.setattr(sag_module, "attention_mask", recording_mask)
    plain, guided = latent_of(engine, plain_graph()), latent_of(engine, sag_graph(0.75))
    reference_plain, reference = diffusers_sag(modules, 0.0), diffusers_sag(modules, 0.75)
    diff = (guided - reference).abs().max().item()
    effect, reference_effect = guided - plain, reference - reference_plain
    effect_error = ((effect - reference_effect).norm() / reference_effect.norm()).item()
    print(f"SAG: max abs latent diff {diff:.2e} (latents up to {reference.abs().max():.1f}); effect max "
          f"{reference_effect.abs().max():.2f}, relative error {effect_error:.2e}; mask coverage per step "
          f"{[round(m, 2) for m in masks]}")
    assert diff < 2e-4
    assert effect_error < 1e-4
    assert len(masks) == 10 and any(0.0 < m < 1.0 for m in masks)  # the blur is where attention is high, not all


def test_scale_zero_is_plain_cfg_and_runs_are_deterministic(tiny):
    engine, _ = tiny
    plain = latent_of(engine, plain_graph(steps=4))
    assert torch.equal(latent_of(engine, sag_graph(0.0, steps=4)), plain)
    guided = latent_of(engine, sag_graph(0.5, blur_sigma=2.0, steps=4))
    assert (guided - plain).abs().max() > 0.1
    engine.cache.clear()
    assert torch.equal(latent_of(engine, sag_graph(0.5, blur_sigma=2.0, steps=4)), guided)


def test_no_processor_is_left_on_the_shared_unet(tiny):
    """The recorder is installed on the cached UNet only during each UNet call of a SAG run (it does record:
    the run differs from plain CFG), and the processors afterwards are the very objects from before."""
    engine, _ = tiny
    model = engine.run(from_api(plain_graph()), outputs=["4"]).values["4"][0]
    before = dict(model.unet.attn_processors)
    seen: list[str] = []
    real_recorder = sag_module.AttentionRecorder

    class SpyRecorder(real_recorder):
        def __call__(self, attn, hidden_states, *args, **kwargs):
            seen.append(type(model.unet.mid_block.attentions[0].transformer_blocks[0].attn1.processor).__name__)
            return super().__call__(attn, hidden_states, *args, **kwargs)

    sag_module.AttentionRecorder = SpyRecorder
    try:
        result = engine.run(from_api(sag_graph(0.75, steps=3)), outputs=["3", "20"])
    finally:
        sag_module.AttentionRecorder = real_recorder
    assert seen == ["SpyRecorder"] * 3  # once per step, in the uncond's batched call only
    after = model.unet.attn_processors
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    patched = result.values["20"][0]
    assert patched.unet is model.unet and model.patches == () and [p.name for p in patched.patches] == [
        "self_attention_guidance"]


def test_patch_undo_leaves_the_run_objects_clean(tiny):
    engine, _ = tiny
    values = engine.run(from_api(plain_graph()), outputs=["4", "6", "7"]).values
    model = values["4"][0].with_patch(sag_patch(0.5, 2.0))
    unet = unet_denoiser(model)
    cfg = CFGDenoiser(unet, values["6"][0], values["7"][0], 5.0)
    with patches_applied(model.patches, unet_denoiser=unet, cfg_denoiser=cfg):
        assert len(cfg.guidance_terms) == 1 and len(unet.wrappers) == 1
    assert cfg.guidance_terms == [] and unet.wrappers == []


def test_engine_plain_branch_is_untouched(tiny):
    """SAG and a plain sampler from the same cached checkpoint: the plain one equals a graph without SAG."""
    engine, _ = tiny
    engine.cache.clear()
    reference = latent_of(engine, plain_graph(steps=4))
    engine.cache.clear()
    result = engine.run(from_api(add_plain_branch(sag_graph(0.75, steps=4))), outputs=["3", "30"])
    assert result.executed.index("3") < result.executed.index("30")  # SAG ran first on the shared UNet
    assert torch.equal(result.values["30"][0].samples, reference)
    assert not torch.equal(result.values["3"][0].samples, reference)


def test_sag_and_sega_compose(tiny):
    """Both patches on one MODEL: each contributes (the result differs from either alone)."""
    engine, _ = tiny
    sega = {"class_type": "SemanticGuidance", "inputs": {
        "model": ["20", 0], "clip": ["4", 1], "concept": "green square", "direction": "add", "scale": 5.0,
        "warmup_steps": 0, "threshold": 0.9, "momentum_scale": 0.1, "momentum_beta": 0.4, "edit_weight": 1.0}}
    both = sag_graph(0.75, steps=4)
    both["21"] = sega
    both["3"]["inputs"]["model"] = ["21", 0]
    sega_only = {**both, "21": {**sega, "inputs": {**sega["inputs"], "model": ["4", 0]}}}
    combined, sag_only = latent_of(engine, both), latent_of(engine, sag_graph(0.75, steps=4))
    assert (combined - sag_only).abs().max() > 1e-2
    assert (combined - latent_of(engine, sega_only)).abs().max() > 1e-2


def test_gaussian_blur():
    image = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gaussian_blur_2d(torch.full((1, 4, 12, 12), 0.7), 9, 2.0), torch.full((1, 4, 12, 12), 0.7))
    assert torch.equal(gaussian_blur_2d(image, 9, 0.0), image)
    blurred = gaussian_blur_2d(image, 9, 2.0)
    assert blurred.shape == image.shape and blurred.std() < 0.5 * image.std()
