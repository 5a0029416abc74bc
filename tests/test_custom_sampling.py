"""Custom sampling on a tiny seeded UNet: KSampler as a composition, guiders, noise, sampler options, PerpNeg.

What a user relies on: SamplerCustomAdvanced(RandomNoise, CFGGuider, KSamplerSelect, BasicScheduler) draws the
same latent as KSampler, bit for bit; each guider combines its predictions by ComfyUI's formula; sampler
option nodes reach the sampler; progress, previews and interrupts work as under KSampler.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

from nodegraph import Hooks, NodeContext, RunInfo
from nodegraph.context import CancelToken
from nodegraph.errors import Interrupted
from nodes.sampling import KSampler, KSamplerAdvanced
from nodes.sampling.custom_sampler import AddNoise, DisableNoise, RandomNoise, SamplerCustom, SamplerCustomAdvanced
from nodes.sampling.guiders import BasicGuider, CFGGuider, DualCFGGuider, PerpNeg, PerpNegGuider
from nodes.sampling.samplers import (KSamplerSelect, SamplerDPMPP_2M_SDE, SamplerDPMPP_2S_Ancestral,
                                     SamplerDPMPP_SDE, SamplerEulerAncestral, SamplerEulerCFGpp, SamplerLCMUpscale,
                                     SamplerLMS)
from nodes.sampling.schedulers import BasicScheduler
from nodes.sampling.sigmas import SplitSigmas
from nodes.sd.denoisers import CFGDenoiser, unet_denoiser
from nodes.sd.guiders import DualCFGGuide, PerpNegGuide
from nodes.sd.ksampler import prepare_noise
from nodes.sd.noise import Noise
from nodes.sd.perp_neg import perp_neg
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.types import CondItem, Latent, ModelHandle

UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32, "sample_size": 8,
    "norm_num_groups": 32, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> ModelHandle:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)
    return ModelHandle(unet_ref=unet, family="sd1", prediction="epsilon", alphas_cumprod=scaled_linear_alphas_cumprod())


def cond(seed: int) -> tuple[CondItem, ...]:
    return (CondItem(embeds=torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(seed))),)


POSITIVE, NEGATIVE, OTHER, EMPTY = cond(1), cond(2), cond(3), cond(4)


class Events(Hooks):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, Any]] = []

    def progress(self, run: RunInfo, node_id: str, value: int, total: int, preview: Any = None) -> None:
        self.steps.append((value, total, preview))


def context(events: Events | None = None, cancel: CancelToken | None = None) -> NodeContext:
    return NodeContext("9", "test", SimpleNamespace(preview_interval_s=0.0), run=RunInfo(run_id="r", outputs=[]),
                       hooks=events or Events(), cancel=cancel)


CTX = context()


def zeros(batch: int = 1, **extra: Any) -> Latent:
    return Latent(samples=torch.zeros(batch, 4, 8, 8), **extra)


def image_latent() -> Latent:
    return Latent(samples=torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)))


def ksampler(model: ModelHandle, latent: Latent, *, sampler_name: str = "euler", scheduler: str = "karras",
             steps: int = 3, cfg: float = 5.0, denoise: float = 1.0, seed: int = 7) -> Tensor:
    (out,) = KSampler.execute(CTX, model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                              scheduler=scheduler, positive=POSITIVE, negative=NEGATIVE, latent_image=latent,
                              denoise=denoise)
    return out.samples


def custom(model: ModelHandle, latent: Latent, guider: Any = None, sampler: Any = None, *, sigmas: Tensor | None = None,
           scheduler: str = "karras", steps: int = 3, denoise: float = 1.0, seed: int = 7, noise: Any = None,
           ctx: NodeContext = CTX) -> tuple[Latent, Latent]:
    (noise,) = (noise,) if noise is not None else RandomNoise.execute(ctx, noise_seed=seed)
    (guider,) = (guider,) if guider is not None else CFGGuider.execute(ctx, model=model, positive=POSITIVE,
                                                                       negative=NEGATIVE, cfg=5.0)
    (sampler,) = (sampler,) if sampler is not None else KSamplerSelect.execute(ctx, sampler_name="euler")
    if sigmas is None:
        (sigmas,) = BasicScheduler.execute(ctx, model=model, scheduler=scheduler, steps=steps, denoise=denoise)
    return SamplerCustomAdvanced.execute(ctx, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                         latent_image=latent)


def select(name: str) -> Any:
    return KSamplerSelect.execute(CTX, sampler_name=name)[0]


# -- KSampler is a composition ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name, scheduler, denoise, latent", [
    ("euler", "karras", 1.0, zeros()),
    ("euler_ancestral", "normal", 1.0, zeros(2, batch_index=(0, 3))),
    ("dpmpp_2m", "karras", 0.6, image_latent()),
])
def test_ksampler_equals_sampler_custom_advanced_bit_for_bit(model: ModelHandle, sampler_name: str, scheduler: str,
                                                           denoise: float, latent: Latent) -> None:
    reference = ksampler(model, latent, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise)
    output, _ = custom(model, latent, sampler=select(sampler_name), scheduler=scheduler, denoise=denoise)
    assert torch.equal(output.samples, reference)
    assert output.batch_index == latent.batch_index


def test_inpainting_mask_is_honoured_like_ksampler(model: ModelHandle) -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    latent = Latent(samples=image_latent().samples, noise_mask=mask)
    output, _ = custom(model, latent, sampler=select("euler_ancestral"))
    assert torch.equal(output.samples, ksampler(model, latent, sampler_name="euler_ancestral"))
    assert torch.equal(output.samples[..., 4:], latent.samples[..., 4:])


def test_sampler_custom_equals_the_advanced_composition_and_add_noise_off_matches_ksampler_advanced(
        model: ModelHandle) -> None:
    (sigmas,) = BasicScheduler.execute(CTX, model=model, scheduler="karras", steps=3, denoise=1.0)
    output, denoised = SamplerCustom.execute(CTX, model=model, add_noise=True, noise_seed=7, cfg=5.0,
                                             positive=POSITIVE, negative=NEGATIVE, sampler=select("euler_ancestral"),
                                             sigmas=sigmas, latent_image=zeros())
    advanced, advanced_denoised = custom(model, zeros(), sampler=select("euler_ancestral"))
    assert torch.equal(output.samples, advanced.samples) and torch.equal(denoised.samples, advanced_denoised.samples)

    init = image_latent()
    (reference,) = KSamplerAdvanced.execute(
        CTX, model=model, add_noise="disable", noise_seed=5, steps=4, cfg=5.0, sampler_name="euler_ancestral",
        scheduler="karras", positive=POSITIVE, negative=NEGATIVE, latent_image=init, start_at_step=2,
        end_at_step=10000, return_with_leftover_noise="disable")
    (full,) = BasicScheduler.execute(CTX, model=model, scheduler="karras", steps=4, denoise=1.0)
    _, tail = SplitSigmas.execute(CTX, sigmas=full, step=2)
    output, _ = SamplerCustom.execute(CTX, model=model, add_noise=False, noise_seed=5, cfg=5.0, positive=POSITIVE,
                                      negative=NEGATIVE, sampler=select("euler_ancestral"), sigmas=tail,
                                      latent_image=init)
    assert torch.equal(output.samples, reference.samples)


def test_denoised_output_is_the_last_steps_x0_prediction(model: ModelHandle) -> None:
    (full,) = BasicScheduler.execute(CTX, model=model, scheduler="karras", steps=4, denoise=1.0)
    high, _ = SplitSigmas.execute(CTX, sigmas=full, step=2)
    output, denoised = custom(model, zeros(), sigmas=high)
    assert not torch.allclose(output.samples, denoised.samples, atol=0.1)
    # x0 of the last step (from sigma_1) = one Euler step from x at sigma_1 straight to 0
    at_sigma_1, _ = custom(model, zeros(), sigmas=high[:2])
    (no_noise,) = DisableNoise.execute(CTX)
    x0, _ = custom(model, at_sigma_1, sigmas=torch.stack([high[1], torch.tensor(0.0)]), noise=no_noise)
    torch.testing.assert_close(denoised.samples, x0.samples, rtol=0, atol=1e-4)


def test_progress_previews_and_interrupt(model: ModelHandle) -> None:
    events = Events()
    custom(model, zeros(), ctx=context(events))
    assert [(step, total) for step, total, _ in events.steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(preview is not None and preview.shape == (1, 8, 8, 3) for _, _, preview in events.steps)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Interrupted):
        custom(model, zeros(), ctx=context(cancel=cancel))


# -- guiders ---------------------------------------------------------------------------------------------


def predictions(model: ModelHandle, x: Tensor, sigma: Tensor, *sets: tuple[CondItem, ...]) -> list[Tensor]:
    """Each conditioning's own x0 prediction, evaluated alone (CFG at 1 with that positive)."""
    unet = unet_denoiser(model)
    return [CFGDenoiser(unet, items, (), 1.0)(x, sigma) for items in sets]


def noisy() -> tuple[Tensor, Tensor]:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11)) * 3.0, torch.tensor([3.0])


def test_basic_guider_is_cfg_one(model: ModelHandle) -> None:
    (basic,) = BasicGuider.execute(CTX, model=model, conditioning=POSITIVE)
    (cfg_one,) = CFGGuider.execute(CTX, model=model, positive=POSITIVE, negative=NEGATIVE, cfg=1.0)
    assert torch.equal(custom(model, zeros(), basic)[0].samples, custom(model, zeros(), cfg_one)[0].samples)
    assert not torch.allclose(custom(model, zeros(), basic)[0].samples, custom(model, zeros())[0].samples)


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_guider_formula(model: ModelHandle, style: str) -> None:
    (guider,) = DualCFGGuider.execute(CTX, model=model, cond1=POSITIVE, cond2=OTHER, negative=NEGATIVE,
                                      cfg_conds=3.0, cfg_cond2_negative=2.0, style=style)
    assert guider == DualCFGGuide(model, POSITIVE, OTHER, NEGATIVE, 3.0, 2.0, nested=style == "nested")
    x, sigma = noisy()
    p, m, n = predictions(model, x, sigma, POSITIVE, OTHER, NEGATIVE)
    expected = n + 2.0 * (m - n) + 3.0 * (p - m) if style == "regular" else n + 2.0 * ((m + 3.0 * (p - m)) - n)
    got = guider.denoiser(unet_denoiser(model))(x, sigma)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


def test_dual_cfg_at_scale_one_is_the_positive_alone(model: ModelHandle) -> None:
    x, sigma = noisy()
    (p,) = predictions(model, x, sigma, POSITIVE)
    guide = DualCFGGuide(model, POSITIVE, OTHER, (), 1.0, 1.0)  # nothing else evaluated: an empty negative is fine
    torch.testing.assert_close(guide.denoiser(unet_denoiser(model))(x, sigma), p)


def test_perp_neg_formula_on_small_tensors() -> None:
    empty = torch.tensor([[0.5, 0.5, 0.0]])
    positive = empty + torch.tensor([[2.0, 0.0, 0.0]])
    parallel = empty + torch.tensor([[-1.0, 0.0, 0.0]])  # along the positive: Perp-Neg ignores it
    across = empty + torch.tensor([[1.0, 3.0, 0.0]])  # only its (0, 3, 0) part is removed
    torch.testing.assert_close(perp_neg(positive, parallel, empty, 1.0, 4.0), empty + 4.0 * (positive - empty))
    torch.testing.assert_close(perp_neg(positive, across, empty, 0.5, 4.0),
                               empty + 4.0 * (torch.tensor([[2.0, 0.0, 0.0]]) - 0.5 * torch.tensor([[0.0, 3.0, 0.0]])))


def test_perp_neg_guider_formula_and_effect(model: ModelHandle) -> None:
    (guider,) = PerpNegGuider.execute(CTX, model=model, positive=POSITIVE, negative=NEGATIVE,
                                      empty_conditioning=EMPTY, cfg=4.0, neg_scale=1.5)
    assert guider == PerpNegGuide(model, POSITIVE, NEGATIVE, EMPTY, 4.0, 1.5)
    x, sigma = noisy()
    p, n, e = predictions(model, x, sigma, POSITIVE, NEGATIVE, EMPTY)
    got = guider.denoiser(unet_denoiser(model))(x, sigma)
    torch.testing.assert_close(got, perp_neg(p, n, e, 1.5, 4.0), rtol=0, atol=1e-4)
    # the effect: a negative equal to the positive removes nothing under Perp-Neg (plain CFG would cancel it all)
    same = PerpNegGuide(model, POSITIVE, POSITIVE, EMPTY, 4.0, 1.0).denoiser(unet_denoiser(model))(x, sigma)
    torch.testing.assert_close(same, e + 4.0 * (p - e), rtol=0, atol=1e-4)
    assert float((same - p).abs().max()) > 0.1


def test_perp_neg_patch_equals_the_perp_neg_guider_and_leaves_the_model_alone(model: ModelHandle) -> None:
    (patched,) = PerpNeg.execute(CTX, model=model, empty_conditioning=EMPTY, neg_scale=1.5)
    assert model.patches == () and [p.name for p in patched.patches] == ["perp_neg"]
    via_patch = ksampler(patched, zeros(), cfg=4.0)
    (guider,) = PerpNegGuider.execute(CTX, model=model, positive=POSITIVE, negative=NEGATIVE,
                                      empty_conditioning=EMPTY, cfg=4.0, neg_scale=1.5)
    via_guider, _ = custom(model, zeros(), guider)
    torch.testing.assert_close(via_patch, via_guider.samples, rtol=0, atol=1e-4)
    assert not torch.allclose(via_patch, ksampler(model, zeros(), cfg=4.0), atol=1e-2)


# -- noise -----------------------------------------------------------------------------------------------


def test_random_noise_is_ksamplers_initial_noise_and_disable_noise_is_zeros() -> None:
    latent = zeros(2, batch_index=(1, 4))
    (noise,) = RandomNoise.execute(CTX, noise_seed=123)
    assert noise == Noise(123) and torch.equal(noise.initial(latent), prepare_noise(latent.samples, 123, (1, 4)))
    (disabled,) = DisableNoise.execute(CTX)
    assert disabled == Noise(0, enabled=False) and torch.equal(disabled.initial(latent), torch.zeros(2, 4, 8, 8))


def test_add_noise_adds_noise_scaled_by_the_schedule_span(model: ModelHandle) -> None:
    init = image_latent()
    (noise,) = RandomNoise.execute(CTX, noise_seed=9)
    drawn = prepare_noise(init.samples, 9)
    (out,) = AddNoise.execute(CTX, model=model, noise=noise, sigmas=torch.tensor([6.0, 2.0, 0.5]), latent_image=init)
    torch.testing.assert_close(out.samples, init.samples + drawn * 5.5)
    (single,) = AddNoise.execute(CTX, model=model, noise=noise, sigmas=torch.tensor([3.0]), latent_image=init)
    torch.testing.assert_close(single.samples, init.samples + drawn * 3.0)
    (same,) = AddNoise.execute(CTX, model=model, noise=noise, sigmas=torch.zeros(0), latent_image=init)
    assert same is init


# -- sampler options reach the sampler -------------------------------------------------------------------


def test_euler_ancestral_without_noise_is_euler_and_lms_of_order_one_is_euler(model: ModelHandle) -> None:
    euler, _ = custom(model, zeros(), sampler=select("euler"))
    (quiet,) = SamplerEulerAncestral.execute(CTX, eta=0.0, s_noise=1.0)
    assert quiet.name == "euler_ancestral" and quiet.kwargs == {"eta": 0.0, "s_noise": 1.0}
    torch.testing.assert_close(custom(model, zeros(), sampler=quiet)[0].samples, euler.samples)
    (noisy_one,) = SamplerEulerAncestral.execute(CTX, eta=1.0, s_noise=1.0)
    assert not torch.allclose(custom(model, zeros(), sampler=noisy_one)[0].samples, euler.samples, atol=1e-3)
    (lms_one,) = SamplerLMS.execute(CTX, order=1)
    assert lms_one.kwargs == {"order": 1}
    torch.testing.assert_close(custom(model, zeros(), sampler=lms_one)[0].samples, euler.samples)


def test_sde_sampler_options_change_the_result(model: ModelHandle) -> None:
    (quiet,) = SamplerDPMPP_2M_SDE.execute(CTX, solver_type="heun", eta=0.0, s_noise=1.0, noise_device="cpu")
    (noisy_one,) = SamplerDPMPP_2M_SDE.execute(CTX, solver_type="heun", eta=1.0, s_noise=1.0, noise_device="cpu")
    assert quiet.name == "dpmpp_2m_sde" and quiet.kwargs == {"eta": 0.0, "s_noise": 1.0, "solver_type": "heun"}
    a, b = (custom(model, zeros(), sampler=s)[0].samples for s in (quiet, noisy_one))
    assert torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-3)
    (sde,) = SamplerDPMPP_SDE.execute(CTX, eta=1.0, s_noise=0.5, r=0.3, noise_device="cpu")
    (ancestral,) = SamplerDPMPP_2S_Ancestral.execute(CTX, eta=0.5, s_noise=1.0)
    assert sde.kwargs == {"eta": 1.0, "s_noise": 0.5, "r": 0.3} and ancestral.name == "dpmpp_2s_ancestral"
    for spec in (sde, ancestral):
        assert torch.isfinite(custom(model, zeros(), sampler=spec)[0].samples).all()


def test_lcm_upscale_grows_the_latent(model: ModelHandle) -> None:
    (spec,) = SamplerLCMUpscale.execute(CTX, scale_ratio=2.0, scale_steps=-1, upscale_method="bilinear")
    assert spec.kwargs == {"total_upscale": 2.0, "upscale_steps": None, "upscale_method": "bilinear"}
    output, _ = custom(model, zeros(), sampler=spec, steps=4)
    assert output.samples.shape == (1, 4, 16, 16) and torch.isfinite(output.samples).all()
    again, _ = custom(model, zeros(), sampler=spec, steps=4)
    assert torch.equal(again.samples, output.samples)  # its own noise is seeded by the NOISE seed


def test_euler_cfg_pp_alternative_with_equal_prompts_at_cfg_one_is_euler(model: ModelHandle) -> None:
    (alternative,) = SamplerEulerCFGpp.execute(CTX, version="alternative")
    (regular,) = SamplerEulerCFGpp.execute(CTX, version="regular")
    assert regular.name == "euler_cfg_pp" and regular.function is None
    (same,) = CFGGuider.execute(CTX, model=model, positive=POSITIVE, negative=POSITIVE, cfg=1.0)
    output, _ = custom(model, zeros(), same, alternative)
    torch.testing.assert_close(output.samples, custom(model, zeros(), same)[0].samples, rtol=0, atol=1e-4)
    (guided,) = CFGGuider.execute(CTX, model=model, positive=POSITIVE, negative=NEGATIVE, cfg=3.0)
    assert not torch.allclose(custom(model, zeros(), guided, alternative)[0].samples,
                              custom(model, zeros(), guided)[0].samples, atol=1e-3)
