"""SEGA (nodes/sd/sega.py, SemanticGuidance node) on a tiny random SD1 model.

Cross-check: diffusers' SemanticStableDiffusionPipeline with EulerDiscreteScheduler (linspace spacing, 10 steps, so
timesteps are whole numbers and our euler/normal run computes the same steps; see test_pipeline_vs_diffusers.py),
the same weights, prompt, seed, concepts and parameters; diffusers gets our initial noise pre-scaled to the same
x_T. Tolerance: max abs latent difference < 2e-4 on latents of magnitude ~60 (plain CFG alone differs by ~9e-5
here: batched float32 UNet calls of different batch sizes), and the SEGA effect itself (guided - plain) agrees
to 1e-3 relative. The threshold mask is discontinuous: where two magnitudes tie at the quantile, ulp-level
differences decide whether they are kept (edit weights 2.0/0.5 hit such a tie at the last step: 2 of 256 latent
values off by 4.8e-4, the rest within 1e-4), so the weighted case uses 1.5/0.5, which has no tie.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler, SemanticStableDiffusionPipeline
from guidance_helpers import PROMPT, SD_SCHEDULE, add_plain_branch, base_graph, colour_fraction, cosine, tiny_engine

from nodegraph.formats.api import from_api
from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs, patches_applied, unet_denoiser
from nodes.sd.ksampler import prepare_noise, sample
from nodes.sd.sega import Concept, SemanticGuidance, sega_patch, threshold_guidance
from nodes.sd.text import encode
from nodes.sd.tokenizer import clip_bpe_tokenizer
from nodes.sd.types import Latent, ModelPatch

torch.set_num_threads(1)

MOMENTUM = {"momentum_scale": 0.3, "momentum_beta": 0.6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_engine(tmp_path_factory.mktemp("sega"))


@pytest.fixture(scope="module")
def loaded(tiny):
    """The cached MODEL and CLIP handles and the prompt's conditioning."""
    engine, _ = tiny
    values = engine.run(from_api(base_graph()), outputs=["4", "6", "7"]).values
    return values["4"][0], values["4"][1], values["6"][0], values["7"][0]


def sega_graph(concepts: list[dict], **graph_args) -> dict:
    """base_graph with one SemanticGuidance node per concept, chained, feeding KSampler "3"."""
    graph, source = base_graph(**graph_args), ["4", 0]
    for k, concept in enumerate(concepts):
        inputs = {"model": source, "clip": ["4", 1], "edit_weight": 1.0, **MOMENTUM, **concept}
        graph[f"2{k}"] = {"class_type": "SemanticGuidance", "inputs": inputs}
        source = [f"2{k}", 0]
    graph["3"]["inputs"]["model"] = source
    return graph


def latent_of(engine, graph, node: str = "3") -> torch.Tensor:
    return engine.run(from_api(graph), outputs=[node]).values[node][0].samples


def diffusers_sega(modules, concepts: list[dict]) -> torch.Tensor:
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    sigma_max = float(scheduler.sigmas.max())
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 42, [0]) * (1 + sigma_max**2) ** 0.5 / float(
        scheduler.init_noise_sigma)
    pipe = SemanticStableDiffusionPipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    edit = {}
    if concepts:
        edit = {
            "editing_prompt": [c["concept"] for c in concepts],
            "reverse_editing_direction": [c["direction"] == "remove" for c in concepts],
            "edit_guidance_scale": [c["scale"] for c in concepts],
            "edit_warmup_steps": [c["warmup_steps"] for c in concepts],
            "edit_threshold": [c["threshold"] for c in concepts],
            "edit_momentum_scale": MOMENTUM["momentum_scale"], "edit_mom_beta": MOMENTUM["momentum_beta"],
            "edit_weights": [c.get("edit_weight", 1.0) for c in concepts],
        }
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt="", num_inference_steps=10, guidance_scale=5.0, height=64, width=64,
                    latents=noise, output_type="latent", **edit).images


GREEN = {"concept": "green square", "direction": "add", "scale": 5.0, "warmup_steps": 2, "threshold": 0.9}
YELLOW = {"concept": "yellow", "direction": "remove", "scale": 4.0, "warmup_steps": 4, "threshold": 0.8}
WEIGHTS = ({"edit_weight": 1.5}, {"edit_weight": 0.5})


@pytest.mark.parametrize("concepts", [[GREEN], [{**GREEN, **WEIGHTS[0]}, {**YELLOW, **WEIGHTS[1]}]],
                         ids=["one_concept", "two_weighted_concepts"])
def test_matches_semantic_stable_diffusion_pipeline(tiny, concepts):
    """Two weighted concepts with different warm-ups also cover diffusers' partial-warm-up rule (steps 2-3:
    the warm concepts' weight-normalised guidance, without momentum)."""
    engine, modules = tiny
    plain, guided = latent_of(engine, base_graph()), latent_of(engine, sega_graph(concepts))
    reference_plain, reference = diffusers_sega(modules, []), diffusers_sega(modules, concepts)
    diff = (guided - reference).abs().max().item()
    effect, reference_effect = guided - plain, reference - reference_plain
    effect_error = ((effect - reference_effect).norm() / reference_effect.norm()).item()
    print(f"SEGA {len(concepts)} concept(s): max abs latent diff {diff:.2e} (latents up to "
          f"{reference.abs().max():.1f}); effect max {reference_effect.abs().max():.3f}, relative error {effect_error:.2e}")
    assert diff < 2e-4
    assert effect_error < 1e-3
    assert reference_effect.abs().max() > 0.5  # the concepts really change the result


def test_scale_zero_equals_plain_cfg_exactly(tiny):
    engine, _ = tiny
    assert torch.equal(latent_of(engine, sega_graph([{**GREEN, "scale": 0.0}])), latent_of(engine, base_graph()))


def test_add_and_remove_move_opposite_ways_along_the_concept_direction(tiny, loaded):
    """The concept direction: what adding the concept's x0 offset (x0_concept - x0_uncond) at every Euler step of
    the plain run would move the result by, to first order. Add moves along it, remove against it."""
    model, clip, positive, negative = loaded
    concept = encode(clip, "green square")
    recorded: list[tuple[float, torch.Tensor]] = []

    def probe(cfg_denoiser: CFGDenoiser) -> None:
        cfg_denoiser.extra_conds.append((concept,))

        def term(inputs: GuidanceInputs) -> torch.Tensor:
            recorded.append((float(inputs.sigma.reshape(-1)[0]), inputs.extra_denoised[-1] - inputs.uncond_denoised))
            return inputs.denoised

        cfg_denoiser.guidance_terms.append(term)

    def run(patch: ModelPatch | None) -> torch.Tensor:
        handle = model if patch is None else model.with_patch(patch)
        return sample(handle, seed=7, steps=10, cfg=5.0, sampler_name="euler", scheduler="normal",
                      positive=positive, negative=negative, latent=Latent(torch.zeros(1, 4, 8, 8))).samples

    plain = run(None)
    assert torch.equal(run(ModelPatch("guidance", "probe", probe)), plain)
    sigmas = [s for s, _ in recorded] + [0.0]
    direction = sum((sigmas[i] - sigmas[i + 1]) / sigmas[i] * offset for i, (_, offset) in enumerate(recorded))
    added = run(sega_patch(Concept(cond=(concept,), scale=3.0, warmup_steps=0))) - plain
    removed = run(sega_patch(Concept(cond=(concept,), reverse=True, scale=3.0, warmup_steps=0))) - plain
    print(f"cosine with the concept direction: add {cosine(added, direction):+.3f}, "
          f"remove {cosine(removed, direction):+.3f}")
    assert cosine(added, direction) > 0.3
    assert cosine(removed, direction) < -0.3


def test_momentum_is_per_run_and_matters(tiny):
    """Same graph twice (the second run re-executes the sampler) gives the same latent, so no momentum leaks;
    momentum does change the result, so the check is not vacuous."""
    engine, _ = tiny
    graph = sega_graph([{**GREEN, "warmup_steps": 3}])
    first = latent_of(engine, graph)
    engine.cache.clear()
    assert torch.equal(latent_of(engine, graph), first)
    no_momentum = sega_graph([{**GREEN, "warmup_steps": 3}])
    no_momentum["20"]["inputs"]["momentum_scale"] = 0.0
    assert (latent_of(engine, no_momentum) - first).abs().max() > 1e-3


def test_second_concept_composes_and_patches_undo(tiny, loaded):
    """A chained second concept joins the first's term and changes the result; leaving the run removes both."""
    engine, _ = tiny
    one, two = latent_of(engine, sega_graph([GREEN])), latent_of(engine, sega_graph([GREEN, YELLOW]))
    assert (two - one).abs().max() > 1e-2
    model, clip, positive, negative = loaded
    patched = model
    for text in ("green square", "yellow"):
        patched = patched.with_patch(sega_patch(Concept(cond=(encode(clip, text),))))
    assert model.patches == () and len(patched.patches) == 2 and patched.unet is model.unet
    unet = unet_denoiser(patched)
    cfg = CFGDenoiser(unet, positive, negative, 5.0)
    with patches_applied(patched.patches, unet_denoiser=unet, cfg_denoiser=cfg):
        (term,) = cfg.guidance_terms
        assert isinstance(term, SemanticGuidance) and len(term.concepts) == 2 and len(cfg.extra_conds) == 2
    assert cfg.guidance_terms == [] and cfg.extra_conds == []


def test_a_step_is_a_noise_level():
    """Repeated evaluations at one sigma (Heun's corrector, then the next step) share the step's starting
    momentum; a new sigma starts the next step."""
    cfg = CFGDenoiser(None, [object()], [object()], 5.0)  # type: ignore[arg-type, list-item]
    term = SemanticGuidance(cfg)
    term.add(Concept(cond=(object(),), scale=1.0, warmup_steps=0, threshold=0.0))  # type: ignore[arg-type]
    x, zeros = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 4, 8, 8)

    def call(sigma: float, concept_x0: torch.Tensor) -> torch.Tensor:
        return term(GuidanceInputs(x, torch.tensor([sigma]), zeros, zeros, zeros, 5.0, None,  # type: ignore[arg-type]
                                   (concept_x0,)))

    first = call(2.0, torch.ones(1, 4, 8, 8))
    assert term.step == 0 and torch.allclose(first, torch.full_like(first, 1.0))  # -sigma * (0 - 1) / sigma
    call(1.0, torch.ones(1, 4, 8, 8))
    start = term.concepts[0].momentum_before
    repeat = call(1.0, 2 * torch.ones(1, 4, 8, 8))
    assert term.step == 1 and term.concepts[0].momentum_before is start
    # eps offsets: step 0 gave (0 - 1) / 2 = -0.5, so momentum (1 - beta) * -0.5 = -0.3 (beta 0.4); the repeat
    # at sigma 1 sees offset -2 and that same momentum: x0 = 0 - 1 * (-2 + 0.1 * -0.3).
    assert torch.allclose(repeat, torch.full_like(repeat, 2.03), atol=1e-6)
    call(0.5, torch.ones(1, 4, 8, 8))
    assert term.step == 2


def test_threshold_keeps_the_top_quantile_per_channel():
    guidance = torch.arange(32.0).reshape(1, 2, 4, 4) - 10
    kept = threshold_guidance(guidance, 0.75)
    for channel in range(2):
        values = guidance[0, channel].flatten()
        floor = torch.quantile(values.abs(), 0.75)
        assert torch.equal(kept[0, channel].flatten(), torch.where(values.abs() >= floor, values, 0 * values))
    assert int((kept != 0).sum()) == 8  # 4 of 16 per channel
    assert torch.equal(threshold_guidance(guidance, 0.0), guidance)


def test_engine_plain_branch_is_untouched(tiny):
    """SEGA and a plain sampler from the same cached checkpoint: the plain one equals a graph without SEGA."""
    engine, _ = tiny
    engine.cache.clear()
    reference = latent_of(engine, base_graph())
    engine.cache.clear()
    result = engine.run(from_api(add_plain_branch(sega_graph([GREEN]))), outputs=["3", "30"])
    assert result.executed.index("3") < result.executed.index("30")  # SEGA ran first on the shared UNet
    assert torch.equal(result.values["30"][0].samples, reference)
    assert not torch.equal(result.values["3"][0].samples, reference)


def test_colour_fraction_counts_pixels_of_a_hue():
    image = torch.zeros(1, 4, 4, 3)
    image[0, :2, :, 0] = 0.9  # top half red
    image[0, 2:, :2] = torch.tensor([0.1, 0.2, 0.8])  # a quarter blue
    image[0, 2:, 2:] = 1.0  # a quarter white
    assert colour_fraction(image, "red") == 0.5
    assert colour_fraction(image, "blue") == 0.25
    assert colour_fraction(image, "white") == 0.25
    assert colour_fraction(image, "green") == 0.0
    with pytest.raises(ValueError, match="unknown colour"):
        colour_fraction(image, "plaid")
