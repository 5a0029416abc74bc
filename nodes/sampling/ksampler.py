"""KSampler and KSamplerAdvanced: ComfyUI's sampling nodes, a composition of the custom-sampling parts
(nodes/sd/ksampler.py), and the step progress and previews every sampling node reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.samplers import SAMPLERS
from ..sd.schedules import SCHEDULERS
from ..sd.types import Conditioning, Latent, ModelHandle

MAX_SEED = 0xFFFFFFFFFFFFFFFF

PREVIEW_INTERVAL_S = 0.5
"""Least wall time between two step previews; an application may set `Environment.preview_interval_s`."""

# Projection of SD latents to RGB for cheap step previews (a linear fit; any model gives a rough picture).
_LATENT_RGB = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
                            [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]])


def latent_preview(x0: torch.Tensor) -> torch.Tensor:
    """IMAGE [1,H,W,3] in 0..1 from the first latent of a batch (projected where it lies; only RGB comes back)."""
    rgb = torch.einsum("chw,cr->hwr", x0[0, :4].float(), _LATENT_RGB.to(x0.device))
    return ((rgb + 1) / 2).clamp(0, 1).unsqueeze(0).cpu()


class PreviewPacer:
    """Which steps get a preview image: the last, and others at least `interval_s` of wall time apart.

    Progress (the step count) goes out every step and costs nothing, but a preview reads the latent on the
    host, which on a GPU waits for every queued kernel: at batch 1 that costs more than a step. Deciding reads
    only `time.monotonic()`, never a tensor, so the decision itself causes no sync. The first interval counts
    from the start of the run, so a run shorter than `interval_s` gets just its final preview.
    """

    def __init__(self, interval_s: float = PREVIEW_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self.last = clock()

    def due(self, step: int, total: int) -> bool:
        now = self.clock()
        if step < total and now - self.last < self.interval_s:
            return False
        self.last = now
        return True


def step_progress(ctx: NodeContext, family: str | None = None) -> Callable[[int, int, torch.Tensor | None], None]:
    """A sampler callback reporting every step to `ctx`, with a preview image when the pacer allows one (TAESD's
    decoder for the model's `family` where installed and the preview method allows, else a linear projection)."""
    pacer = PreviewPacer(getattr(ctx.env, "preview_interval_s", PREVIEW_INTERVAL_S))  # any env without one
    from ..sd.taesd import preview_function

    make_preview = preview_function(ctx.env, family) or latent_preview

    def callback(step: int, total: int, x0: torch.Tensor | None) -> None:
        preview = make_preview(x0) if x0 is not None and pacer.due(step, total) else None
        ctx.progress(step, total, preview)

    return callback


def run_model(ctx: NodeContext, model: ModelHandle) -> ModelHandle:
    """The MODEL as this run samples it: with --compile, every sampler compiles its UNet."""
    if getattr(ctx.env, "compile", False) and model.compile_backend is None:
        return replace(model, compile_backend="inductor")
    return model


def _run(ctx: NodeContext, model: ModelHandle, **kwargs: Any) -> Latent:
    from ..sd.ksampler import sample

    return sample(run_model(ctx, model), callback=step_progress(ctx, model.family), should_stop=lambda: ctx.interrupted, **kwargs)


class KSampler(Node):
    schema = NodeSchema(
        type_id="KSampler", display_name="KSampler", category="sampling",
        description="Denoises a latent: txt2img at denoise 1, img2img below it, inpainting with a noise mask.",
        inputs=(Socket("model", "MODEL"),
                Int("seed", 0, min=0, max=MAX_SEED, control_after_generate=True),
                Int("steps", 20, min=1, max=10000),
                Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                Combo("sampler_name", tuple(SAMPLERS)),
                Combo("scheduler", tuple(SCHEDULERS)),
                Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Socket("latent_image", "LATENT"),
                Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, positive: Conditioning, negative: Conditioning, latent_image: Latent,
                denoise: float) -> tuple[Latent]:
        return (_run(ctx, model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                     positive=positive, negative=negative, latent=latent_image, denoise=denoise),)


class KSamplerAdvanced(Node):
    schema = NodeSchema(
        type_id="KSamplerAdvanced", display_name="KSampler (Advanced)", category="sampling",
        description="Runs steps start_at_step..end_at_step of a schedule, e.g. base then refiner.",
        inputs=(Socket("model", "MODEL"),
                Combo("add_noise", ("enable", "disable")),
                Int("noise_seed", 0, min=0, max=MAX_SEED, control_after_generate=True),
                Int("steps", 20, min=1, max=10000),
                Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                Combo("sampler_name", tuple(SAMPLERS)),
                Combo("scheduler", tuple(SCHEDULERS)),
                Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Socket("latent_image", "LATENT"),
                Int("start_at_step", 0, min=0, max=10000),
                Int("end_at_step", 10000, min=0, max=10000),
                Combo("return_with_leftover_noise", ("disable", "enable"))),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, add_noise: str, noise_seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, positive: Conditioning, negative: Conditioning,
                latent_image: Latent, start_at_step: int, end_at_step: int,
                return_with_leftover_noise: str) -> tuple[Latent]:
        return (_run(ctx, model, seed=noise_seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                     scheduler=scheduler, positive=positive, negative=negative, latent=latent_image, denoise=1.0,
                     start_step=start_at_step, last_step=end_at_step, add_noise=add_noise == "enable",
                     force_full_denoise=return_with_leftover_noise != "enable"),)


NODES = (KSampler, KSamplerAdvanced)
