"""ModelSamplingDiscrete / ContinuousEDM / ContinuousV and ModelComputeDtype (nodes/sd/model_sampling.py,
nodes/model_patches/model_sampling.py): sigma tables and parametrisations against the papers' formulas and
diffusers' schedulers, and what the nodes do to a MODEL handle."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import LCMScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
from model_patches_helpers import HAS_EMBEDDED, cosine, engine_for, graph, latent

from nodegraph.formats.api import from_api
from nodes.model_patches.model_sampling import compute_dtype_handle, with_sampling
from nodes.sd.denoisers import EpsDenoiser, VDenoiser
from nodes.sd.model_sampling import (ZSNR_LAST_ALPHA_BAR, Sampling, continuous_v_sampling, discrete_sampling,
                                     edm_sampling, lcm_sigmas, rescale_zero_terminal_snr_sigmas)
from nodes.sd.schedules import model_sigmas, scaled_linear_alphas_cumprod

torch.set_num_threads(1)
SD_SIGMAS = model_sigmas(scaled_linear_alphas_cumprod())


def test_zsnr_sigmas_match_diffusers_rescale_zero_terminal_snr():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - rescale_zero_terminal_snr(betas), dim=0)
    reference = ((1 - abar[:-1]) / abar[:-1]) ** 0.5
    ours = rescale_zero_terminal_snr_sigmas(SD_SIGMAS)
    assert torch.allclose(ours[:-1], reference, rtol=1e-6)
    assert math.isclose(float(ours[-1]), math.sqrt((1 - ZSNR_LAST_ALPHA_BAR) / ZSNR_LAST_ALPHA_BAR), rel_tol=1e-9)
    assert math.isclose(float(ours[0]), float(SD_SIGMAS[0]), rel_tol=1e-9)  # the first step keeps its noise level
    assert discrete_sampling("v_prediction", zsnr=True).sigmas[-1] > 4000


def test_parametrisations_match_the_closed_forms():
    x, out = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    sigma = torch.tensor([0.1, 1.0, 14.0]).view(-1, 1, 1, 1)
    eps, v = discrete_sampling("eps", False), discrete_sampling("v_prediction", False)
    dummy = torch.nn.Linear(1, 1)
    assert torch.allclose(eps.denoised(x, sigma, out), EpsDenoiser(dummy, scaled_linear_alphas_cumprod())
                          .output_to_denoised(x, sigma, out))
    assert torch.allclose(v.denoised(x, sigma, out), VDenoiser(dummy, scaled_linear_alphas_cumprod())
                          .output_to_denoised(x, sigma, out), atol=1e-6)
    assert torch.allclose(eps.input_scale(sigma), 1 / (sigma**2 + 1) ** 0.5)
    assert torch.equal(discrete_sampling("x0", False).denoised(x, sigma, out), out)
    edm = edm_sampling("edm", 80.0, 0.002)  # Karras et al. 2022, table 1, sigma_data 0.5
    skip, scale_out = 0.25 / (sigma**2 + 0.25), sigma * 0.5 / (sigma**2 + 0.25) ** 0.5
    assert torch.allclose(edm.denoised(x, sigma, out), skip * x + scale_out * out, atol=1e-6)
    assert torch.allclose(edm.input_scale(sigma), 1 / (sigma**2 + 0.25) ** 0.5)
    assert torch.allclose(edm.timestep(sigma.flatten()), 0.25 * sigma.flatten().double().log())
    assert torch.allclose(edm.sigmas[[0, -1]], torch.tensor([0.002, 80.0], dtype=torch.float64))
    cv = continuous_v_sampling("v_prediction", 500.0, 0.03)
    assert torch.allclose(cv.timestep(sigma.flatten()), sigma.flatten().double().atan() * 2 / math.pi)
    # the discrete timestep is the table's: sigma at index 250 maps to timestep 250
    assert math.isclose(float(eps.timestep(SD_SIGMAS[250:251])), 250.0, abs_tol=1e-6)


def test_lcm_distilled_timesteps_and_boundary_conditions():
    sigmas = lcm_sigmas(SD_SIGMAS)
    assert len(sigmas) == 50 and torch.equal(sigmas, SD_SIGMAS[19::20])
    lcm = discrete_sampling("lcm", False)
    assert lcm.timestep(sigmas[[0, 10, 49]]).tolist() == [19.0, 219.0, 999.0]
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    x, out = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    sigma = sigmas[10].view(1, 1, 1, 1).float()
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(219)
    expected = c_out * (x - out * sigma) + c_skip * x  # ComfyUI's LCM, in sigma space
    assert torch.allclose(lcm.denoised(x, sigma, out), expected, atol=1e-5)


def test_unsupported_samplings_say_why():
    with pytest.raises(ValueError, match="Playground"):
        edm_sampling("edm_playground_v2.5", 120.0, 0.002)
    with pytest.raises(ValueError, match="unknown sampling"):
        discrete_sampling("flow", False)


embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded model's weights are not built yet")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return engine_for(tmp_path_factory.mktemp("sampling_patches"))


@pytest.fixture(scope="module")
def model(engine):
    return engine.run(from_api(graph()), outputs=["4"]).values["4"][0]


@embedded
def test_model_sampling_nodes_make_new_handles(model):
    edm = with_sampling(model, edm_sampling("eps", 14.6, 0.03), "edm")
    assert torch.allclose(model_sigmas(edm.alphas_cumprod)[[0, -1]], torch.tensor([0.03, 14.6], dtype=torch.float64))
    again = with_sampling(edm, discrete_sampling("v_prediction", True), "v")
    assert [p.kind for p in again.patches].count("model_sampling") == 1 and again.prediction == "v_prediction"
    assert model.patches == () and torch.equal(model_sigmas(model.alphas_cumprod), SD_SIGMAS.to(model.alphas_cumprod))


@embedded
def test_model_sampling_through_the_sampler(engine):
    plain = latent(engine, graph(steps=5))
    same = latent(engine, graph(("ModelSamplingDiscrete", {"sampling": "eps", "zsnr": False}), steps=5))
    assert torch.allclose(same, plain, atol=1e-3)  # the model's own reading, by the other code path
    for patch in (("ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": False}),
                  ("ModelSamplingDiscrete", {"sampling": "lcm", "zsnr": False}),
                  ("ModelSamplingContinuousEDM", {"sampling": "eps", "sigma_max": 14.6, "sigma_min": 0.03}),
                  ("ModelSamplingContinuousV", {"sampling": "v_prediction", "sigma_max": 500.0, "sigma_min": 0.03})):
        out = latent(engine, graph(patch, steps=5))
        assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-2, patch
    assert torch.equal(latent(engine, graph(steps=5)), plain)


@embedded
def test_compute_dtype_runs_a_cast_copy_and_default_goes_back(engine, model):
    bf16 = compute_dtype_handle(model, "bf16")
    assert bf16.dtype == torch.bfloat16 and next(bf16.unet.parameters()).dtype == torch.bfloat16
    assert next(model.unet.parameters()).dtype == torch.float32  # the cached UNet is untouched
    back = compute_dtype_handle(bf16, "default")
    assert back.dtype == torch.float32 and back.unet is model.unet
    plain = latent(engine, graph(steps=5))
    low = latent(engine, graph(("ModelComputeDtype", {"dtype": "bf16"}), steps=5))
    print(f"bf16 vs fp32 latent cosine {cosine(low, plain):.4f}")
    assert 0.95 < cosine(low, plain) and not torch.equal(low, plain)
    assert torch.equal(latent(engine, graph(("ModelComputeDtype", {"dtype": "fp32"}), steps=5)), plain)
