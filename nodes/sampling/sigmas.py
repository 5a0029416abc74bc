"""Sigma tools: split, flip, re-seed and refine SIGMAS, and turn a sampling percentage into a sigma."""

from __future__ import annotations

import torch

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd import sigmas as sigma_maths
from ..sd.types import ModelHandle

CATEGORY = "sampling/custom_sampling/sigmas"


class SplitSigmas(Node):
    schema = NodeSchema(
        type_id="SplitSigmas", display_name="SplitSigmas", category=CATEGORY,
        description="Splits a schedule at a step; both halves share that sigma, so two samplers can chain.",
        inputs=(Socket("sigmas", "SIGMAS"), Int("step", 0, min=0, max=10000)),
        outputs=(Out("SIGMAS", "high_sigmas"), Out("SIGMAS", "low_sigmas")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sigma_maths.split_sigmas(sigmas, step)


class SplitSigmasDenoise(Node):
    schema = NodeSchema(
        type_id="SplitSigmasDenoise", display_name="SplitSigmasDenoise", category=CATEGORY,
        description="Splits off the last denoise fraction of the steps as low_sigmas.",
        inputs=(Socket("sigmas", "SIGMAS"), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("SIGMAS", "high_sigmas"), Out("SIGMAS", "low_sigmas")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
        return sigma_maths.split_sigmas_denoise(sigmas, denoise)


class FlipSigmas(Node):
    schema = NodeSchema(
        type_id="FlipSigmas", display_name="FlipSigmas", category=CATEGORY,
        description="Reverses a schedule (to run a sampler towards noise, e.g. for inversion).",
        inputs=(Socket("sigmas", "SIGMAS"),),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, sigmas: torch.Tensor) -> tuple[torch.Tensor]:
        return (sigma_maths.flip_sigmas(sigmas),)


class SetFirstSigma(Node):
    schema = NodeSchema(
        type_id="SetFirstSigma", display_name="SetFirstSigma", category=CATEGORY,
        description="Replaces the first sigma of a schedule.",
        inputs=(Socket("sigmas", "SIGMAS"), Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, sigmas: torch.Tensor, sigma: float) -> tuple[torch.Tensor]:
        return (sigma_maths.set_first_sigma(sigmas, sigma),)


class ExtendIntermediateSigmas(Node):
    schema = NodeSchema(
        type_id="ExtendIntermediateSigmas", display_name="ExtendIntermediateSigmas", category=CATEGORY,
        description="Splits each step starting between end_at_sigma and start_at_sigma (-1: any) into sub-steps.",
        inputs=(Socket("sigmas", "SIGMAS"),
                Int("steps", 2, min=1, max=100),
                Float("start_at_sigma", -1.0, min=-1.0, max=20000.0, step=0.01),
                Float("end_at_sigma", 12.0, min=0.0, max=20000.0, step=0.01),
                Combo("spacing", sigma_maths.EXTEND_SPACINGS)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, sigmas: torch.Tensor, steps: int, start_at_sigma: float,
                end_at_sigma: float, spacing: str) -> tuple[torch.Tensor]:
        return (sigma_maths.extend_intermediate_sigmas(sigmas, steps, start_at_sigma, end_at_sigma, spacing),)


class SamplingPercentToSigma(Node):
    schema = NodeSchema(
        type_id="SamplingPercentToSigma", display_name="SamplingPercentToSigma", category=CATEGORY,
        description="The model's sigma at a fraction of sampling (0: start, 1: end), as ComfyUI's ranges use it.",
        inputs=(Socket("model", "MODEL"),
                Float("sampling_percent", 0.0, min=0.0, max=1.0, step=0.0001),
                Boolean("return_actual_sigma", False,
                        tooltip="True: at 0 and 1 give the model's real sigma_max and sigma_min, not the values "
                                "that step ranges compare against.")),
        outputs=(Out("FLOAT", "sigma_value"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, sampling_percent: float,
                return_actual_sigma: bool) -> tuple[float]:
        return (sigma_maths.sampling_percent_to_sigma(model.alphas_cumprod, sampling_percent, return_actual_sigma),)


NODES = (SplitSigmas, SplitSigmasDenoise, FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas,
         SamplingPercentToSigma)
