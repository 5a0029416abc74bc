"""CFG variants and PAG (nodes/sd/cfg_variants.py, nodes/sd/pag.py, nodes/model_patches/cfg.py).

Maths: each function against ComfyUI's formula transcribed here in ComfyUI's own terms (its cfg functions get
"cond"/"uncond" as noise x - x0 and its pre/post-CFG functions x0 predictions), on small random tensors.
Effects: the embedded model through the engine, measured on the decoded image.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from model_patches_helpers import HAS_EMBEDDED, clipped_fraction, engine_for, graph, high_frequency_energy, image, latent

from nodes.sd.cfg_variants import (AdaptiveProjectedGuidance, apg_patch, cfg_norm, cfg_zero_star, fresca, mahiro,
                                   optimized_scale, rescale_cfg, rescale_cfg_patch, tangential_damping, tcfg)
from nodes.sd.denoisers import CFGDenoiser, CfgInputs, GuidanceInputs, patches_applied

torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
X, COND, UNCOND = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
SIGMA = torch.tensor([3.0, 3.0])


def cfg_inputs(cfg: float = 6.0, sigma: torch.Tensor = SIGMA) -> CfgInputs:
    return CfgInputs(X, sigma, COND, UNCOND, cfg, model=None)  # type: ignore[arg-type]


def guidance_inputs(cfg: float = 6.0) -> GuidanceInputs:
    denoised = UNCOND + cfg * (COND - UNCOND)
    return GuidanceInputs(X, SIGMA, COND, UNCOND, denoised, cfg, model=None)  # type: ignore[arg-type]


# -- maths against ComfyUI's formulas -------------------------------------------------------------------

def test_rescale_cfg_matches_comfyui():
    multiplier, scale = 0.7, 6.0
    sigma = SIGMA.view(-1, 1, 1, 1)
    cond, uncond = X - COND, X - UNCOND  # ComfyUI's sampler_cfg_function args
    x = X / (sigma * sigma + 1.0)
    v_cond = ((x - (X - cond)) * (sigma**2 + 1.0) ** 0.5) / sigma
    v_uncond = ((x - (X - uncond)) * (sigma**2 + 1.0) ** 0.5) / sigma
    v_cfg = v_uncond + scale * (v_cond - v_uncond)
    ro_pos, ro_cfg = torch.std(v_cond, dim=(1, 2, 3), keepdim=True), torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
    v_final = multiplier * v_cfg * (ro_pos / ro_cfg) + (1.0 - multiplier) * v_cfg
    returned = X - (x - v_final * sigma / (sigma * sigma + 1.0) ** 0.5)
    expected = X - returned  # ComfyUI: cfg_result = x - sampler_cfg_function(args)
    assert torch.allclose(rescale_cfg(cfg_inputs(scale), multiplier), expected, atol=1e-5)
    # multiplier 0 is plain CFG
    assert torch.allclose(rescale_cfg(cfg_inputs(scale), 0.0), UNCOND + scale * (COND - UNCOND), atol=1e-4)


def reference_apg(steps, eta, threshold, momentum, cfg):
    running, previous, outputs = 0, None, []
    for sigma, cond, uncond in steps:
        if previous is not None and sigma > previous:
            running = 0
        previous = sigma
        guidance = cond - uncond
        if momentum > 0:
            running = guidance if not torch.is_tensor(running) else momentum * running + guidance
            guidance = running
        if threshold > 0:
            norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), threshold / norm)
        unit = F.normalize(cond, dim=[-1, -2, -3])
        parallel = (guidance * unit).sum(dim=[-1, -2, -3], keepdim=True) * unit
        modified = (guidance - parallel) + eta * parallel
        outputs.append((uncond + modified) + (cond - uncond) / cfg)
    return outputs


def test_apg_projection_momentum_and_norm_threshold_match_comfyui():
    g = torch.Generator().manual_seed(1)
    sigmas = [5.0, 3.0, 1.0, 6.0, 2.0]  # the rise to 6 starts a new schedule: momentum resets
    steps = [(s, torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)) for s in sigmas]
    apg = AdaptiveProjectedGuidance(eta=0.3, norm_threshold=5.0, momentum=0.5)
    ours = [apg(CfgInputs(X, torch.tensor([s, s]), c, u, 4.0, None))[0] for s, c, u in steps]  # type: ignore[arg-type]
    for got, want in zip(ours, reference_apg(steps, 0.3, 5.0, 0.5, 4.0)):
        assert torch.allclose(got, want, atol=1e-5)
    # eta 1, no threshold, no momentum: CFG then gives uncond + cfg * g + g, plain CFG at scale cfg + 1
    plain = AdaptiveProjectedGuidance(1.0, 0.0, 0.0)(cfg_inputs(4.0))
    assert torch.allclose(UNCOND + 4.0 * (plain[0] - UNCOND), UNCOND + 5.0 * (COND - UNCOND), atol=1e-4)


def test_tcfg_keeps_only_the_uncond_part_along_the_top_singular_vector():
    cond_noise, uncond_noise = X - COND, X - UNCOND
    damped = tangential_damping(cond_noise, uncond_noise)
    for b in range(2):
        matrix = torch.stack([uncond_noise[b].flatten(), cond_noise[b].flatten()])
        top = torch.linalg.svd(matrix, full_matrices=False)[2][0]
        expected = (uncond_noise[b].flatten() @ top) * top
        assert torch.allclose(damped[b].flatten(), expected, atol=1e-4)
    new_cond, new_uncond = tcfg(cfg_inputs())
    assert torch.equal(new_cond, COND) and torch.allclose(new_uncond, X - damped)
    # an uncond already along cond's direction is left as it is
    aligned = tangential_damping(cond_noise, 0.5 * cond_noise)
    assert torch.allclose(aligned, 0.5 * cond_noise, atol=1e-4)


def test_fresca_scales_the_guidance_spectrum_like_comfyui():
    low, high, cutoff = 0.8, 1.5, 2
    guidance = COND - UNCOND
    spectrum = torch.fft.fftshift(torch.fft.fftn(guidance, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full(spectrum.shape, high)
    mask[..., 4 - cutoff : 4 + cutoff, 4 - cutoff : 4 + cutoff] = low
    expected = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real + UNCOND
    cond, uncond = fresca(cfg_inputs(), low, high, cutoff)
    assert torch.allclose(cond, expected, atol=1e-5) and torch.equal(uncond, UNCOND)
    assert torch.allclose(fresca(cfg_inputs(), 1.0, 1.0, 20)[0], COND, atol=1e-5)


def test_cfg_zero_star_matches_comfyui_and_its_optimal_scale():
    inputs = guidance_inputs()
    positive, negative = X - COND, X - UNCOND
    alpha = (positive * negative).sum(dim=(1, 2, 3)) / ((negative**2).sum(dim=(1, 2, 3)) + 1e-8)
    assert torch.allclose(optimized_scale(positive, negative).flatten(), alpha, atol=1e-5)
    alpha = alpha.view(-1, 1, 1, 1)
    expected = inputs.denoised + UNCOND * (alpha - 1.0) + inputs.cfg * UNCOND * (1.0 - alpha)
    assert torch.allclose(cfg_zero_star(inputs), expected, atol=1e-5)
    # the optimal scale minimises ||positive - s * negative||
    for delta in (-0.01, 0.01):
        s = alpha + delta
        assert ((positive - alpha * negative) ** 2).sum() <= ((positive - s * negative) ** 2).sum()


def test_cfg_norm_and_mahiro_match_comfyui():
    inputs = guidance_inputs()
    scale = (torch.norm(COND, dim=1, keepdim=True) / (torch.norm(inputs.denoised, dim=1, keepdim=True) + 1e-8))
    assert torch.allclose(cfg_norm(inputs, 0.9), inputs.denoised * scale.clamp(0, 1) * 0.9, atol=1e-6)
    leap, u_leap = COND * 6.0, UNCOND * 6.0
    merge = (leap + inputs.denoised) / 2
    sim = F.cosine_similarity(torch.sqrt(u_leap.abs()) * u_leap.sign(), torch.sqrt(merge.abs()) * merge.sign()).mean()
    simsc = 2 * (sim + 1)
    assert torch.allclose(mahiro(inputs), (simsc * inputs.denoised + (4 - simsc) * leap) / 4, atol=1e-5)


def test_pre_cfg_then_cfg_function_in_comfyuis_order():
    """APG's pre-CFG output feeds RescaleCFG's CFG function; undo restores the plain formula."""
    cfg = CFGDenoiser(SimpleNamespace(), [object()], [object()], 5.0)  # type: ignore[list-item,arg-type]
    unet = SimpleNamespace()
    patches = (apg_patch(0.5, 2.0, 0.0), rescale_cfg_patch(0.7))
    with patches_applied(patches, unet_denoiser=unet, cfg_denoiser=cfg):  # type: ignore[arg-type]
        _, _, denoised = cfg._custom_cfg(X, SIGMA, COND, UNCOND)
    new_cond, new_uncond = AdaptiveProjectedGuidance(0.5, 2.0, 0.0)(cfg_inputs(5.0))
    expected = rescale_cfg(CfgInputs(X, SIGMA, new_cond, new_uncond, 5.0, None), 0.7)  # type: ignore[arg-type]
    assert torch.allclose(denoised, expected, atol=1e-6)
    assert cfg.pre_cfg_functions == [] and cfg.cfg_function is None


# -- effects on the embedded model -------------------------------------------------------------------

embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded model's weights are not built yet")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return engine_for(tmp_path_factory.mktemp("cfg_patches"))


@embedded
def test_rescale_cfg_lowers_over_saturation_at_high_cfg(engine):
    plain = image(engine, graph(cfg=15.0, decode=True))
    rescaled = image(engine, graph(("RescaleCFG", {"multiplier": 0.7}), cfg=15.0, decode=True))
    print(f"clipped {clipped_fraction(plain):.3f} -> {clipped_fraction(rescaled):.3f}, "
          f"std {plain.std():.3f} -> {rescaled.std():.3f}")  # measured: 0.369 -> 0.008, 0.362 -> 0.219
    assert clipped_fraction(rescaled) < 0.5 * clipped_fraction(plain)
    assert rescaled.std() < plain.std()


@embedded
@pytest.mark.parametrize("patch", [("APG", {"eta": 0.0, "norm_threshold": 5.0, "momentum": 0.0}),
                                   ("TCFG", {}), ("CFGNorm", {"strength": 1.0})])
def test_projection_and_norm_guidance_lower_over_saturation(engine, patch):
    """APG, TCFG and CFGNorm are all meant to curb CFG's over-saturation at high scales."""
    plain = image(engine, graph(cfg=15.0, decode=True))
    patched = image(engine, graph(patch, cfg=15.0, decode=True))
    print(patch[0], f"clipped {clipped_fraction(plain):.3f} -> {clipped_fraction(patched):.3f}")
    assert clipped_fraction(patched) < 0.8 * clipped_fraction(plain)


@embedded
def test_pag_raises_fine_structure(engine):
    """PAG (scale 10, CFG 3): the Laplacian energy of the image rises on average over seeds (measured +3 %; the
    embedded model's 4x4 middle block leaves PAG little to perturb)."""
    plain = sum(high_frequency_energy(image(engine, graph(cfg=3.0, seed=s, steps=8, decode=True))) for s in (1, 2, 3))
    pag = sum(high_frequency_energy(image(engine, graph(("PerturbedAttentionGuidance", {"scale": 10.0}), cfg=3.0,
                                                        seed=s, steps=8, decode=True))) for s in (1, 2, 3))
    print(f"Laplacian energy {plain:.3e} -> {pag:.3e}")
    assert pag > plain


@embedded
def test_pag_term_is_scale_times_cond_minus_perturbed(engine):
    """The term adds scale * (cond - D_perturbed(x)), and the perturbed evaluation differs from cond (the
    identity attention acts) while the cond evaluation itself is the unpatched one."""
    from nodegraph.formats.api import from_api
    from nodes.sd.denoisers import calc_cond_batch, unet_denoiser
    from nodes.sd.pag import pag_patch

    values = engine.run(from_api(graph()), outputs=["4", "6", "7"]).values
    model, positive, negative = values["4"][0], values["6"][0], values["7"][0]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    sigma = torch.tensor([3.0])
    plain_unet = unet_denoiser(model)
    plain = CFGDenoiser(plain_unet, positive, negative, 4.0)
    (cond,) = calc_cond_batch(plain_unet, [positive], x, sigma)
    unet = unet_denoiser(model)
    guided = CFGDenoiser(unet, positive, negative, 4.0)
    with patches_applied((pag_patch(2.0),), unet_denoiser=unet, cfg_denoiser=guided):
        term = guided.guidance_terms[0]
        perturbed_patch = unet.attn1_patches[0]
        perturbed_patch.live = True
        (perturbed,) = calc_cond_batch(unet, [positive], x, sigma)
        perturbed_patch.live = False
        out = guided(x, sigma)
    assert (perturbed - cond).abs().max() > 1e-3
    assert torch.allclose(out, plain(x, sigma) + 2.0 * (cond - perturbed), atol=1e-4)
    assert term not in guided.guidance_terms and unet.attn1_patches == []


@embedded
def test_every_cfg_patch_changes_the_result_and_leaves_the_plain_branch_identical(engine):
    patches = [("RescaleCFG", {"multiplier": 0.7}), ("PerturbedAttentionGuidance", {"scale": 3.0}),
               ("APG", {"eta": 1.0, "norm_threshold": 5.0, "momentum": 0.5}), ("CFGZeroStar", {}),
               ("CFGNorm", {"strength": 1.0}), ("TCFG", {}), ("Mahiro", {}),
               ("FreSca", {"scale_low": 1.0, "scale_high": 1.25, "freq_cutoff": 20})]
    engine.cache.clear()
    reference = latent(engine, graph(steps=4))
    engine.cache.clear()
    for patch in patches:
        g = graph(patch, steps=4)
        g["30"] = {**g["3"], "inputs": {**g["3"]["inputs"], "model": ["4", 0]}}
        from nodegraph.formats.api import from_api

        result = engine.run(from_api(g), outputs=["3", "30"])
        assert result.executed.index("3") < result.executed.index("30")
        assert torch.equal(result.values["30"][0].samples, reference), patch[0]
        assert (result.values["3"][0].samples - reference).abs().max() > 1e-3, patch[0]
        engine.cache.clear()


@embedded
def test_patches_compose_with_each_other_and_with_sag_and_sega(engine):
    """A chain of CFG-function, pre-CFG, post-CFG, attention and block patches plus SAG and SEGA: leaving out any
    one changes the result, so each contributes."""
    sega = ("SemanticGuidance", {"clip": ["4", 1], "concept": "green square", "direction": "add", "scale": 5.0,
                                 "warmup_steps": 0, "threshold": 0.9, "momentum_scale": 0.1, "momentum_beta": 0.4,
                                 "edit_weight": 1.0})
    chain = [("RescaleCFG", {"multiplier": 0.5}), ("APG", {"eta": 0.5, "norm_threshold": 5.0, "momentum": 0.0}),
             ("PerturbedAttentionGuidance", {"scale": 3.0}), ("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
             ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}), sega, ("CFGZeroStar", {})]
    full = latent(engine, graph(*chain, steps=3))
    assert torch.isfinite(full).all()
    for left_out in range(len(chain)):
        partial = latent(engine, graph(*(chain[:left_out] + chain[left_out + 1 :]), steps=3))
        assert (partial - full).abs().max() > 1e-3, chain[left_out][0]
    assert math.isfinite(float(full.std()))
