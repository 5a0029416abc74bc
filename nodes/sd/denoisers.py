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
Whatever `apply` returns is called to undo it when the run ends.
A `CondItem.extras` value with an `unet_kwargs` method (`RowKwargs`, e.g. ControlNet's residuals) adds UNet
keyword arguments for the rows of the entries that carry it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from nodes.sd.schedules import model_sigmas, precise_dtype, sigma_to_timestep
from nodes.sd.types import CondItem, ModelHandle, ModelPatch

UNetCall = Callable[[Tensor, Tensor, dict[str, Any]], Tensor]
"""(scaled input, timestep, unet kwargs) -> the UNet's raw output."""
UNetWrapper = Callable[[UNetCall, Tensor, Tensor, dict[str, Any]], Tensor]
"""Wraps one UNet call: receives the next call in the chain and may change inputs, kwargs or output."""


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
        sigmas = self._timestep_sigmas
        return sigma_to_timestep(sigma.to(sigmas.device, sigmas.dtype), sigmas).to(torch.float32)

    def output_to_denoised(self, x: Tensor, sigma: Tensor, output: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, sigma: Tensor, **unet_kwargs: Any) -> Tensor:
        """x0 predicted from x at noise level sigma ([B] or scalar).

        Args:
            x: latents at noise level sigma, [B, C, H, W].
            sigma: one sigma per batch item (or one for all).
            unet_kwargs: passed to the UNet: encoder_hidden_states, added_cond_kwargs, ...
        """
        sigma = sigma.reshape(-1).to(x.device, x.dtype).expand(x.shape[0])
        sigma_b = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        scaled = x / (sigma_b**2 + 1) ** 0.5
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
        moved = {key: _to(value, self.device, self.dtype) for key, value in kwargs.items()}
        sample = sample.to(self.device, self.dtype)
        if self.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
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


def _to(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, dict):
        return {key: _to(item, device, dtype) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(item, device, dtype) for item in value)
    return value


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


def area_and_weight(item: CondItem, height: int, width: int) -> tuple[tuple[int, int, int, int], Tensor]:
    """Where an entry applies, (h, w, y, x) clipped to the latent, and its weight there, [1, 1, h, w].

    The weight is `strength`, feathered linearly over min(8, size // 4) latent pixels along edges that are
    inside the image, so overlapping areas blend smoothly (ComfyUI's get_area_and_mult).
    """
    if item.area is None:
        return (height, width, 0, 0), torch.full((1, 1, height, width), float(item.strength))
    h, w, top, left = item.area
    h, w = min(h, height - top), min(w, width - left)
    if h <= 0 or w <= 0 or top < 0 or left < 0:
        raise ValueError(f"conditioning area {item.area} (h, w, y, x) lies outside the {height}x{width} latent")
    weight = torch.full((1, 1, h, w), float(item.strength))
    for dim, size, offset, full in ((2, h, top, height), (3, w, left, width)):
        ramp = min(8, size // 4)
        for t in range(ramp):
            if offset != 0:
                weight.narrow(dim, t, 1).mul_((t + 1) / ramp)
            if offset + size < full:
                weight.narrow(dim, size - 1 - t, 1).mul_((t + 1) / ramp)
    return (h, w, top, left), weight


@runtime_checkable
class RowKwargs(Protocol):
    """A CondItem extra that adds UNet kwargs for its entries' rows (ControlNet: the additional residuals).

    Entries batch together only when they carry the same such extras (by identity), so one call computes
    them for exactly the rows of those entries: x is their stacked (cropped) latents, `entries` how many
    entries were stacked (each `x.shape[0] // entries` rows), `kwargs` the UNet kwargs built so far.
    """

    def unet_kwargs(
        self, model: UNetDenoiser, x: Tensor, sigma: Tensor, kwargs: dict[str, Any], entries: int
    ) -> dict[str, Any]: ...


def _row_kwargs(item: CondItem) -> tuple[RowKwargs, ...]:
    return tuple(value for _, value in sorted(item.extras.items()) if isinstance(value, RowKwargs))


@dataclass(frozen=True)
class _Piece:
    """One conditioning entry of one set (0 = positive, 1 = negative), ready to batch."""

    set_index: int
    item: CondItem
    region: tuple[int, int, int, int]
    weight: Tensor
    time_ids: Tensor | None

    def batch_key(self) -> tuple[Any, ...]:
        pooled = None if self.item.pooled is None else tuple(self.item.pooled.shape)
        return (self.region[:2], tuple(self.item.embeds.shape[1:]), pooled, tuple(map(id, _row_kwargs(self.item))))


def _time_ids(item: CondItem, height: int, width: int) -> Tensor:
    """SDXL's size conditioning: CondItem.extras["time_ids"], else (H, W, 0, 0, H, W) in image pixels."""
    given = item.extras.get("time_ids")
    if given is not None:
        return torch.as_tensor(given, dtype=torch.float32).reshape(1, -1)
    h, w = height * 8, width * 8
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)


@dataclass(frozen=True)
class _Group:
    """Entries evaluated in one UNet call, with everything about them that does not depend on x."""

    sets: tuple[int, ...]
    """The conditioning set of each entry (UNetDenoiser.batch_sets)."""
    regions: tuple[tuple[int, int, int, int], ...]
    weights: tuple[Tensor, ...]
    """Each entry's weight on its region, on x's device and dtype."""
    kwargs: dict[str, Any]
    """encoder_hidden_states (and SDXL's added_cond_kwargs) for the stacked rows, on the UNet's device and
    dtype; read-only: a step copies the dict before adding to it."""
    row_kwargs: tuple[RowKwargs, ...]


@dataclass(frozen=True)
class _CondPlan:
    """How calc_cond_batch batches some conditioning sets for latents of one shape (see UNetDenoiser.cond_plans)."""

    cond_sets: tuple[tuple[CondItem, ...], ...]
    """The entries planned for, held so the ids in the plan's key cannot be reused by other objects."""
    groups: tuple[_Group, ...]


def _plan_key(cond_sets: Sequence[Sequence[CondItem] | None], x: Tensor) -> tuple[Any, ...]:
    return (tuple(tuple(map(id, items or ())) for items in cond_sets), tuple(x.shape), x.dtype, x.device)


def _build_plan(model: UNetDenoiser, cond_sets: Sequence[Sequence[CondItem] | None], x: Tensor) -> _CondPlan:
    """Group entries of equal shape and build each group's UNet kwargs, moved to the UNet's device once."""
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    grouped: dict[tuple[Any, ...], list[_Piece]] = {}
    for set_index, items in enumerate(cond_sets):
        for item in items or ():
            if model.needs_added_cond and item.pooled is None:
                raise ValueError("this UNet needs SDXL pooled text embeddings, but a conditioning entry has none")
            region, weight = area_and_weight(item, height, width)
            time_ids = _time_ids(item, height, width) if model.needs_added_cond else None
            piece = _Piece(set_index, item, region, weight, time_ids)
            grouped.setdefault(piece.batch_key(), []).append(piece)
    groups = []
    for pieces in grouped.values():
        kwargs: dict[str, Any] = {
            "encoder_hidden_states": torch.cat([p.item.embeds.expand(batch, -1, -1) for p in pieces]),
        }
        if model.needs_added_cond:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.cat([p.item.pooled.expand(batch, -1) for p in pieces]),  # type: ignore[union-attr]
                "time_ids": torch.cat([p.time_ids.expand(batch, -1) for p in pieces]),  # type: ignore[union-attr]
            }
        groups.append(_Group(
            sets=tuple(p.set_index for p in pieces),
            regions=tuple(p.region for p in pieces),
            weights=tuple(p.weight.to(x.device, x.dtype) for p in pieces),
            kwargs={key: _to(value, model.device, model.dtype) for key, value in kwargs.items()},
            row_kwargs=_row_kwargs(pieces[0].item),
        ))
    return _CondPlan(tuple(tuple(items or ()) for items in cond_sets), tuple(groups))


def calc_cond_batch(
    model: UNetDenoiser, cond_sets: Sequence[Sequence[CondItem] | None], x: Tensor, sigma: Tensor
) -> list[Tensor | None]:
    """x0 for each set of conditioning entries, evaluating entries of equal shape in one UNet call.

    Each entry predicts x0 on its area; a set's result is the weight-averaged prediction of its entries
    (ComfyUI's calc_cond_batch). A pixel no entry covers gets 0, as in ComfyUI.

    The grouping, weights and UNet kwargs are built on the first call for these entries and this latent
    shape and kept in `model.cond_plans` (the denoiser lives for one run): later steps only crop, stack x
    and call the UNet, with no host-to-device copies of embeddings (each one a sync on CUDA).
    """
    key = _plan_key(cond_sets, x)
    plan = model.cond_plans.get(key)
    if plan is None:
        plan = model.cond_plans[key] = _build_plan(model, cond_sets, x)
    batch = x.shape[0]
    totals = [torch.zeros_like(x) if items else None for items in cond_sets]
    counts = [torch.full_like(x, 1e-37) if items else None for items in cond_sets]
    sigma = sigma.reshape(-1).expand(batch)
    for group in plan.groups:
        crops = [x[:, :, top : top + h, left : left + w] for (h, w, top, left) in group.regions]
        rows, row_sigma = torch.cat(crops), sigma.repeat(len(group.regions))
        kwargs = dict(group.kwargs)
        for extra in group.row_kwargs:
            kwargs.update(extra.unet_kwargs(model, rows, row_sigma, kwargs, len(group.regions)))
        model.batch_sets = group.sets
        try:
            out = model(rows, row_sigma, **kwargs)
        finally:
            model.batch_sets = ()
        for k, (set_index, (h, w, top, left), weight) in enumerate(zip(group.sets, group.regions, group.weights)):
            total, count = totals[set_index], counts[set_index]
            assert total is not None and count is not None
            total[:, :, top : top + h, left : left + w] += out[k * batch : (k + 1) * batch] * weight
            count[:, :, top : top + h, left : left + w] += weight
    return [None if total is None else total / count for total, count in zip(totals, counts)]


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
        denoised = cond if uncond is None else uncond + (cond - uncond) * self.cfg
        if on_uncond is not None:
            on_uncond(cond if uncond is None else uncond)
        extra_denoised = tuple(item for item in extras if item is not None)
        for term in self.guidance_terms:
            inputs = GuidanceInputs(x, sigma, cond, uncond, denoised, self.cfg, self.model, extra_denoised)
            denoised = term(inputs)
        return denoised


PATCH_TARGETS: dict[str, str] = {"guidance": "cfg", "attention": "unet", "residual": "unet", "weights": "unet"}
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
