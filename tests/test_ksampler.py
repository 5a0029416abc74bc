"""KSampler behaviour on a tiny seeded UNet, and the CFG denoiser and patch loop it builds on.

What a user sees: seeds reproduce, batch items are independent images, img2img keeps more of the input
at lower denoise, inpainting leaves the kept area untouched, and a stop request stops the run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

from nodegraph.errors import Interrupted
from nodes.sd import ksampler
from nodes.sd.denoisers import (
    CFGDenoiser,
    EpsDenoiser,
    GuidanceInputs,
    UNetCall,
    UNetDenoiser,
    area_and_weight,
    calc_cond_batch,
    unet_denoiser,
)
from nodes.sd.schedules import calculate_sigmas, scaled_linear_alphas_cumprod
from nodes.sd.types import CondItem, Latent, ModelHandle, ModelPatch

UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "sample_size": 8,
    "norm_num_groups": 32,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The test machine's 2 cores are shared; more threads than free cores makes tiny convolutions crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> ModelHandle:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    return ModelHandle(unet_ref=unet, family="sd1", prediction="epsilon", alphas_cumprod=scaled_linear_alphas_cumprod())


def embeds(seed: int) -> Tensor:
    return torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(seed))


POSITIVE = (CondItem(embeds=embeds(1)),)
NEGATIVE = (CondItem(embeds=embeds(2)),)


def run(model: ModelHandle, latent: Latent, **options: Any) -> Tensor:
    settings: dict[str, Any] = {
        "seed": 7,
        "steps": 4,
        "cfg": 5.0,
        "sampler_name": "euler",
        "scheduler": "karras",
        "positive": POSITIVE,
        "negative": NEGATIVE,
    }
    settings.update(options)
    return ksampler.sample(model, latent=latent, **settings).samples


def assert_same_up_to_rounding(a: Tensor, b: Tensor) -> None:
    """Equal up to float32 rounding that depends on batch size (CPU kernels block differently), which
    CFG amplifies: within 2e-5 of the largest magnitude (the untrained UNet's latents reach ~20)."""
    assert float((a - b).detach().abs().max()) < 2e-5 * float(b.detach().abs().max())


def zeros(batch: int = 1) -> Latent:
    return Latent(samples=torch.zeros(batch, 4, 8, 8))


def image_latent() -> Latent:
    return Latent(samples=torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)))


# -- KSampler -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral", "dpmpp_sde"])
def test_batch_items_differ_and_each_equals_its_single_run(model: ModelHandle, sampler_name: str) -> None:
    batch = run(model, zeros(3), sampler_name=sampler_name)
    assert batch.shape == (3, 4, 8, 8)
    assert not torch.allclose(batch[0], batch[1]) and not torch.allclose(batch[1], batch[2])
    for k in (0, 2):
        single = run(model, Latent(samples=torch.zeros(1, 4, 8, 8), batch_index=(k,)), sampler_name=sampler_name)
        assert_same_up_to_rounding(single[0], batch[k])


def test_same_seed_same_output_and_another_seed_differs(model: ModelHandle) -> None:
    first = run(model, zeros(), sampler_name="euler_ancestral")
    assert torch.equal(first, run(model, zeros(), sampler_name="euler_ancestral"))
    assert not torch.allclose(first, run(model, zeros(), sampler_name="euler_ancestral", seed=8))


def test_result_is_float32_on_the_cpu_with_finite_values(model: ModelHandle) -> None:
    out = run(model, Latent(samples=torch.zeros(1, 4, 8, 8, dtype=torch.float16)))
    assert out.dtype == torch.float32 and out.device.type == "cpu" and torch.isfinite(out).all()


def test_runs_the_unet_in_the_model_dtype(model: ModelHandle) -> None:
    seen: list[torch.dtype] = []
    half = copy.deepcopy(model.unet).to(torch.bfloat16)
    half.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    low = run(ModelHandle(half, "sd1", "epsilon", model.alphas_cumprod, dtype=torch.bfloat16), zeros())
    assert set(seen) == {torch.bfloat16} and low.dtype == torch.float32
    reference = run(model, zeros())
    assert float((low - reference).abs().mean()) < 0.05 * float(reference.abs().mean())


def test_denoise_runs_the_tail_of_a_longer_schedule(model: ModelHandle) -> None:
    alphas = model.alphas_cumprod
    torch.testing.assert_close(
        ksampler.sampling_sigmas(alphas, "normal", "euler", 5, 0.5), calculate_sigmas(alphas, "normal", 10)[-6:]
    )
    assert len(ksampler.sampling_sigmas(alphas, "normal", "euler", 5, 0.0)) == 0


def test_lower_denoise_keeps_more_of_the_input_latent(model: ModelHandle) -> None:
    init = image_latent()
    distance = {
        denoise: float((run(model, init, denoise=denoise) - init.samples).pow(2).mean()) for denoise in (1.0, 0.5, 0.2)
    }
    assert distance[0.2] < distance[0.5] < distance[1.0]


@pytest.mark.parametrize("mask_size", [8, 64], ids=["latent-size", "pixel-size"])
def test_noise_mask_keeps_the_masked_out_area_exactly(model: ModelHandle, mask_size: int) -> None:
    init = image_latent()
    mask = torch.zeros(1, 1, mask_size, mask_size)
    mask[..., : mask_size // 2] = 1.0  # left half may change
    out = run(model, Latent(samples=init.samples, noise_mask=mask), sampler_name="euler_ancestral")
    assert torch.equal(out[..., 4:], init.samples[..., 4:])
    assert not torch.allclose(out[..., :3], init.samples[..., :3], atol=0.1)


def test_two_advanced_passes_equal_one_full_run(model: ModelHandle) -> None:
    """KSamplerAdvanced: end_at_step with leftover noise, then continue without adding noise."""
    full = run(model, zeros(), steps=6)
    first = run(model, zeros(), steps=6, last_step=3)
    second = run(model, Latent(samples=first), steps=6, start_step=3, add_noise=False)
    torch.testing.assert_close(second, full, rtol=0, atol=1e-4)
    previews: list[Tensor] = []
    forced = run(
        model, zeros(), steps=6, last_step=3, force_full_denoise=True, callback=lambda i, n, x0: previews.append(x0)
    )
    # forced: the last Euler step goes to sigma 0, landing on that step's x0 prediction; unforced keeps noise
    torch.testing.assert_close(forced, previews[-1], rtol=0, atol=1e-4)
    assert not torch.allclose(first, previews[-1], atol=0.1)


def test_start_step_past_the_end_returns_the_latent_unchanged(model: ModelHandle) -> None:
    init = image_latent()
    assert torch.equal(run(model, init, start_step=4), init.samples)


def test_callback_reports_each_step_with_a_preview(model: ModelHandle) -> None:
    progress: list[tuple[int, int]] = []
    run(model, zeros(), callback=lambda step, total, x0: progress.append((step, total)) or None)
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_should_stop_interrupts_the_run(model: ModelHandle) -> None:
    asked: list[int] = []
    steps_done: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Interrupted):
        run(model, zeros(), should_stop=should_stop, callback=lambda step, total, x0: steps_done.append(step))
    assert steps_done == [1, 2]


def test_unknown_names_are_rejected(model: ModelHandle) -> None:
    with pytest.raises(ValueError, match="unknown sampler 'eulr'"):
        run(model, zeros(), sampler_name="eulr")
    with pytest.raises(ValueError, match="unknown scheduler 'karass'"):
        run(model, zeros(), scheduler="karass")


# -- CFG denoiser and conditioning --------------------------------------------------------------------


class CallLog:
    """A UNet wrapper (the extension point patches use) that records each call's batch size."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        self.batches.append(sample.shape[0])
        return call(sample, timestep, kwargs)


def probe() -> tuple[Tensor, Tensor]:
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 3.0
    return x, torch.tensor([3.0, 3.0])


def test_cfg_combines_positive_and_negative_in_one_unet_call(model: ModelHandle) -> None:
    denoiser = unet_denoiser(model)
    log = CallLog()
    denoiser.wrappers.append(log)
    x, sigma = probe()
    guided = CFGDenoiser(denoiser, POSITIVE, NEGATIVE, cfg=7.5)(x, sigma)
    assert log.batches == [4]
    with torch.no_grad():
        cond = denoiser(x, sigma, encoder_hidden_states=embeds(1).expand(2, -1, -1))
        uncond = denoiser(x, sigma, encoder_hidden_states=embeds(2).expand(2, -1, -1))
    assert_same_up_to_rounding(guided, uncond + 7.5 * (cond - uncond))


def test_cfg_one_skips_the_negative(model: ModelHandle) -> None:
    denoiser = unet_denoiser(model)
    log = CallLog()
    denoiser.wrappers.append(log)
    x, sigma = probe()
    CFGDenoiser(denoiser, POSITIVE, NEGATIVE, cfg=1.0)(x, sigma)
    assert log.batches == [2]


def test_entries_average_by_strength_and_areas_apply_only_inside(model: ModelHandle) -> None:
    denoiser = unet_denoiser(model)
    x, sigma = probe()
    with torch.no_grad():
        whole = {seed: denoiser(x, sigma, encoder_hidden_states=embeds(seed).expand(2, -1, -1)) for seed in (1, 2)}
        top = denoiser(x[:, :, :4], sigma, encoder_hidden_states=embeds(2).expand(2, -1, -1))
        (weighted,) = calc_cond_batch(
            denoiser, [(CondItem(embeds(1)), CondItem(embeds(2), strength=3.0))], x, sigma
        )
        (area,) = calc_cond_batch(denoiser, [(CondItem(embeds(1)), CondItem(embeds(2), area=(4, 8, 0, 0)))], x, sigma)
    torch.testing.assert_close(weighted, (whole[1] + 3 * whole[2]) / 4, rtol=0, atol=1e-5)
    torch.testing.assert_close(area[:, :, 4:], whole[1][:, :, 4:], rtol=0, atol=1e-5)
    torch.testing.assert_close(area[:, :, :4], (whole[1][:, :, :4] + top) / 2, rtol=0, atol=1e-5)


def test_area_weights_feather_inner_edges_like_comfyui() -> None:
    region, weight = area_and_weight(CondItem(embeds(1), area=(16, 16, 8, 8), strength=2.0), 32, 32)
    assert region == (16, 16, 8, 8)
    assert float(weight[0, 0, 8, 8]) == 2.0  # interior
    assert float(weight[0, 0, 0, 8]) == pytest.approx(2.0 * 0.25)  # one edge, 4-pixel ramp (16 // 4)
    assert float(weight[0, 0, 0, 0]) == pytest.approx(2.0 * 0.25 * 0.25)  # corner
    clipped, _ = area_and_weight(CondItem(embeds(1), area=(8, 8, 28, 0)), 32, 32)
    assert clipped == (4, 8, 28, 0)


@pytest.fixture(scope="module")
def sdxl_like() -> UNetDenoiser:
    torch.manual_seed(0)
    config = {**UNET_CONFIG, "addition_embed_type": "text_time", "addition_time_embed_dim": 8}
    unet = UNet2DConditionModel(**config, projection_class_embeddings_input_dim=32 + 6 * 8).eval()
    return EpsDenoiser(unet, scaled_linear_alphas_cumprod())


def test_sdxl_size_conditioning_defaults_to_the_latent_size_in_pixels(sdxl_like: UNetDenoiser) -> None:
    x, sigma = probe()
    pooled = torch.randn(1, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        default = calc_cond_batch(sdxl_like, [(CondItem(embeds(1), pooled=pooled),)], x, sigma)[0]
        explicit = CondItem(embeds(1), pooled=pooled, extras={"time_ids": (64, 64, 0, 0, 64, 64)})
        same = calc_cond_batch(sdxl_like, [(explicit,)], x, sigma)[0]
        other = CondItem(embeds(1), pooled=pooled, extras={"time_ids": (1024, 1024, 0, 0, 1024, 1024)})
        different = calc_cond_batch(sdxl_like, [(other,)], x, sigma)[0]
    assert default is not None and different is not None
    torch.testing.assert_close(default, same, rtol=0, atol=0)
    assert not torch.allclose(default, different, atol=1e-4)
    with pytest.raises(ValueError, match="pooled"):
        calc_cond_batch(sdxl_like, [(CondItem(embeds(1)),)], x, sigma)


# -- patches ------------------------------------------------------------------------------------------


def test_patches_apply_for_one_run_and_are_undone(model: ModelHandle) -> None:
    events: list[str] = []

    def shift_eps(denoiser: UNetDenoiser) -> Any:
        def wrapper(call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
            return call(sample, timestep, kwargs) + 0.5

        denoiser.wrappers.append(wrapper)
        return lambda: events.append("undo residual")

    def record_guidance(guided: CFGDenoiser) -> None:
        def term(inputs: GuidanceInputs) -> Tensor:
            events.append("guidance")
            return inputs.denoised

        guided.guidance_terms.append(term)

    weights_before = [p.detach().clone() for p in model.unet.parameters()]
    patched = model.with_patch(ModelPatch("residual", "shift", shift_eps)).with_patch(
        ModelPatch("guidance", "record", record_guidance)
    )
    plain, shifted = run(model, zeros()), run(patched, zeros())
    assert not torch.allclose(plain, shifted, atol=1e-3)
    assert events == ["guidance"] * 4 + ["undo residual"]
    assert model.patches == () and all(torch.equal(a, b) for a, b in zip(weights_before, model.unet.parameters()))
    assert torch.equal(run(model, zeros()), plain)


def test_patches_are_undone_when_the_run_is_interrupted(model: ModelHandle) -> None:
    undone: list[bool] = []
    patched = model.with_patch(ModelPatch("attention", "noop", lambda denoiser: lambda: undone.append(True)))
    with pytest.raises(Interrupted):
        run(patched, zeros(), should_stop=lambda: True)
    assert undone == [True]


def test_an_unknown_patch_kind_is_rejected_by_name(model: ModelHandle) -> None:
    patched = model.with_patch(ModelPatch("sideways", "mystery", lambda target: None))
    with pytest.raises(ValueError, match="'mystery' has unknown kind 'sideways'"):
        run(patched, zeros())
