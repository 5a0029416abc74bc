"""Conditioning entries -> batched UNet calls: ComfyUI's calc_cond_batch with its area, strength and mask rules.

Entries of the positive, negative and any extra conditioning sets are grouped by what their rows share (area
size, UNet keyword arguments) and evaluated together where shapes allow; each set's prediction is the
weighted average of its entries over the pixels they cover. Masks, fractional areas, timestep ranges,
concatenated latents and SDXL size ids of an entry are resolved by `nodes.sd.cond_regions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from nodes.sd import cond_regions, unclip
from nodes.sd.types import CondItem

if TYPE_CHECKING:
    from nodes.sd.denoisers import UNetDenoiser


def to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Tensors (in dicts, lists and tuples too) moved to the device; floating ones also cast to `dtype`."""
    if isinstance(value, Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device, dtype) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device, dtype) for item in value)
    return value

def area_and_weight(
    item: CondItem, height: int, width: int, batch: int = 1
) -> tuple[tuple[int, int, int, int], Tensor]:
    """Where an entry applies, (h, w, y, x) clipped to the latent, and its weight there, [1 or batch, 1, h, w].

    With a mask the weight is mask * mask_strength * strength on the area (ConditioningSetMask). Otherwise it
    is `strength`, feathered linearly over min(8, size // 4) latent pixels along edges that are inside the
    image, so overlapping areas blend smoothly (ComfyUI's get_area_and_mult).
    """
    area = cond_regions.resolve_area(item, height, width)
    h, w, top, left = (height, width, 0, 0) if area is None else area
    h, w = min(h, height - top), min(w, width - left)
    if h <= 0 or w <= 0 or top < 0 or left < 0:
        raise ValueError(f"conditioning area {area} (h, w, y, x) lies outside the {height}x{width} latent")
    if item.mask is not None:
        mask = cond_regions.latent_mask(item.mask, height, width)[:batch, top : top + h, left : left + w]
        weight = mask.unsqueeze(1) * (float(item.mask_strength) * float(item.strength))
        return (h, w, top, left), cond_regions.to_batch(weight, batch)
    weight = torch.full((1, 1, h, w), float(item.strength))
    if area is None:
        return (h, w, top, left), weight
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
    sigma_interval: tuple[float, float] | None
    concat: Tensor | None
    """[batch, extra channels, H, W] over the whole latent (cropped to the region per step)."""

    def batch_key(self) -> tuple[Any, ...]:
        pooled = None if self.item.pooled is None else tuple(self.item.pooled.shape)
        return (self.region[:2], tuple(self.item.embeds.shape[1:]), pooled, tuple(map(id, _row_kwargs(self.item))),
                self.sigma_interval, None if self.time_ids is None else self.time_ids.shape[-1])


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
    sigma_interval: tuple[float, float] | None = None
    """The entries are evaluated only while sigma is in this (high, low) interval (their timestep range)."""
    concats: tuple[Tensor, ...] | None = None
    """Each entry's concatenated channels over the whole latent, on x's device and dtype."""


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
    extra_channels = max(0, int(getattr(getattr(model.unet, "config", None), "in_channels", x.shape[1])) - x.shape[1])
    grouped: dict[tuple[Any, ...], list[_Piece]] = {}
    for set_index, items in enumerate(cond_sets):
        for item in items or ():
            if model.needs_added_cond and item.pooled is None:
                raise ValueError("this UNet needs SDXL pooled text embeddings, but a conditioning entry has none")
            region, weight = area_and_weight(item, height, width, batch)
            time_ids = None
            if model.needs_added_cond:
                count = cond_regions.time_id_count(model.unet, item.pooled.shape[-1])  # type: ignore[union-attr]
                time_ids = cond_regions.time_ids(item, set_index, height, width, count)
            concat = cond_regions.concat_map(item, extra_channels, batch, height, width)
            interval = cond_regions.sigma_interval(item, model.sigmas)
            piece = _Piece(set_index, item, region, weight, time_ids, interval, concat)
            grouped.setdefault((*piece.batch_key(), concat is None), []).append(piece)
    groups = []
    for pieces in grouped.values():
        kwargs: dict[str, Any] = {
            "encoder_hidden_states": torch.cat([p.item.embeds.expand(batch, -1, -1) for p in pieces]),
        }
        if unclip.needs_class_labels(model.unet):  # unCLIP: image embeddings as class labels, zeros without
            kwargs["class_labels"] = torch.cat([unclip.class_labels(p.item, model.unet).expand(batch, -1)
                                                for p in pieces])
        if model.needs_added_cond:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.cat([p.item.pooled.expand(batch, -1) for p in pieces]),  # type: ignore[union-attr]
                "time_ids": torch.cat([p.time_ids.expand(batch, -1) for p in pieces]),  # type: ignore[union-attr]
            }
        groups.append(_Group(
            sets=tuple(p.set_index for p in pieces),
            regions=tuple(p.region for p in pieces),
            weights=tuple(p.weight.to(x.device, x.dtype) for p in pieces),
            kwargs={key: to_device(value, model.device, model.dtype) for key, value in kwargs.items()},
            row_kwargs=_row_kwargs(pieces[0].item),
            sigma_interval=pieces[0].sigma_interval,
            concats=None if pieces[0].concat is None else tuple(p.concat.to(x.device, x.dtype) for p in pieces),
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
        if not cond_regions.in_interval(group.sigma_interval, sigma):
            continue
        crops = [x[:, :, top : top + h, left : left + w] for (h, w, top, left) in group.regions]
        rows, row_sigma = torch.cat(crops), sigma.repeat(len(group.regions))
        kwargs = dict(group.kwargs)
        if group.concats is not None:
            kwargs["c_concat"] = torch.cat([c[:, :, top : top + h, left : left + w]
                                            for c, (h, w, top, left) in zip(group.concats, group.regions)])
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
