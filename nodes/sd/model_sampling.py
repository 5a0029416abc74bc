"""How a model reads sigma, as ComfyUI's ModelSamplingDiscrete / ContinuousEDM / ContinuousV set it.

A MODEL handle's sigma table lives in `ModelHandle.alphas_cumprod` (any ascending sigma table is one:
abar = 1 / (1 + sigma^2)), so schedulers and samplers follow a new range unchanged; what the UNet is given and
how its output becomes x0 is a `Sampling` installed on the run's UNetDenoiser by a "model_sampling" patch:
- input: x / sqrt(sigma^2 + sigma_data^2) (ComfyUI's EPS.calculate_input, used by every kind here);
- timestep: the table's fractional timestep (discrete), LCM's distilled integer timestep, 0.25 ln sigma (EDM),
  or atan(sigma) * 2 / pi (continuous v);
- x0 from the output: eps x - sigma out; v (Salimans & Ho 2022) and EDM (Karras et al. 2022) with c_skip =
  sigma_data^2 / (sigma^2 + sigma_data^2) and c_out = -/+ sigma sigma_data / sqrt(sigma^2 + sigma_data^2);
  x0 prediction: the output itself; LCM (Luo et al. 2023): c_out' x0_eps + c_skip' x with the consistency
  boundary conditions at 10 x timestep, sigma_data 0.5.
Zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", alg. 1)
rescales sqrt(abar) so the last step is pure noise (abar_T set to 4.8973451890853435e-08, as ComfyUI).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nodes.sd.denoisers import UNetDenoiser
from nodes.sd.schedules import model_sigmas, scaled_linear_alphas_cumprod, sigma_to_timestep
from nodes.sd.types import ModelPatch

ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08
LCM_ORIGINAL_STEPS = 50

DISCRETE_SAMPLING: tuple[str, ...] = ("eps", "v_prediction", "lcm", "x0", "img_to_img")
EDM_SAMPLING: tuple[str, ...] = ("v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow")
CONTINUOUS_V_SAMPLING: tuple[str, ...] = ("v_prediction",)
UNSUPPORTED: dict[str, str] = {
    "img_to_img": "it needs an image-to-image model's input (Hunyuan Image 2.1 refiner)",
    "edm_playground_v2.5": "it needs Playground v2.5's latent format",
    "cosmos_rflow": "it needs a Cosmos rectified-flow model",
}


def rescale_zero_terminal_snr_sigmas(sigmas: Tensor) -> Tensor:
    """Sigmas (ascending) rescaled to zero terminal SNR: sqrt(abar) shifted so its last value is 0 and scaled so
    its first is unchanged; then abar_T is set to a tiny positive value so the last sigma stays finite."""
    root = (1.0 / (sigmas.to(torch.float64) ** 2 + 1.0)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    abar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1.0 - abar) / abar) ** 0.5


def alphas_from_sigmas(sigmas: Tensor) -> Tensor:
    """The alphas_cumprod table whose model_sigmas are `sigmas` (float64)."""
    return 1.0 / (sigmas.to(torch.float64) ** 2 + 1.0)


def lcm_sigmas(sigmas: Tensor) -> Tensor:
    """LCM's 50 distilled sigmas: every 20th of 1000, ending at the last (ComfyUI's ModelSamplingDiscreteDistilled)."""
    skip = len(sigmas) // LCM_ORIGINAL_STEPS
    return torch.stack([sigmas[len(sigmas) - 1 - x * skip] for x in reversed(range(LCM_ORIGINAL_STEPS))])


def edm_sigmas(sigma_min: float, sigma_max: float) -> Tensor:
    """1000 sigmas log-uniform in [sigma_min, sigma_max] (ComfyUI's continuous samplings' table)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be > 0 and below sigma_max, got sigma_min {sigma_min}, sigma_max {sigma_max}")
    return torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000, dtype=torch.float64).exp()


@dataclass(frozen=True, eq=False)
class Sampling:
    """A model's sigma parametrisation (see the module docstring); implements denoisers.Parametrisation."""

    prediction: str
    """"eps", "v_prediction", "edm", "x0" or "lcm"."""
    timesteps: str
    """"discrete", "lcm", "edm" or "continuous_v"."""
    sigmas: Tensor
    """The ascending sigma table (float64)."""
    sigma_data: float = 1.0

    def input_scale(self, sigma: Tensor) -> Tensor:
        return 1.0 / (sigma**2 + self.sigma_data**2) ** 0.5

    def timestep(self, sigma: Tensor) -> Tensor:
        if self.timesteps == "edm":
            return 0.25 * sigma.to(torch.float64).log()
        if self.timesteps == "continuous_v":
            return sigma.to(torch.float64).atan() / math.pi * 2
        table = self.sigmas.to(sigma.device)
        if self.timesteps == "lcm":
            skip = 1000 // LCM_ORIGINAL_STEPS
            distance = sigma.to(table.dtype).log().reshape(1, -1) - table.log()[:, None]
            return (distance.abs().argmin(dim=0) * skip + (skip - 1)).reshape(sigma.shape).to(torch.float64)
        return sigma_to_timestep(sigma.to(table.dtype), table)

    def denoised(self, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
        data = self.sigma_data
        if self.prediction == "eps":
            return x - output * sigma
        if self.prediction == "x0":
            return output
        if self.prediction in ("v_prediction", "edm"):
            skip = data**2 / (sigma**2 + data**2)
            out = sigma * data / (sigma**2 + data**2) ** 0.5
            return x * skip - output * out if self.prediction == "v_prediction" else x * skip + output * out
        if self.prediction == "lcm":
            scaled = self.timestep(sigma.reshape(-1)).to(x).reshape(sigma.shape) * 10.0
            c_skip = 0.25 / (scaled**2 + 0.25)
            c_out = scaled / (scaled**2 + 0.25) ** 0.5
            return c_out * (x - output * sigma) + c_skip * x
        raise ValueError(f"unknown prediction {self.prediction!r}")


def sampling_patch(sampling: Sampling, name: str) -> ModelPatch:
    """A "model_sampling" patch installing `sampling` on the run's UNetDenoiser (and restoring it after)."""

    def apply(unet_denoiser: UNetDenoiser) -> Callable[[], None]:
        previous = unet_denoiser.parametrisation
        unet_denoiser.parametrisation = sampling

        def undo() -> None:
            unet_denoiser.parametrisation = previous

        return undo

    return ModelPatch(kind="model_sampling", name=name, apply=apply,
                      options={"prediction": sampling.prediction, "sampling": sampling})


def _check(sampling: str, allowed: tuple[str, ...], node: str) -> None:
    if sampling not in allowed:
        raise ValueError(f"{node}: unknown sampling {sampling!r}; expected one of {', '.join(allowed)}")
    if sampling in UNSUPPORTED:
        raise ValueError(f"{node}: sampling {sampling!r} is not supported here: {UNSUPPORTED[sampling]}")


def discrete_sampling(sampling: str, zsnr: bool) -> Sampling:
    """ModelSamplingDiscrete: SD's 1000-step scaled-linear schedule (zsnr: rescaled), read as `sampling`."""
    _check(sampling, DISCRETE_SAMPLING, "ModelSamplingDiscrete")
    sigmas = model_sigmas(scaled_linear_alphas_cumprod())
    if zsnr:
        sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
    if sampling == "lcm":
        return Sampling("lcm", "lcm", lcm_sigmas(sigmas))
    return Sampling(sampling, "discrete", sigmas)


def edm_sampling(sampling: str, sigma_max: float, sigma_min: float) -> Sampling:
    """ModelSamplingContinuousEDM: log-uniform sigmas, timestep 0.25 ln sigma; "edm" has sigma_data 0.5."""
    _check(sampling, EDM_SAMPLING, "ModelSamplingContinuousEDM")
    return Sampling(sampling, "edm", edm_sigmas(sigma_min, sigma_max), 0.5 if sampling == "edm" else 1.0)


def continuous_v_sampling(sampling: str, sigma_max: float, sigma_min: float) -> Sampling:
    """ModelSamplingContinuousV: log-uniform sigmas, timestep atan(sigma) * 2 / pi, v prediction."""
    _check(sampling, CONTINUOUS_V_SAMPLING, "ModelSamplingContinuousV")
    return Sampling("v_prediction", "continuous_v", edm_sigmas(sigma_min, sigma_max))
