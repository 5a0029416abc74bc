"""KSampler's progress: every step is reported, but preview images are paced by wall time (and the last is
always sent), because on a GPU each preview waits for the device."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from nodegraph import Hooks, NodeContext, RunInfo
from nodes.sampling import PREVIEW_INTERVAL_S, KSampler, PreviewPacer
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.types import CondItem, Latent, ModelHandle

UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32, "sample_size": 8,
    "norm_num_groups": 32, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}


class Progress(Hooks):
    def __init__(self) -> None:
        self.events: list[tuple[int, int, Any]] = []

    def progress(self, run: RunInfo, node_id: str, value: int, total: int, preview: Any = None) -> None:
        self.events.append((value, total, preview))


def run_ksampler(env: Any, steps: int) -> tuple[list[tuple[int, int, Any]], float]:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)
    model = ModelHandle(unet, family="sd1", prediction="epsilon", alphas_cumprod=scaled_linear_alphas_cumprod())
    hooks = Progress()
    ctx = NodeContext("3", "KSampler", env, run=RunInfo(run_id="r", outputs=[]), hooks=hooks)
    embeds = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    start = time.monotonic()
    KSampler.execute(ctx, model=model, seed=0, steps=steps, cfg=1.0, sampler_name="euler", scheduler="karras",
                     positive=(CondItem(embeds),), negative=(CondItem(embeds),),
                     latent_image=Latent(torch.zeros(1, 4, 8, 8)), denoise=1.0)
    return hooks.events, time.monotonic() - start


def test_a_fast_run_reports_every_step_but_previews_few_and_always_the_last() -> None:
    events, seconds = run_ksampler(SimpleNamespace(), steps=20)
    assert [(value, total) for value, total, _ in events] == [(step, 20) for step in range(1, 21)]
    previews = [value for value, _, preview in events if preview is not None]
    assert previews[-1] == 20
    assert len(previews) <= 1 + seconds / PREVIEW_INTERVAL_S
    assert len(previews) < 20
    image = events[-1][2]
    assert image.shape == (1, 8, 8, 3) and image.device.type == "cpu" and 0 <= image.min() <= image.max() <= 1


def test_interval_zero_previews_every_step() -> None:
    events, _ = run_ksampler(SimpleNamespace(preview_interval_s=0.0), steps=3)
    assert all(preview is not None for _, _, preview in events)


def test_pacer_spaces_previews_by_wall_time() -> None:
    now = [0.0]
    pacer = PreviewPacer(0.5, clock=lambda: now[0])
    due = []
    for step in range(1, 13):
        now[0] += 0.2  # a step every 0.2 s
        if pacer.due(step, 12):
            due.append(step)
    assert due == [3, 6, 9, 12]  # 0.6 s apart (the first interval counts from the start), and the last step
