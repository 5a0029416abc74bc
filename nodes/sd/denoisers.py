"""The model contract D(x, sigma, **extra) -> x0, and what wraps it (k-diffusion's `external.py` style).

A diffusers UNet predicts noise (epsilon) or velocity (v) from a variance-preserving input at a discrete
timestep. `EpsDenoiser`/`VDenoiser` turn it into a denoiser on Karras et al. 2022's sigma-parametrised x:
they scale the input by c_in = 1 / sqrt(sigma^2 + 1), map sigma to its (fractional) training timestep and
convert the output to x0. `CFGDenoiser` evaluates conditioning entries (with ComfyUI's area and strength
rules) and combines them with classifier-free guidance (Ho & Salimans 2022). Samplers see only the
outermost D; they never know about CFG.

Extension point: `ModelHandle.patches` are applied per sampling run by `patches_applied`, each to a fresh
object built for that run only: "guidance" patches to the CFGDenoiser (append to `guidance_terms`),
"attention", "residual" and "weights" patches to the UNetDenoiser (append to `wrappers`, or swap
`unet` for a patched copy). A guidance term that needs the model's prediction for other conditioning
(SEGA's concepts) appends it to `CFGDenoiser.extra_conds`, so it joins the cond/uncond batch; a UNet
wrapper tells the batch's chunks apart by `UNetDenoiser.batch_sets` (SAG records the uncond's attention).
"pre_cfg" and "cfg_function" patches set `CFGDenoiser.pre_cfg_functions` / `cfg_function` (ComfyUI's
sampler_pre_cfg_function / sampler_cfg_function; "guidance" terms are its post-CFG functions); "unet_block",
"model_sampling" and "denoise_mask" patches act on the UNetDenoiser (block hooks per UNet call,
`parametrisation`; the last only marks the MODEL for the sampler's inpainting mask). "latent_update" patches
append to `CFGDenoiser.latent_updates`: functions that move the sampler's latent itself before each model
evaluation (Attend-and-Excite's gradient step; `ksampler.LatentUpdateDenoiser` runs them), reading the run's
schedule from `CFGDenoiser.run_sigmas`; "windows" patches wrap the UNet call (MultiDiffusion's fused windows).
Whatever `apply` returns is called to undo it when the run ends.
A `CondItem.extras` value with an `unet_kwargs` method (`RowKwargs`, e.g. ControlNet's residuals) adds UNet
keyword arguments for the rows of the entries that carry it. Masks, fractional areas, timestep ranges,
concatenated latents and SDXL size ids of an entry are resolved by `nodes.sd.cond_regions`; the batching of entries
into UNet calls lives in `nodes.sd.cond_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor

from nodes.sd.cond_batch import RowKwargs, _CondPlan, area_and_weight, calc_cond_batch, to_device  # noqa: F401 (re-exported)
from nodes.sd.prompt_batching import batched_unet_call
from nodes.sd.schedules import model_sigmas, precise_dtype, sigma_to_timestep
from nodes.sd.types import CondItem, ModelHandle, ModelPatch

UNetCall = Callable[[Tensor, Tensor, dict[str, Any]], Tensor]
"""(scaled input, timestep, unet kwargs) -> the UNet's raw output."""
UNetWrapper = Callable[[UNetCall, Tensor, Tensor, dict[str, Any]], Tensor]
"""Wraps one UNet call: receives the next call in the chain and may change inputs, kwargs or output."""


class Parametrisation(Protocol):
    """How a model reads sigma (ComfyUI's model_sampling): the input scale c_in, the timestep the UNet is
    given, and x0 from the UNet's output (nodes/sd/model_sampling.py has ComfyUI's kinds)."""

    def input_scale(self, sigma: Tensor) -> Tensor: ...

    def timestep(self, sigma: Tensor) -> Tensor: ...

    def denoised(self, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor: ...


class UNetDenoiser:
    """A diffusers UNet2DConditionModel as a denoiser on sigma-parametrised latents.

    The UNet runs in `dtype` on `device`; inputs and the returned x0 stay in the caller's dtype.
    """

    def __init__(
        self, unet: torch.nn.Module, alphas_cumprod: Tensor, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> None:
        self.unet = unet
        self.sigmas = model_sigmas(alphas_cumprod)
        """The ascending training sigmas on the CPU (float64), for host-side decisions (ControlNet's ranges)."""
        self.dtype, self.device = dtype, torch.device(device)
        self._timestep_sigmas = self.sigmas.to(self.device, precise_dtype(self.device))
        self.wrappers: list[UNetWrapper] = []
        self.batch_sets: tuple[int, ...] = ()
        """While calc_cond_batch runs the UNet: the conditioning set (0 positive, 1 negative, 2+ extra) of each
        equal-sized batch chunk of that call, so a wrapper can tell cond from uncond (ComfyUI's cond_or_uncond)."""
        self.cond_plans: dict[tuple[Any, ...], _CondPlan] = {}
        """calc_cond_batch's batching of each conditioning it has seen, built on its first step and reused:
        this object lives for one sampling run, so the plans do too."""
        self.parametrisation: Parametrisation | None = None
        """Set by a "model_sampling" patch: how sigma maps to the UNet's input scale, timestep and x0 instead of
        this class's (ComfyUI's model_sampling object patch)."""
        self.current_sigma: Tensor | None = None
        """The sigma of each row of the UNet call in progress (block patches that act on part of the schedule)."""
        self.attn1_patches: list[Any] = []
        """This run's self-attention patches (nodes/sd/attention_patches.py), applied together per UNet call."""
        config = getattr(unet, "config", None)
        self.needs_added_cond = getattr(config, "addition_embed_type", None) == "text_time"
        self.channels_last = channels_last_on_cuda(unet, self.device)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """The fractional training timestep of each sigma (log-sigma interpolation), float32 on the UNet's device.

        Computed where the UNet runs, in float64 as diffusers' schedulers do (float32 where the device has no
        float64): taking sigma to the CPU for this would wait for every queued kernel, a sync per step.
        """
        if self.parametrisation is not None:
            return self.parametrisation.timestep(sigma).to(self.device, torch.float32)
        sigmas = self._timestep_sigmas
        return sigma_to_timestep(sigma.to(sigmas.device, sigmas.dtype), sigmas).to(torch.float32)

    def output_to_denoised(self, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, sigma: Tensor, **unet_kwargs: Any) -> Tensor:
        """x0 predicted from x at noise level sigma ([B] or scalar).

        Args:
            x: latents at noise level sigma, [B, C, H, W].
            sigma: one sigma per batch item (or one for all).
            unet_kwargs: passed to the UNet: encoder_hidden_states, added_cond_kwargs, ...; "c_concat" (channels
                stacked onto the scaled input, unscaled: inpainting and InstructPix2Pix UNets) is taken out.
        """
        concat = unet_kwargs.pop("c_concat", None)
        sigma = sigma.reshape(-1).to(x.device, x.dtype).expand(x.shape[0])
        sigma_b = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        self.current_sigma = sigma
        if self.parametrisation is not None:
            param = self.parametrisation
            output = self.run_unet(x * param.input_scale(sigma_b), self.timestep(sigma), unet_kwargs)
            return param.denoised(x, sigma_b, output.to(x.device, x.dtype))
        scaled = x / (sigma_b**2 + 1) ** 0.5
        if concat is not None:
            scaled = torch.cat([scaled, concat.to(scaled)], dim=1)
        output = self.run_unet(scaled, self.timestep(sigma), unet_kwargs)
        return self.output_to_denoised(x, sigma_b, output.to(x.device, x.dtype))

    def run_unet(self, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """Call the UNet through `wrappers` (the first added is outermost)."""
        call: UNetCall = self._call_unet
        for wrapper in reversed(self.wrappers):
            call = partial(wrapper, call)
        return call(sample, timestep, kwargs)

    def _call_unet(self, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        # calc_cond_batch's kwargs are already on the UNet's device and dtype (`to` returns them as they are);
        # this moves only what a step adds (ControlNet residuals from a net in another dtype)
        moved = {key: to_device(value, self.device, self.dtype) for key, value in kwargs.items()}
        sample = sample.to(self.device, self.dtype)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        if not (self.wrappers or self.attn1_patches or getattr(self, "_block_patches", None)):
            stacked = batched_unet_call(self.unet, sample, timestep.to(self.device), moved)  # other prompts' too
            if stacked is not None:
                return stacked
        out = self.unet(sample, timestep.to(self.device), **moved, return_dict=False)
        return out[0]


def channels_last_on_cuda(unet: torch.nn.Module, device: torch.device) -> bool:
    """Give the UNet's 4-D weights the channels_last layout on CUDA and say whether it did; elsewhere change nothing.

    cuDNN's tensor-core convolutions work in NHWC, so NCHW weights and activations pay a transpose around
    every convolution (diffusers' performance guide recommends channels_last for the UNet). A layout changes no
    weight value (results differ only by the rounding of the kernels cuDNN picks), so the shared, cached module
    stays what every other user expects; converting again is a no-op. On the CPU (where oneDNN picks its own
    layouts) it returns False and touches nothing.
    """
    if device.type != "cuda":
        return False
    unet.to(memory_format=torch.channels_last)
    return True


class EpsDenoiser(UNetDenoiser):
    """Epsilon prediction (Ho et al. 2020): x0 = x - sigma * eps."""

    def output_to_denoised(self, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
        return x - sigma * output


class VDenoiser(UNetDenoiser):
    """v prediction (Salimans & Ho 2022): x0 = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v."""

    def output_to_denoised(self, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
        return x / (sigma**2 + 1) - sigma / (sigma**2 + 1) ** 0.5 * output


def unet_denoiser(model: ModelHandle) -> UNetDenoiser:
    """The denoiser for a MODEL handle, by its prediction type (a fresh object: safe to patch per run)."""
    kind = {"epsilon": EpsDenoiser, "v_prediction": VDenoiser}.get(model.prediction)
    if kind is None:
        raise ValueError(f"unknown prediction type {model.prediction!r}; expected 'epsilon' or 'v_prediction'")
    return kind(model.sampling_unet, model.alphas_cumprod, dtype=model.dtype, device=model.device)


# -- conditioning and classifier-free guidance --------------------------------------------------------


@dataclass(frozen=True)
class GuidanceInputs:
    """What a guidance term sees after CFG: it returns a new x0 (ComfyUI's post-CFG function)."""

    x: Tensor
    sigma: Tensor
    cond_denoised: Tensor
    uncond_denoised: Tensor | None
    denoised: Tensor
    cfg: float
    model: UNetDenoiser
    extra_denoised: tuple[Tensor, ...] = ()
    """x0 for each of CFGDenoiser.extra_conds, in order (e.g. SEGA's concepts)."""


GuidanceTerm = Callable[[GuidanceInputs], Tensor]


@dataclass(frozen=True)
class CfgInputs:
    """What a pre-CFG or CFG function sees (ComfyUI's sampler_pre_cfg_function / sampler_cfg_function args),
    with every prediction as x0: cond_denoised, uncond_denoised (zeros when cfg == 1 skipped the negative,
    as in ComfyUI)."""

    x: Tensor
    sigma: Tensor
    cond_denoised: Tensor
    uncond_denoised: Tensor
    cfg: float
    model: UNetDenoiser
    uncond_evaluated: bool = True


LatentUpdate = Callable[[Tensor, Tensor], Tensor]
"""(x, sigma) -> the latent the model is evaluated at and the sampler goes on from (a "latent_update" patch)."""
PreCfgFunction = Callable[[CfgInputs], tuple[Tensor, Tensor]]
"""Returns new (cond x0, uncond x0) before they are combined."""
CfgFunction = Callable[[CfgInputs], Tensor]
"""Replaces uncond + cfg * (cond - uncond): returns the guided x0."""


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + cfg * (cond - uncond), then guidance terms.

    Positive and negative entries are evaluated together, batched where shapes allow, and so are
    `extra_conds`: further conditioning sets a guidance term asks for (SEGA's concepts), whose x0 reach the
    terms as `GuidanceInputs.extra_denoised`. With cfg == 1 and no guidance terms the negative is skipped
    (it would cancel out).
    """

    def __init__(
        self, model: UNetDenoiser, positive: Sequence[CondItem], negative: Sequence[CondItem], cfg: float
    ) -> None:
        if not positive:
            raise ValueError("positive conditioning is empty")
        self.model, self.positive, self.negative, self.cfg = model, tuple(positive), tuple(negative), float(cfg)
        self.guidance_terms: list[GuidanceTerm] = []
        self.extra_conds: list[Sequence[CondItem]] = []
        self.pre_cfg_functions: list[PreCfgFunction] = []
        """"pre_cfg" patches, in order: they change cond/uncond x0 before CFG combines them."""
        self.cfg_function: CfgFunction | None = None
        """A "cfg_function" patch's replacement for the CFG formula (one at a time: the last applied wins)."""
        self.latent_updates: list[LatentUpdate] = []
        """"latent_update" patches, in order: each moves the latent before the model is evaluated."""
        self.run_sigmas: Tensor | None = None
        """The sampling run's sigma schedule (set by ksampler.sample_custom), for patches that act per step."""

    def __call__(
        self, x: Tensor, sigma: Tensor, *, on_uncond: Callable[[Tensor], None] | None = None, **extra: Any
    ) -> Tensor:
        """Guided x0. `on_uncond`, when a sampler passes it (the CFG++ family), is called with the unconditional
        x0 before guidance terms apply (ComfyUI's post-CFG hook); it makes the negative run even at cfg 1."""
        wants_uncond = on_uncond is not None and bool(self.negative)
        skip_uncond = math.isclose(self.cfg, 1.0) and not self.guidance_terms and not wants_uncond
        if not skip_uncond and not self.negative:
            raise ValueError(f"negative conditioning is empty but cfg is {self.cfg}")
        sets = [self.positive, None if skip_uncond else self.negative, *self.extra_conds]
        cond, uncond, *extras = calc_cond_batch(self.model, sets, x, sigma)
        assert cond is not None and all(item is not None for item in extras)
        if self.pre_cfg_functions or self.cfg_function is not None:
            cond, uncond, denoised = self._custom_cfg(x, sigma, cond, uncond)
        else:
            denoised = cond if uncond is None else uncond + (cond - uncond) * self.cfg
        if on_uncond is not None:
            on_uncond(cond if uncond is None else uncond)
        extra_denoised = tuple(item for item in extras if item is not None)
        for term in self.guidance_terms:
            inputs = GuidanceInputs(x, sigma, cond, uncond, denoised, self.cfg, self.model, extra_denoised)
            denoised = term(inputs)
        return denoised

    def _custom_cfg(
        self, x: Tensor, sigma: Tensor, cond: Tensor, uncond: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """ComfyUI's order: pre-CFG functions on (cond, uncond), then the CFG function (or formula)."""
        evaluated = uncond is not None
        uncond_x0 = uncond if uncond is not None else torch.zeros_like(cond)
        for function in self.pre_cfg_functions:
            cond, uncond_x0 = function(CfgInputs(x, sigma, cond, uncond_x0, self.cfg, self.model, evaluated))
        if self.cfg_function is not None:
            denoised = self.cfg_function(CfgInputs(x, sigma, cond, uncond_x0, self.cfg, self.model, evaluated))
        else:
            denoised = uncond_x0 + (cond - uncond_x0) * self.cfg
        return cond, uncond_x0, denoised


PATCH_TARGETS: dict[str, str] = {
    "guidance": "cfg", "pre_cfg": "cfg", "cfg_function": "cfg",
    "attention": "unet", "residual": "unet", "weights": "unet", "unet_block": "unet", "model_sampling": "unet",
    "denoise_mask": "unet", "latent_update": "cfg", "windows": "unet",
}
"""Which per-run object each kind of ModelPatch is applied to."""


@contextmanager
def patches_applied(
    patches: Sequence[ModelPatch], *, unet_denoiser: UNetDenoiser, cfg_denoiser: CFGDenoiser
) -> Iterator[None]:
    """Apply each patch in order to its target for the duration of a run, undoing in reverse order after."""
    undos: list[Callable[[], Any]] = []
    try:
        for patch in patches:
            target_name = PATCH_TARGETS.get(patch.kind)
            if target_name is None:
                kinds = sorted(PATCH_TARGETS)
                raise ValueError(f"model patch {patch.name!r} has unknown kind {patch.kind!r}; expected one of {kinds}")
            undo = patch.apply(cfg_denoiser if target_name == "cfg" else unet_denoiser)
            if undo is not None:
                undos.append(undo)
        yield
    finally:
        for undo in reversed(undos):
            undo()
