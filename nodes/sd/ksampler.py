"""KSampler and custom sampling: ComfyUI's KSampler, KSamplerAdvanced and SamplerCustomAdvanced semantics.

`sample_custom` runs one SAMPLER down one SIGMAS from a LATENT plus NOISE under a GUIDER (the parts are in
sampler_spec.py, sigmas.py, noise.py and guiders.py); `sample` (KSampler) is a thin composition of it: its
schedule (`ksampler_sigmas`), a seeded Noise, a CFGGuide and the named sampler.

Noise comes from CPU generators seeded with `seed`, so a seed gives the same latent on any device:
the initial noise as ComfyUI's `prepare_noise` draws it (one draw per batch index, picked by
`Latent.batch_index`), and each batch item's per-step noise from its own generator (seed for index 0), so
item k of a batch equals a single run with batch_index (k,) for every sampler, ancestral ones included.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.errors import Interrupted
from nodegraph.models import ModelRef
from nodes.sd.denoisers import CFGDenoiser, patches_applied, unet_denoiser
from nodes.sd.differential_diffusion import denoise_mask_function
from nodes.sd.guiders import CFGGuide, Guider
from nodes.sd.noise import Noise, prepare_noise
from nodes.sd.sampler_spec import SamplerSpec
from nodes.sd.samplers import DISCARD_PENULTIMATE_SIGMA, SAMPLERS
from nodes.sd.samplers.brownian import BrownianTreeNoise, schedule_range
from nodes.sd.samplers_multistep import Denoiser, GaussianNoise, to_device_async
from nodes.sd.schedules import SCHEDULERS, calculate_sigmas, model_sigmas
from nodes.sd.types import CondItem, Latent, ModelHandle

__all__ = ["BROWNIAN_SAMPLERS", "BatchNoise", "InpaintDenoiser", "SampleResult", "StoppableDenoiser", "ksampler_sigmas",
           "prepare_mask", "prepare_noise", "sample", "sample_custom", "sampling_sigmas"]

ProgressCallback = Callable[[int, int, Tensor], None]
"""(steps done, total steps, current x0 prediction)."""

BROWNIAN_SAMPLERS: frozenset[str] = frozenset(
    {
        "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
    }
)
"""Samplers ComfyUI gives a Brownian-tree noise sampler (the rest draw independent Gaussian noise per step)."""


def sampling_sigmas(alphas_cumprod: Tensor, scheduler: str, sampler_name: str, steps: int, denoise: float) -> Tensor:
    """The sigmas KSampler runs: the last steps + 1 of a `int(steps / denoise)`-step schedule (img2img).

    Args:
        alphas_cumprod: the model's training schedule.
        scheduler: a key of schedules.SCHEDULERS.
        sampler_name: a key of samplers.SAMPLERS (some drop the penultimate sigma, as in ComfyUI).
        steps: steps to run.
        denoise: fraction of the schedule to run, in (0, 1]; <= 0 runs nothing (empty tensor).
    """
    if denoise <= 0.0:
        return torch.zeros(0)
    total = steps if denoise > 0.9999 else int(steps / denoise)
    if sampler_name in DISCARD_PENULTIMATE_SIGMA:
        sigmas = calculate_sigmas(alphas_cumprod, scheduler, total + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = calculate_sigmas(alphas_cumprod, scheduler, total)
    return sigmas[-(steps + 1) :]


def item_seed(seed: int, index: int) -> int:
    """Seed of batch index `index`'s step noise: `seed` itself for index 0, a golden-ratio mix otherwise."""
    return seed if index == 0 else (seed ^ (index * 0x9E3779B97F4A7C15)) & 0x7FFF_FFFF_FFFF_FFFF


class BatchNoise:
    """Per-step noise for a batch: each item draws from its own CPU source seeded with `item_seed`, so item k
    equals a single run with batch index k; the batch goes to x's device in one copy that does not wait for
    the device (`to_device_async`).

    Independent Gaussian draws by default; with `brownian`, one torchsde Brownian tree per item over the run's
    sigma range, built as ComfyUI builds its tree (seed for batch index 0, so a batch of one matches ComfyUI).
    """

    def __init__(
        self, x: Tensor, seed: int, indices: Sequence[int], brownian: bool, sigmas: Tensor | None = None
    ) -> None:
        self.device, self.dtype = x.device, x.dtype
        self.items: list[GaussianNoise | BrownianTreeNoise]
        if brownian:
            if sigmas is None:
                raise ValueError("Brownian noise needs the run's sigmas: its tree spans their range")
            low, high = schedule_range(sigmas)
            self.items = [
                BrownianTreeNoise(x[k : k + 1], low, high, item_seed(seed, index)) for k, index in enumerate(indices)
            ]
        else:
            self.items = [
                GaussianNoise(x[k : k + 1], torch.Generator().manual_seed(item_seed(seed, index)))
                for k, index in enumerate(indices)
            ]

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        host = torch.cat([item.draw(sigma, sigma_next) for item in self.items])
        return to_device_async(host, self.device, self.dtype)


def prepare_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    """A noise mask resized (bilinear) to the latent and repeated to its batch, [B, 1, H, W]."""
    mask = mask.to(torch.float32).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if tuple(mask.shape[-2:]) != tuple(shape[-2:]):
        mask = F.interpolate(mask, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)
    repeats = math.ceil(shape[0] / mask.shape[0])
    return mask.repeat(repeats, 1, 1, 1)[: shape[0]]


class InpaintDenoiser:
    """Keeps the region where mask = 0: before each model call that region is reset to the initial latent
    noised to the current sigma, and the prediction there is the initial latent (k-diffusion/ComfyUI
    inpainting, "KSamplerX0Inpaint")."""

    def __init__(self, inner: Denoiser, latent: Tensor, noise: Tensor, mask: Tensor,
                 mask_function: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        self.inner, self.latent, self.noise, self.mask = inner, latent, noise, mask
        self.mask_function = mask_function
        """Picks the mask for each call from (sigma, mask): DifferentialDiffusion's per-step threshold."""

    def keep(self, sigma: Tensor) -> Tensor:
        return self.latent + self.noise * sigma.reshape(-1, 1, 1, 1)

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        mask = self.mask if self.mask_function is None else self.mask_function(sigma, self.mask)
        x = x * mask + self.keep(sigma) * (1 - mask)
        return self.inner(x, sigma, **extra) * mask + self.latent * (1 - mask)


class LatentUpdateDenoiser:
    """Runs the CFGDenoiser's "latent_update" patches before each model evaluation and writes the moved latent
    into the sampler's own x (in place, without autograd), so the sampler continues from it: the denoiser
    contract D(x, sigma) -> x0 has no other way back for x. A sampler that evaluates at a temporary latent (Heun's
    corrector) sees the move in that evaluation only. No patch: a plain pass-through."""

    def __init__(self, inner: Denoiser, guided: CFGDenoiser) -> None:
        self.inner, self.guided = inner, guided

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        if self.guided.latent_updates:
            moved = x
            for update in self.guided.latent_updates:
                moved = update(moved, sigma)
            with torch.no_grad():
                x.copy_(moved.to(x.dtype))
        return self.inner(x, sigma, **extra)


class StoppableDenoiser:
    """Asks `should_stop` before every model evaluation and raises Interrupted when it says so."""

    def __init__(self, inner: Denoiser, should_stop: Callable[[], bool]) -> None:
        self.inner, self.should_stop = inner, should_stop

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        if self.should_stop():
            raise Interrupted()
        return self.inner(x, sigma, **extra)


def in_use(model: Any) -> AbstractContextManager[Any]:
    """Keeps a managed model (and what it derives from) where it is while the sampler runs: a ControlNet the
    steps load must not move the UNet to CPU RAM under the sampler's feet."""
    return model.manager.using(model) if isinstance(model, ModelRef) else nullcontext()


def ksampler_sigmas(
    alphas_cumprod: Tensor, scheduler: str, sampler_name: str, steps: int, denoise: float = 1.0,
    start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
) -> Tensor:
    """The sigmas KSampler / KSamplerAdvanced run: `sampling_sigmas`, stopped after `last_step` (ending at 0 with
    `force_full_denoise`) and started at `start_step`; fewer than 2 sigmas means nothing to run."""
    sigmas = sampling_sigmas(alphas_cumprod, scheduler, sampler_name, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0.0
    if start_step is not None:
        sigmas = sigmas[start_step:] if start_step < len(sigmas) - 1 else sigmas[:0]
    return sigmas


def sample(
    model: ModelHandle,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Sequence[CondItem],
    negative: Sequence[CondItem],
    latent: Latent,
    denoise: float = 1.0,
    start_step: int | None = None,
    last_step: int | None = None,
    add_noise: bool = True,
    force_full_denoise: bool = False,
    callback: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Latent:
    """Denoise `latent` with `model` (ComfyUI's KSampler; KSamplerAdvanced via start/last step).

    A thin composition of the custom-sampling parts: the schedule (`ksampler_sigmas`), a seeded `Noise`, a
    `CFGGuide` and the named sampler, run by `sample_custom`.

    Args:
        model: the MODEL; its patches apply for this run only.
        seed: seeds the initial noise and every step's noise (CPU generators).
        steps: schedule steps (before `denoise` stretches the schedule).
        cfg: classifier-free guidance scale.
        sampler_name: a key of samplers.SAMPLERS.
        scheduler: a key of schedules.SCHEDULERS.
        positive: conditioning to follow.
        negative: conditioning to steer away from (unused when cfg == 1).
        latent: the starting latent; zeros for text-to-image. Its noise_mask (1 = may change) and
            batch_index are honoured, and kept on the result.
        denoise: run only the last `steps` of an `int(steps / denoise)`-step schedule (img2img strength).
        start_step: KSamplerAdvanced's start_at_step: skip this many steps of the schedule.
        last_step: KSamplerAdvanced's end_at_step: stop after this step.
        add_noise: False starts from the latent as is (KSamplerAdvanced add_noise "disable").
        force_full_denoise: when stopping at `last_step`, end at sigma 0 instead of leaving noise
            (KSamplerAdvanced's return_with_leftover_noise "disable"; KSampler leaves it False).
        callback: progress, called after every step.
        should_stop: asked before every model evaluation; True raises nodegraph.errors.Interrupted.

    Returns:
        A Latent with float32 CPU samples.
    """
    if sampler_name not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler_name!r}; expected one of {sorted(SAMPLERS)}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    sigmas = ksampler_sigmas(model.alphas_cumprod, scheduler, sampler_name, steps, denoise, start_step, last_step,
                             force_full_denoise)
    if len(sigmas) < 2:
        return replace(latent, samples=latent.samples.detach().to(torch.float32).cpu())
    result = sample_custom(Noise(seed, enabled=add_noise), CFGGuide(model, tuple(positive), tuple(negative), cfg),
                           SamplerSpec(sampler_name), sigmas, latent, callback=callback, should_stop=should_stop,
                           keep_denoised=False)
    return result.output


@dataclass(frozen=True)
class SampleResult:
    """What SamplerCustom / SamplerCustomAdvanced return: the sampled latent and the last step's x0 prediction."""

    output: Latent
    denoised: Latent


def sample_custom(
    noise: Noise,
    guider: Guider,
    sampler: SamplerSpec,
    sigmas: Tensor,
    latent: Latent,
    *,
    callback: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_denoised: bool = True,
) -> SampleResult:
    """Run `sampler` down `sigmas` from `latent` plus `noise`, denoising with `guider` (ComfyUI's
    SamplerCustomAdvanced; KSampler is this with a CFGGuide).

    Starting from the schedule's top (sigma_0 at the model's sigma_max) the noise is scaled as the VP marginal,
    sqrt(1 + sigma_0^2), else x = latent + sigma_0 * noise (ComfyUI's max_denoise). The latent's noise_mask
    keeps the masked-out region (inpainting) and batch_index picks each item's noise.

    Args:
        noise: the NOISE; its seed also seeds every step's noise.
        guider: the GUIDER; its model's patches apply for this run only.
        sampler: the SAMPLER, resolved against samplers.SAMPLERS now.
        sigmas: the SIGMAS to run (kept on the CPU: samplers decide on host values).
        latent: the starting latent.
        callback: progress, called after every step with (steps done, total, x0).
        should_stop: asked before every model evaluation; True raises nodegraph.errors.Interrupted.
        keep_denoised: also return the last step's x0 (a copy to the CPU at the end).

    Returns:
        The sampled Latent (float32, CPU) and the last x0 prediction (the output itself when no step ran).
    """
    model = guider.model
    function = sampler.resolve(SAMPLERS)
    init = latent.samples.detach().to(torch.float32).cpu()
    sigmas = sigmas.detach().to(torch.float32).cpu()
    if len(sigmas) == 0:
        unchanged = replace(latent, samples=init)
        return SampleResult(unchanged, unchanged)

    indices = list(latent.batch_index) if latent.batch_index is not None else list(range(init.shape[0]))
    start_noise = noise.initial(replace(latent, samples=init))
    device = torch.device(model.device)
    init, start_noise = init.to(device), start_noise.to(device)
    sigma_max = float(model_sigmas(model.alphas_cumprod)[-1])
    first = float(sigmas[0])
    # from pure noise, scale it as the VP marginal x_T ~ N(0, I) (ComfyUI's max_denoise); else x0 + sigma n
    noise_scale = math.sqrt(1.0 + first**2) if first >= sigma_max * (1 - 1e-5) else first
    x = init + start_noise * noise_scale

    unet = unet_denoiser(model)
    guided = guider.denoiser(unet)
    denoiser: Denoiser = guided
    mask = prepare_mask(latent.noise_mask, init.shape).to(device) if latent.noise_mask is not None else None
    if mask is not None:
        denoiser = InpaintDenoiser(denoiser, init, start_noise, mask, denoise_mask_function(model, sigmas))
    denoiser = LatentUpdateDenoiser(denoiser, guided)
    if should_stop is not None:
        denoiser = StoppableDenoiser(denoiser, should_stop)
    total = len(sigmas) - 1
    last: dict[str, Tensor] = {}

    def on_step(info: dict[str, Any]) -> None:
        if keep_denoised:
            last["denoised"] = info["denoised"]
        if callback is not None:
            callback(info["i"] + 1, total, info["denoised"])

    seed, sampler_name = noise.seed, sampler.name
    step_noise = BatchNoise(x, seed, indices, brownian=sampler_name in BROWNIAN_SAMPLERS, sigmas=sigmas)
    run_inputs = {"cfg_denoiser": guided, "seed": seed}
    options = {**sampler.kwargs, **{name: run_inputs[name] for name in sampler.run_inputs}}
    guided.run_sigmas = sigmas
    with in_use(model.unet_ref), patches_applied(model.patches, unet_denoiser=unet, cfg_denoiser=guided):
        # sigmas stay on the CPU: samplers decide on host values and never wait for the device (host_schedule)
        out = function(denoiser, x, sigmas, callback=on_step, noise_sampler=step_noise, **options)
    if mask is not None:
        out = out * mask + (init + start_noise * float(sigmas[-1])) * (1 - mask)
    output = replace(latent, samples=out.detach().to(torch.float32).cpu())
    if "denoised" not in last:
        return SampleResult(output, output)
    return SampleResult(output, replace(latent, samples=last["denoised"].detach().to(torch.float32).cpu()))
