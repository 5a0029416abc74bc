"""Schedulers: nodes that make SIGMAS, from a model's training schedule, from parameters, or from published tables.

Each returns a 1-D float32 CPU tensor (nodes/sd/sigmas.py has the maths and the papers).
"""

from __future__ import annotations

import torch

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket
from nodegraph.schema import InputSpec

from ..sd import sigmas as sigma_maths
from ..sd.schedules import beta as beta_schedule
from ..sd.schedules import get_sigmas_exponential, get_sigmas_karras, model_sigmas
from ..sd.types import ModelHandle
from .names import SCHEDULER_NAMES

CATEGORY = "sampling/custom_sampling/schedulers"


def _sigma_range(rho: float | None = None) -> tuple[InputSpec, ...]:
    """steps, sigma_max, sigma_min (SD1's range by default) and, when given, rho: the parametric schedules' inputs."""
    inputs = (Int("steps", 20, min=1, max=10000),
              Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01),
              Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01))
    return inputs if rho is None else (*inputs, Float("rho", rho, min=0.0, max=100.0, step=0.01))


class BasicScheduler(Node):
    schema = NodeSchema(
        type_id="BasicScheduler", display_name="BasicScheduler", category=CATEGORY,
        description="KSampler's schedule for a model: the last `steps` steps of a steps / denoise step schedule.",
        inputs=(Socket("model", "MODEL"),
                Combo("scheduler", SCHEDULER_NAMES),
                Int("steps", 20, min=1, max=10000),
                Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, scheduler: str, steps: int,
                denoise: float) -> tuple[torch.Tensor]:
        return (sigma_maths.basic_scheduler(model.alphas_cumprod, scheduler, steps, denoise),)


class KarrasScheduler(Node):
    schema = NodeSchema(
        type_id="KarrasScheduler", display_name="KarrasScheduler", category=CATEGORY,
        description="Karras et al. 2022's spacing: sigma^(1/rho) evenly spaced from sigma_max to sigma_min.",
        inputs=_sigma_range(rho=7.0), outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float,
                rho: float) -> tuple[torch.Tensor]:
        return (get_sigmas_karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    schema = NodeSchema(
        type_id="ExponentialScheduler", display_name="ExponentialScheduler", category=CATEGORY,
        description="Sigmas evenly spaced in log-sigma from sigma_max to sigma_min.",
        inputs=_sigma_range(), outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float) -> tuple[torch.Tensor]:
        return (get_sigmas_exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(Node):
    schema = NodeSchema(
        type_id="PolyexponentialScheduler", display_name="PolyexponentialScheduler", category=CATEGORY,
        description="Log-sigma falls along a polynomial ramp^rho (rho 1 is the exponential schedule).",
        inputs=_sigma_range(rho=1.0), outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float,
                rho: float) -> tuple[torch.Tensor]:
        return (sigma_maths.get_sigmas_polyexponential(steps, sigma_min, sigma_max, rho),)


class LaplaceScheduler(Node):
    schema = NodeSchema(
        type_id="LaplaceScheduler", display_name="LaplaceScheduler", category=CATEGORY,
        description="Log-sigma at the quantiles of a Laplace(mu, beta) distribution, clamped to the range.",
        inputs=(*_sigma_range(),
                Float("mu", 0.0, min=-10.0, max=10.0, step=0.1),
                Float("beta", 0.5, min=0.0, max=10.0, step=0.1)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float, mu: float,
                beta: float) -> tuple[torch.Tensor]:
        return (sigma_maths.get_sigmas_laplace(steps, sigma_min, sigma_max, mu, beta),)


class VPScheduler(Node):
    schema = NodeSchema(
        type_id="VPScheduler", display_name="VPScheduler", category=CATEGORY,
        description="The continuous variance-preserving SDE's sigmas (Song et al. 2021).",
        inputs=(Int("steps", 20, min=1, max=10000),
                Float("beta_d", 19.9, min=0.0, max=5000.0, step=0.01),
                Float("beta_min", 0.1, min=0.0, max=5000.0, step=0.01),
                Float("eps_s", 0.001, min=0.0, max=1.0, step=0.0001)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, steps: int, beta_d: float, beta_min: float,
                eps_s: float) -> tuple[torch.Tensor]:
        return (sigma_maths.get_sigmas_vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(Node):
    schema = NodeSchema(
        type_id="BetaSamplingScheduler", display_name="BetaSamplingScheduler", category=CATEGORY,
        description="Timesteps at the quantiles of Beta(alpha, beta) (Lee et al. 2024), crowding both ends.",
        inputs=(Socket("model", "MODEL"),
                Int("steps", 20, min=1, max=10000),
                Float("alpha", 0.6, min=0.0, max=50.0, step=0.01),
                Float("beta", 0.6, min=0.0, max=50.0, step=0.01)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, steps: int, alpha: float,
                beta: float) -> tuple[torch.Tensor]:
        return (beta_schedule(model_sigmas(model.alphas_cumprod), steps, alpha, beta),)


class SDTurboScheduler(Node):
    schema = NodeSchema(
        type_id="SDTurboScheduler", display_name="SDTurboScheduler", category=CATEGORY,
        description="SD-Turbo's few-step schedule: training timesteps 999, 899, ..., entered at 1 - denoise.",
        inputs=(Socket("model", "MODEL"),
                Int("steps", 1, min=1, max=10),
                Float("denoise", 1.0, min=0, max=1.0, step=0.01)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, steps: int, denoise: float) -> tuple[torch.Tensor]:
        return (sigma_maths.sd_turbo(model.alphas_cumprod, steps, denoise),)


class AlignYourStepsScheduler(Node):
    schema = NodeSchema(
        type_id="AlignYourStepsScheduler", display_name="AlignYourStepsScheduler", category=CATEGORY,
        description="NVIDIA's Align Your Steps schedules (Sabour et al. 2024), stretched log-linearly to `steps`.",
        inputs=(Combo("model_type", tuple(sigma_maths.AYS_NOISE_LEVELS)),
                Int("steps", 10, min=1, max=10000),
                Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model_type: str, steps: int, denoise: float) -> tuple[torch.Tensor]:
        return (sigma_maths.align_your_steps(model_type, steps, denoise),)


class GITSScheduler(Node):
    schema = NodeSchema(
        type_id="GITSScheduler", display_name="GITSScheduler", category=CATEGORY,
        description="GITS' searched SD1 schedules (Chen et al. 2024); coeff trades early against late steps.",
        inputs=(Float("coeff", 1.20, min=0.80, max=1.50, step=0.05),
                Int("steps", 10, min=2, max=1000),
                Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, coeff: float, steps: int, denoise: float) -> tuple[torch.Tensor]:
        return (sigma_maths.gits(coeff, steps, denoise),)


class OptimalStepsScheduler(Node):
    schema = NodeSchema(
        type_id="OptimalStepsScheduler", display_name="OptimalStepsScheduler", category=CATEGORY,
        description="Optimal Steps' searched schedules for flow models (Pei et al. 2025).",
        inputs=(Combo("model_type", tuple(sigma_maths.OPTIMAL_STEPS_NOISE_LEVELS)),
                Int("steps", 20, min=3, max=1000),
                Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("SIGMAS"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model_type: str, steps: int, denoise: float) -> tuple[torch.Tensor]:
        return (sigma_maths.optimal_steps(model_type, steps, denoise),)


NODES = (BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler,
         VPScheduler, BetaSamplingScheduler, SDTurboScheduler, AlignYourStepsScheduler, GITSScheduler,
         OptimalStepsScheduler)
