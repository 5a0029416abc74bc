"""SAMPLER: which sampling algorithm a run uses and with which options (ComfyUI's KSAMPLER objects).

A SamplerSpec names a sampler of `samplers.SAMPLERS` and carries its keyword options; the name is resolved
when the run starts, so a SAMPLER made before a sampler was registered still works once it is. A few of
ComfyUI's sampler nodes bring their own function instead (SamplerLCMUpscale, SamplerEulerCFGpp's
"alternative"); those go in `function`. Options that are functions in ComfyUI (ER-SDE's noise scaler,
SA-Solver's tau) are small frozen callables here, so a SAMPLER compares and prints by value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

RUN_INPUTS: frozenset[str] = frozenset({"cfg_denoiser", "seed"})
"""What the run can hand a `function` sampler besides the usual arguments (see SamplerSpec.run_inputs)."""


@dataclass(frozen=True)
class SamplerSpec:
    """SAMPLER: a sampler name plus options, or a sampler function of its own."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    """Keyword options for the sampler function, as (name, value) pairs (named as k-diffusion names them)."""
    function: Callable[..., Tensor] | None = None
    """A sampler outside samplers.SAMPLERS, called like them: fn(denoiser, x, sigmas, *, callback, noise_sampler,
    **options)."""
    run_inputs: frozenset[str] = frozenset()
    """Extra run objects `function` takes by keyword: "cfg_denoiser" (the run's guidance denoiser, to read the
    unconditional prediction) and "seed" (the NOISE seed, for samplers that draw their own noise)."""

    def __post_init__(self) -> None:
        unknown = self.run_inputs - RUN_INPUTS
        if unknown:
            raise ValueError(f"sampler {self.name!r}: unknown run inputs {sorted(unknown)}; "
                             f"expected some of {sorted(RUN_INPUTS)}")
        if self.run_inputs and self.function is None:
            raise ValueError(f"sampler {self.name!r}: run_inputs need a sampler function")

    @classmethod
    def of(cls, name: str, **options: Any) -> SamplerSpec:
        return cls(name=name, options=tuple(options.items()))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    def resolve(self, samplers: Mapping[str, Callable[..., Tensor]]) -> Callable[..., Tensor]:
        """The function to call: `function`, else the registered sampler of this name."""
        if self.function is not None:
            return self.function
        if self.name not in samplers:
            raise ValueError(f"unknown sampler {self.name!r}; expected one of {sorted(samplers)}")
        return samplers[self.name]


@dataclass(frozen=True)
class PowerNoiseScaler:
    """ER-SDE's noise scaler for the reverse-time SDE: x -> x ** (eta + 1) (Cui et al. 2023, "Elucidating the
    solution space of extended reverse-time SDE for diffusion models", arXiv 2309.06169); eta 0 is the ODE."""

    eta: float

    def __call__(self, x: Any) -> Any:
        return x ** (self.eta + 1)


def er_sde_options(solver_type: str, max_stage: int, eta: float, s_noise: float) -> dict[str, Any]:
    """SamplerER_SDE's options: "ER-SDE" keeps the sampler's own noise scaler; "Reverse-time SDE" scales by
    x ** (eta + 1); "ODE" (or eta 0) adds no noise."""
    if solver_type not in ("ER-SDE", "Reverse-time SDE", "ODE"):
        raise ValueError(f"unknown ER-SDE solver type {solver_type!r}")
    if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
        eta, s_noise = 0.0, 0.0
    scaler = None if solver_type == "ER-SDE" else PowerNoiseScaler(eta)
    return {"s_noise": s_noise, "noise_scaler": scaler, "max_stage": max_stage}


@dataclass(frozen=True)
class TauInterval:
    """SA-Solver's stochasticity tau(sigma): eta inside [end_sigma, start_sigma], 0 outside, 0 everywhere when
    eta <= 0 (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models",
    arXiv 2309.05019; the interval is taken in sigma, as ComfyUI does)."""

    start_sigma: float
    end_sigma: float
    eta: float

    def __call__(self, sigma: Any) -> float:
        if self.eta <= 0:
            return 0.0
        value = float(sigma)
        return self.eta if self.start_sigma >= value >= self.end_sigma else 0.0
