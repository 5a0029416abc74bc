"""What a sampling run prepares once instead of every step: the UNet's conditioning kwargs, on its device and in
its dtype; and the CUDA-only channels_last layout, which must leave a CPU model untouched."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel

from nodes.sd import ksampler
from nodes.sd.denoisers import channels_last_on_cuda, unet_denoiser
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.types import CondItem, Latent, ModelHandle, ModelPatch

UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32, "sample_size": 8,
    "norm_num_groups": 32, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}


def tiny_unet(dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**UNET_CONFIG).eval().requires_grad_(False).to(dtype)


def embeds(seed: int) -> torch.Tensor:
    return torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(seed))


def recording_patch(seen: list[dict[str, Any]]) -> ModelPatch:
    """A UNet wrapper that keeps the kwargs of every UNet call."""

    def apply(unet_denoiser: Any) -> Any:
        def wrapper(call: Any, sample: torch.Tensor, timestep: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
            seen.append(dict(kwargs))
            return call(sample, timestep, kwargs)

        unet_denoiser.wrappers.append(wrapper)
        return lambda: unet_denoiser.wrappers.remove(wrapper)

    return ModelPatch(kind="residual", name="record", apply=apply)


def test_conditioning_reaches_every_step_as_the_same_tensors_in_the_unets_dtype() -> None:
    seen: list[dict[str, Any]] = []
    model = ModelHandle(tiny_unet(torch.float64), family="sd1", prediction="epsilon",
                        alphas_cumprod=scaled_linear_alphas_cumprod(), dtype=torch.float64)
    positive = (CondItem(embeds(1)), CondItem(embeds(3), area=(4, 4, 0, 0)))  # two shapes: two UNet calls a step
    ksampler.sample(model.with_patch(recording_patch(seen)), seed=0, steps=5, cfg=4.0, sampler_name="euler",
                    scheduler="karras", positive=positive, negative=(CondItem(embeds(2)),),
                    latent=Latent(torch.zeros(1, 4, 8, 8)))
    assert len(seen) == 10
    per_shape = [seen[0::2], seen[1::2]]
    for calls in per_shape:
        first = calls[0]["encoder_hidden_states"]
        assert first.dtype == torch.float64
        assert all(call["encoder_hidden_states"] is first for call in calls), "re-built or re-copied on a later step"
    assert per_shape[0][0]["encoder_hidden_states"] is not per_shape[1][0]["encoder_hidden_states"]


def test_a_new_run_builds_its_own_conditioning() -> None:
    """Plans live on the per-run denoiser, so different prompts in later runs are never served stale kwargs."""
    model = ModelHandle(tiny_unet(), family="sd1", prediction="epsilon",
                        alphas_cumprod=scaled_linear_alphas_cumprod())
    results = [
        ksampler.sample(model, seed=0, steps=2, cfg=4.0, sampler_name="euler", scheduler="karras",
                        positive=(CondItem(embeds(seed)),), negative=(CondItem(embeds(2)),),
                        latent=Latent(torch.zeros(1, 4, 8, 8))).samples
        for seed in (1, 5)
    ]
    assert (results[0] - results[1]).abs().max() > 1e-3
    assert unet_denoiser(model).cond_plans == {}


def test_channels_last_changes_nothing_off_cuda() -> None:
    unet = tiny_unet()
    before = {name: (p.stride(), p.data_ptr()) for name, p in unet.named_parameters()}
    assert channels_last_on_cuda(unet, torch.device("cpu")) is False
    assert {name: (p.stride(), p.data_ptr()) for name, p in unet.named_parameters()} == before
    model = ModelHandle(unet, family="sd1", prediction="epsilon", alphas_cumprod=scaled_linear_alphas_cumprod())
    assert unet_denoiser(model).channels_last is False
