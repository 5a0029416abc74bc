"""Variants of classifier-free guidance (Ho & Salimans 2022) as ComfyUI's model patches compute them.

Every function works on x0 predictions (our denoiser contract D(x, sigma) -> x0); where a method is defined on
epsilon or v (RescaleCFG, TCFG, CFG-Zero*), it converts as ComfyUI does: the "noise" of a prediction is
x - x0 (sigma * epsilon), and v is recovered from x0 as below. Each `*_patch` returns a ModelPatch of the kind
ComfyUI hooks the method in at:
- "cfg_function" (sampler_cfg_function, replaces the CFG formula): RescaleCFG;
- "pre_cfg" (sampler_pre_cfg_function, changes cond/uncond before CFG): APG, TCFG, FreSca;
- "guidance" (sampler_post_cfg_function, changes the guided x0): CFGZeroStar, CFGNorm, Mahiro.
State (APG's momentum) lives in objects built when the patch is applied, i.e. once per sampling run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, CfgInputs, GuidanceInputs
from nodes.sd.freeu import fourier_scale
from nodes.sd.types import ModelPatch


def _per_sample(sigma: Tensor, like: Tensor) -> Tensor:
    return sigma.reshape(-1).to(like).reshape(-1, *([1] * (like.ndim - 1)))


# -- "cfg_function" ------------------------------------------------------------------------------------


def rescale_cfg(inputs: CfgInputs, multiplier: float) -> Tensor:
    """RescaleCFG (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4).

    CFG is done on v predictions, v_cfg is rescaled to the std of v_cond (per sample) and blended with the plain
    v_cfg by `multiplier`; the result goes back to x0. With x_v = x / (sigma^2 + 1), a prediction x0 has
    v = (x_v - x0) * sqrt(sigma^2 + 1) / sigma and x0 = x_v - v * sigma / sqrt(sigma^2 + 1).
    """
    x = inputs.x
    sigma = _per_sample(inputs.sigma, x)
    root = (sigma**2 + 1.0) ** 0.5
    x_v = x / (sigma**2 + 1.0)
    v_cond = (x_v - inputs.cond_denoised) * root / sigma
    v_uncond = (x_v - inputs.uncond_denoised) * root / sigma
    v_cfg = v_uncond + inputs.cfg * (v_cond - v_uncond)
    std_cond = v_cond.std(dim=tuple(range(1, x.ndim)), keepdim=True)
    std_cfg = v_cfg.std(dim=tuple(range(1, x.ndim)), keepdim=True)
    v_final = multiplier * (v_cfg * (std_cond / std_cfg)) + (1.0 - multiplier) * v_cfg
    return x_v - v_final * sigma / root


def _cfg_function_patch(name: str, function: Callable[[CfgInputs], Tensor], options: dict[str, Any]) -> ModelPatch:
    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None]:
        previous = cfg_denoiser.cfg_function
        cfg_denoiser.cfg_function = function

        def undo() -> None:
            cfg_denoiser.cfg_function = previous

        return undo

    return ModelPatch(kind="cfg_function", name=name, apply=apply, options=options)


def rescale_cfg_patch(multiplier: float) -> ModelPatch:
    return _cfg_function_patch("rescale_cfg", lambda inputs: rescale_cfg(inputs, multiplier), {"multiplier": multiplier})


# -- "pre_cfg" -----------------------------------------------------------------------------------------


def project(v0: Tensor, v1: Tensor) -> tuple[Tensor, Tensor]:
    """v0's components parallel and orthogonal to v1, per sample over (C, H, W) (float64 not needed here)."""
    dims = [-1, -2, -3]
    unit = F.normalize(v1, dim=dims)
    parallel = (v0 * unit).sum(dim=dims, keepdim=True) * unit
    return parallel, v0 - parallel


class AdaptiveProjectedGuidance:
    """APG (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance Scales in Diffusion
    Models", arXiv 2410.02416) as ComfyUI's pre-CFG function, on x0 predictions.

    The guidance g = cond - uncond is averaged with momentum (g_avg <- momentum * g_avg + g; reset when sigma rises,
    i.e. a new schedule starts), scaled down to L2 norm `norm_threshold` per sample, split into parts parallel and
    orthogonal to cond, and the parallel part weighted by `eta`. The cond handed to CFG is
    uncond + g' + (cond - uncond) / cfg, so CFG's uncond + cfg * (cond' - uncond) equals
    uncond + cfg * g' + (cond - uncond).
    """

    def __init__(self, eta: float, norm_threshold: float, momentum: float) -> None:
        self.eta, self.norm_threshold, self.momentum = eta, norm_threshold, momentum
        self.running: Tensor | None = None
        self.previous_sigma: float | None = None

    def __call__(self, inputs: CfgInputs) -> tuple[Tensor, Tensor]:
        cond, uncond = inputs.cond_denoised, inputs.uncond_denoised
        sigma = float(inputs.sigma.reshape(-1)[0])
        if self.previous_sigma is not None and sigma > self.previous_sigma:
            self.running = None
        self.previous_sigma = sigma
        guidance = cond - uncond
        if self.momentum > 0:
            self.running = guidance if self.running is None else self.momentum * self.running + guidance
            guidance = self.running
        if self.norm_threshold > 0:
            norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), self.norm_threshold / norm)
        parallel, orthogonal = project(guidance, cond)
        modified = orthogonal + self.eta * parallel
        return uncond + modified + (cond - uncond) / inputs.cfg, uncond


def tangential_damping(cond_noise: Tensor, uncond_noise: Tensor) -> Tensor:
    """TCFG's damped uncond (Kwon et al. 2025, arXiv 2503.18137): uncond's projection on the first right
    singular vector of the 2-row matrix [uncond; cond] (flattened per sample), i.e. without its tangential part."""
    batch = cond_noise.shape[0]
    uncond_flat = uncond_noise.reshape(batch, 1, -1).float()
    matrix = torch.cat((uncond_flat, cond_noise.reshape(batch, 1, -1).float()), dim=1)
    _, _, vh = torch.linalg.svd(matrix.cpu() if matrix.device.type == "mps" else matrix, full_matrices=False)
    top = vh[:, 0:1, :].to(uncond_flat.device)
    return ((uncond_flat @ top.transpose(-2, -1)) * top).reshape_as(uncond_noise).to(uncond_noise.dtype)


def tcfg(inputs: CfgInputs) -> tuple[Tensor, Tensor]:
    """TCFG as ComfyUI's pre-CFG function: damping acts on the noise x - x0; nothing changes when cfg == 1 skipped
    the uncond."""
    if not inputs.uncond_evaluated:
        return inputs.cond_denoised, inputs.uncond_denoised
    x = inputs.x
    damped = tangential_damping(x - inputs.cond_denoised, x - inputs.uncond_denoised)
    return inputs.cond_denoised, x - damped


def fresca(inputs: CfgInputs, scale_low: float, scale_high: float, freq_cutoff: int) -> tuple[Tensor, Tensor]:
    """FreSca (Huang et al. 2025, "FreSca: Scaling in Frequency Space Enhances Diffusion Models", arXiv
    2504.02154): the guidance cond - uncond scaled by `scale_low` within `freq_cutoff` of the centred spectrum's
    centre and by `scale_high` elsewhere."""
    guidance = inputs.cond_denoised - inputs.uncond_denoised
    filtered = fourier_scale(guidance, inner=scale_low, outer=scale_high, radius=freq_cutoff)
    return filtered + inputs.uncond_denoised, inputs.uncond_denoised


def _pre_cfg_patch(name: str, build: Callable[[], Callable[[CfgInputs], tuple[Tensor, Tensor]]],
                   options: dict[str, Any]) -> ModelPatch:
    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None]:
        function = build()  # fresh per run: APG's momentum starts from zero
        cfg_denoiser.pre_cfg_functions.append(function)
        return lambda: cfg_denoiser.pre_cfg_functions.remove(function)

    return ModelPatch(kind="pre_cfg", name=name, apply=apply, options=options)


def apg_patch(eta: float, norm_threshold: float, momentum: float) -> ModelPatch:
    return _pre_cfg_patch("apg", lambda: AdaptiveProjectedGuidance(eta, norm_threshold, momentum),
                          {"eta": eta, "norm_threshold": norm_threshold, "momentum": momentum})


def tcfg_patch() -> ModelPatch:
    return _pre_cfg_patch("tcfg", lambda: tcfg, {})


def fresca_patch(scale_low: float, scale_high: float, freq_cutoff: int) -> ModelPatch:
    return _pre_cfg_patch("fresca", lambda: lambda inputs: fresca(inputs, scale_low, scale_high, freq_cutoff),
                          {"scale_low": scale_low, "scale_high": scale_high, "freq_cutoff": freq_cutoff})


# -- "guidance" (post-CFG) -----------------------------------------------------------------------------


def optimized_scale(positive: Tensor, negative: Tensor) -> Tensor:
    """CFG-Zero*'s s* = <positive, negative> / ||negative||^2 per sample (Fan et al. 2025, arXiv 2503.18886)."""
    batch = positive.shape[0]
    pos, neg = positive.reshape(batch, -1), negative.reshape(batch, -1)
    scale = (pos * neg).sum(dim=1, keepdim=True) / ((neg**2).sum(dim=1, keepdim=True) + 1e-8)
    return scale.reshape(batch, *([1] * (positive.ndim - 1)))


def cfg_zero_star(inputs: GuidanceInputs) -> Tensor:
    """CFG-Zero* as ComfyUI applies it after CFG: the uncond is scaled by s* (computed on the noises x - x0),
    i.e. result = s* u + cfg (c - s* u) written as a correction of the plain CFG x0 (ComfyUI's node has no
    zero-init steps)."""
    uncond = inputs.uncond_denoised
    if uncond is None:
        return inputs.denoised
    alpha = optimized_scale(inputs.x - inputs.cond_denoised, inputs.x - uncond)
    return inputs.denoised + uncond * (alpha - 1.0) + inputs.cfg * uncond * (1.0 - alpha)


def cfg_norm(inputs: GuidanceInputs, strength: float) -> Tensor:
    """CFGNorm: the guided x0 scaled per pixel so its channel norm does not exceed cond's, times `strength`."""
    norm_cond = torch.norm(inputs.cond_denoised, dim=1, keepdim=True)
    norm_cfg = torch.norm(inputs.denoised, dim=1, keepdim=True)
    scale = (norm_cond / (norm_cfg + 1e-8)).clamp(min=0.0, max=1.0)
    return inputs.denoised * scale * strength


def mahiro(inputs: GuidanceInputs) -> Tensor:
    """Mahiro (ComfyUI's guidance): blend the CFG x0 with cfg * cond by how similar the signed square roots of
    cfg * uncond and (cfg * cond + CFG) / 2 are (cosine over channels, averaged): similar -> CFG, opposed ->
    cfg * cond."""
    scale = inputs.cfg
    uncond = inputs.uncond_denoised if inputs.uncond_denoised is not None else torch.zeros_like(inputs.denoised)
    leap = inputs.cond_denoised * scale
    uncond_leap = uncond * scale
    merge = (leap + inputs.denoised) / 2
    norm_uncond = torch.sqrt(uncond_leap.abs()) * uncond_leap.sign()
    norm_merge = torch.sqrt(merge.abs()) * merge.sign()
    similarity = F.cosine_similarity(norm_uncond, norm_merge).mean()
    weight = 2 * (similarity + 1)
    return (weight * inputs.denoised + (4 - weight) * leap) / 4


def post_cfg_patch(name: str, term: Callable[[GuidanceInputs], Tensor], options: dict[str, Any]) -> ModelPatch:
    """A "guidance" patch adding `term` after CFG for the run."""

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None]:
        cfg_denoiser.guidance_terms.append(term)
        return lambda: cfg_denoiser.guidance_terms.remove(term)

    return ModelPatch(kind="guidance", name=name, apply=apply, options=options)


def cfg_zero_star_patch() -> ModelPatch:
    return post_cfg_patch("cfg_zero_star", cfg_zero_star, {})


def cfg_norm_patch(strength: float) -> ModelPatch:
    return post_cfg_patch("cfg_norm", lambda inputs: cfg_norm(inputs, strength), {"strength": strength})


def mahiro_patch() -> ModelPatch:
    return post_cfg_patch("mahiro", mahiro, {})
