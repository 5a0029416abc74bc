"""SamplerCustom, SamplerCustomAdvanced and the NOISE nodes: sampling composed from NOISE, GUIDER, SAMPLER, SIGMAS.

The maths lives in nodes/sd (ksampler.sample_custom, noise.py, guiders.py); these nodes only assemble the
payloads. Both samplers report each step (with paced previews) and stop on an interrupt, as KSampler does.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from nodegraph import Boolean, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.guiders import CFGGuide, Guider
from ..sd.noise import Noise, add_noise
from ..sd.sampler_spec import SamplerSpec
from ..sd.types import Conditioning, Latent, ModelHandle
from .ksampler import MAX_SEED, run_model, step_progress


def _sample(ctx: NodeContext, noise: Noise, guider: Guider, sampler: SamplerSpec, sigmas: torch.Tensor,
            latent: Latent) -> tuple[Latent, Latent]:
    from ..sd.ksampler import sample_custom

    guider = replace(guider, model=run_model(ctx, guider.model))
    result = sample_custom(noise, guider, sampler, sigmas, latent, callback=step_progress(ctx, guider.model.family),
                           should_stop=lambda: ctx.interrupted)
    return result.output, result.denoised


class SamplerCustom(Node):
    schema = NodeSchema(
        type_id="SamplerCustom", display_name="SamplerCustom", category="sampling/custom_sampling",
        description="Samples with any SAMPLER down any SIGMAS under classifier-free guidance; denoised_output is "
                    "the last step's x0 prediction.",
        inputs=(Socket("model", "MODEL"),
                Boolean("add_noise", True),
                Int("noise_seed", 0, min=0, max=MAX_SEED, control_after_generate=True),
                Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Socket("sampler", "SAMPLER"), Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT")),
        outputs=(Out("LATENT", "output"), Out("LATENT", "denoised_output")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, add_noise: bool, noise_seed: int, cfg: float,
                positive: Conditioning, negative: Conditioning, sampler: SamplerSpec, sigmas: torch.Tensor,
                latent_image: Latent) -> tuple[Latent, Latent]:
        guider = CFGGuide(model, tuple(positive), tuple(negative), cfg)
        return _sample(ctx, Noise(noise_seed, enabled=add_noise), guider, sampler, sigmas, latent_image)


class SamplerCustomAdvanced(Node):
    schema = NodeSchema(
        type_id="SamplerCustomAdvanced", display_name="SamplerCustomAdvanced", category="sampling/custom_sampling",
        description="Samples from NOISE with a GUIDER, a SAMPLER and SIGMAS: KSampler taken apart.",
        inputs=(Socket("noise", "NOISE"), Socket("guider", "GUIDER"), Socket("sampler", "SAMPLER"),
                Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT")),
        outputs=(Out("LATENT", "output"), Out("LATENT", "denoised_output")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, noise: Noise, guider: Guider, sampler: SamplerSpec, sigmas: torch.Tensor,
                latent_image: Latent) -> tuple[Latent, Latent]:
        return _sample(ctx, noise, guider, sampler, sigmas, latent_image)


class RandomNoise(Node):
    schema = NodeSchema(
        type_id="RandomNoise", display_name="RandomNoise", category="sampling/custom_sampling/noise",
        description="Seeded starting noise, drawn per batch index on the CPU exactly as KSampler draws it.",
        inputs=(Int("noise_seed", 0, min=0, max=MAX_SEED, control_after_generate=True),),
        outputs=(Out("NOISE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, noise_seed: int) -> tuple[Noise]:
        return (Noise(noise_seed),)


class DisableNoise(Node):
    schema = NodeSchema(
        type_id="DisableNoise", display_name="DisableNoise", category="sampling/custom_sampling/noise",
        description="No starting noise: sampling starts from the latent as it is (e.g. after AddNoise).",
        outputs=(Out("NOISE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext) -> tuple[Noise]:
        return (Noise(0, enabled=False),)


class AddNoise(Node):
    schema = NodeSchema(
        type_id="AddNoise", display_name="AddNoise", category="_for_testing/custom_sampling/noise",
        description="Adds NOISE to a latent, scaled by the span of SIGMAS (first minus last).",
        inputs=(Socket("model", "MODEL"), Socket("noise", "NOISE"), Socket("sigmas", "SIGMAS"),
                Socket("latent_image", "LATENT")),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, noise: Noise, sigmas: torch.Tensor,
                latent_image: Latent) -> tuple[Latent]:
        return (add_noise(noise, sigmas, latent_image),)


NODES = (SamplerCustom, SamplerCustomAdvanced, RandomNoise, DisableNoise, AddNoise)
