"""DDIM inversion: an image latent walked up the deterministic sampling path to the noise that samples back to it.

DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", arXiv 2010.02502, eq. 12 with eta 0) is
Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022): x_{i+1} = x_i + (s_{i+1} - s_i) *
eps(x_i, s_i). Inversion runs the same steps upward, s_N = 0 -> ... -> s_0 (Dhariwal & Nichol 2021, section 4;
Mokady et al. 2022, "Null-text Inversion", arXiv 2211.09794, section 3): the step from s_{i+1} up to s_i uses the
noise predicted for the current point at the target level (as diffusers' DDIMInverseScheduler computes it: the UNet
gets the current variance-preserving sample x_{i+1} / sqrt(1 + s_{i+1}^2) and the higher timestep), because the
point x_i where the sampler will evaluate is not known yet (on the embedded model this reconstructs ~1.7 dB better
than feeding x_{i+1} at the target's input scale).
That approximation is where reconstruction error comes from. `refine_iterations` removes it by fixed-point
iteration of the exact inverse of the Euler step, x_i = x_{i+1} + (s_i - s_{i+1}) * eps(x_i, s_i) (Pan et al. 2023,
"Effective Real Image Editing with Accelerated Iterative Diffusion Inversion", arXiv 2309.04907): each iteration
costs one more model evaluation per step and, where it converges, the euler sampler maps the result back to the
latent exactly.

Noise predictions come from the run's `CFGDenoiser` (with cfg, usually 1 for inversion, and every model patch of the
handle), so inversion composes with LoRAs, ControlNets and guidance patches exactly as sampling does. The result is
a LATENT at noise level s_0 that KSampler / SamplerCustom with add_noise disabled and the same prompt, steps,
scheduler and the euler sampler turn back into the image; `as_noise` expresses it as a NOISE for
SamplerCustomAdvanced over the source latent (what masked inpainting needs: DiffEdit keeps the unmasked region on
the path latent + noise * sigma).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, patches_applied, unet_denoiser
from nodes.sd.ksampler import in_use, sampling_sigmas
from nodes.sd.noise import Noise
from nodes.sd.schedules import SCHEDULERS, model_sigmas
from nodes.sd.types import CondItem, Latent, ModelHandle

ProgressCallback = Callable[[int, int, Tensor], None]


def inversion_sigmas(model: ModelHandle, scheduler: str, steps: int, denoise: float = 1.0) -> Tensor:
    """The sampling schedule (descending, ending at 0) that inversion walks up and the euler sampler walks down:
    KSampler's schedule for `steps`, `scheduler` and `denoise` (img2img strength: only its last `steps`)."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    return sampling_sigmas(model.alphas_cumprod, scheduler, "euler", steps, denoise)


def _eps(denoiser: Callable[..., Tensor], x: Tensor, sigma: float) -> Tensor:
    """Noise prediction (x - D(x, sigma)) / sigma of the guided denoiser."""
    s = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    return (x - denoiser(x, s)) / sigma


def invert_with(denoiser: Callable[..., Tensor], latent: Tensor, sigmas: Tensor, *, refine_iterations: int = 0,
                callback: ProgressCallback | None = None) -> Tensor:
    """Walk `latent` (at sigmas[-1], normally 0) up `sigmas` (descending) with a denoiser D(x, sigma) -> x0.

    Args:
        denoiser: the guided denoiser (a CFGDenoiser with the run's patches applied, or any D).
        latent: [B, C, H, W] clean latents, in the UNet's units.
        sigmas: the sampling schedule, descending; the result lies at sigmas[0].
        refine_iterations: fixed-point iterations of the exact inverse Euler step (0: plain DDIM inversion).
        callback: called after each step with (steps done, total, current x).
    """
    if refine_iterations < 0:
        raise ValueError(f"refine_iterations must be >= 0, got {refine_iterations}")
    x = latent
    levels = [float(s) for s in sigmas]
    total = len(levels) - 1
    for done, i in enumerate(range(total, 0, -1), start=1):
        low, high = levels[i], levels[i - 1]
        if high <= low:
            raise ValueError(f"inversion needs a strictly descending schedule, got {levels}")
        start = x
        # diffusers' DDIMInverseScheduler: the UNet sees the current VP sample x / sqrt(1 + low^2) at the target
        # level's timestep; D at `high` scales its input by 1 / sqrt(1 + high^2), so rescale x for that.
        x = start + (high - low) * _eps(denoiser, start * math.sqrt((1.0 + high**2) / (1.0 + low**2)), high)
        for _ in range(refine_iterations):
            x = start + (high - low) * _eps(denoiser, x, high)
        if callback is not None:
            callback(done, total, x)
    return x


def invert(model: ModelHandle, positive: Sequence[CondItem], negative: Sequence[CondItem], cfg: float,
           sigmas: Tensor, latent: Latent, *, refine_iterations: int = 0, callback: ProgressCallback | None = None,
           should_stop: Callable[[], bool] | None = None) -> Latent:
    """DDIM-invert `latent` under `model` with the prompt, returning the LATENT at sigmas[0] (float32, CPU).

    Args:
        model: the MODEL; its patches apply for this run as in sampling.
        positive: the prompt the image is inverted with (the one to sample back with).
        negative: the negative conditioning (unused at cfg 1, the usual setting).
        cfg: guidance scale of the noise predictions along the path.
        sigmas: the schedule (`inversion_sigmas`), descending.
        latent: the image latent; its batch_index is kept, its noise_mask dropped (inversion covers everything).
        refine_iterations: see `invert_with`.
        callback: progress after each step.
        should_stop: asked before every step; True raises nodegraph.errors.Interrupted.
    """
    from nodegraph.errors import Interrupted

    device = torch.device(model.device)
    init = latent.samples.detach().to(device, torch.float32)
    unet = unet_denoiser(model)
    guided = CFGDenoiser(unet, tuple(positive), tuple(negative), cfg)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        if should_stop is not None and should_stop():
            raise Interrupted()
        return guided(x, sigma)

    with torch.no_grad(), in_use(model.unet_ref), patches_applied(model.patches, unet_denoiser=unet,
                                                                   cfg_denoiser=guided):
        x = invert_with(denoise, init, sigmas, refine_iterations=refine_iterations, callback=callback)
    return Latent(samples=x.detach().to(torch.float32).cpu(), batch_index=latent.batch_index)


def start_noise_scale(model: ModelHandle, sigma_0: float) -> float:
    """How sample_custom scales a NOISE at the schedule's first sigma: sqrt(1 + s^2) from the top, else s."""
    sigma_max = float(model_sigmas(model.alphas_cumprod)[-1])
    return math.sqrt(1.0 + sigma_0**2) if sigma_0 >= sigma_max * (1 - 1e-5) else sigma_0


@dataclass(frozen=True)
class InvertedNoise(Noise):
    """NOISE whose starting noise is fixed: (inverted - source) / scale, so that sampling the source latent from
    this noise starts at the inverted latent exactly. Per-step noise (for stochastic samplers) still uses `seed`."""

    tensor: Tensor | None = None

    def initial(self, latent: Latent) -> Tensor:
        if self.tensor is None:
            raise ValueError("InvertedNoise has no tensor")
        if tuple(latent.samples.shape) != tuple(self.tensor.shape):
            raise ValueError(f"inverted noise has shape {tuple(self.tensor.shape)} but the latent to sample has "
                             f"{tuple(latent.samples.shape)}: sample the latent that was inverted")
        return self.tensor.clone()


def as_noise(model: ModelHandle, source: Latent, inverted: Latent, sigmas: Tensor) -> InvertedNoise:
    """The NOISE that takes `source` to `inverted` at sigmas[0] under sample_custom's starting-noise rule."""
    scale = start_noise_scale(model, float(sigmas[0]))
    return InvertedNoise(seed=0, enabled=True, tensor=(inverted.samples - source.samples.float().cpu()) / scale)


def latent_psnr(reference: Tensor, other: Tensor) -> tuple[float, float]:
    """(MSE, PSNR in dB) of `other` against `reference`, PSNR over the reference's peak-to-peak range."""
    mse = float(torch.mean((other.float() - reference.float()) ** 2))
    peak = float(reference.max() - reference.min())
    psnr = math.inf if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)
    return mse, psnr


def image_psnr(reference: Tensor, other: Tensor) -> tuple[float, float]:
    """(MSE, PSNR in dB) of two IMAGEs in 0..1 (peak 1), ComfyUI's [B, H, W, C] layout."""
    if reference.shape != other.shape:
        raise ValueError(f"images differ in shape: {tuple(reference.shape)} and {tuple(other.shape)}")
    mse = float(torch.mean((other.float() - reference.float()) ** 2))
    return mse, (math.inf if mse == 0.0 else -10.0 * math.log10(mse))


def sample_back(model: ModelHandle, positive: Sequence[CondItem], negative: Sequence[CondItem], cfg: float,
                sigmas: Tensor, inverted: Latent) -> Latent:
    """The inverted latent sampled back down `sigmas` with euler and no added noise (what KSampler does with
    add_noise disabled): the round trip whose error the inversion node reports."""
    from nodes.sd.guiders import CFGGuide
    from nodes.sd.ksampler import sample_custom
    from nodes.sd.sampler_spec import SamplerSpec

    guider = CFGGuide(model, tuple(positive), tuple(negative), cfg)
    result = sample_custom(Noise(0, enabled=False), guider, SamplerSpec("euler"), sigmas, inverted,
                           keep_denoised=False)
    return result.output
