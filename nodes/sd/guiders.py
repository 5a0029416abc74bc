"""GUIDER: a model with its conditioning and the rule that turns their predictions into one x0.

ComfyUI's guiders (CFGGuider, BasicGuider, DualCFGGuider, PerpNegGuider) are frozen payloads here; each builds,
for one sampling run, a denoiser over the run's UNet denoiser. Every one is a `CFGDenoiser` (or subclass), so
the model's "guidance" patches (SEGA, PerpNeg, ...) apply to it exactly as under KSampler: their terms run on
the combined prediction, and extra conditioning they ask for joins the same batched UNet call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs, UNetDenoiser, calc_cond_batch
from nodes.sd.perp_neg import perp_neg
from nodes.sd.types import CondItem, Conditioning, ModelHandle


def apply_terms(den: CFGDenoiser, x: Tensor, sigma: Tensor, cond: Tensor, uncond: Tensor | None, denoised: Tensor,
                cfg: float, extras: Sequence[Tensor | None]) -> Tensor:
    """Run the denoiser's guidance terms on `denoised` (ComfyUI's post-CFG functions), in order."""
    extra_denoised = tuple(item for item in extras if item is not None)
    for term in den.guidance_terms:
        denoised = term(GuidanceInputs(x, sigma, cond, uncond, denoised, cfg, den.model, extra_denoised))
    return denoised


class BasicDenoiser(CFGDenoiser):
    """The positive prediction alone (ComfyUI's BasicGuider): no negative is ever evaluated."""

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        cond, _, *extras = calc_cond_batch(self.model, [self.positive, None, *self.extra_conds], x, sigma)
        assert cond is not None
        return apply_terms(self, x, sigma, cond, None, cond, 1.0, extras)


class DualCFGDenoiser(CFGDenoiser):
    """Two guidance scales over three prompts (ComfyUI's DualCFGGuider).

    "regular": (neg + cfg2 (mid - neg)) + cfg1 (pos - mid): CFG of the middle prompt against the negative, plus
    the positive's difference from the middle. "nested": neg + cfg2 ((mid + cfg1 (pos - mid)) - neg): CFG of the
    positive against the middle, itself guided against the negative. Guidance terms act on the inner CFG, as
    ComfyUI's post-CFG functions do.
    """

    def __init__(self, model: UNetDenoiser, positive: Sequence[CondItem], middle: Sequence[CondItem],
                 negative: Sequence[CondItem], cfg_conds: float, cfg_cond2_negative: float, nested: bool) -> None:
        super().__init__(model, positive, negative, cfg_conds)
        self.middle, self.cfg2, self.nested = tuple(middle), float(cfg_cond2_negative), nested

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        skip_negative = not self.nested and math.isclose(self.cfg2, 1.0) and not self.guidance_terms
        skip_middle = skip_negative and math.isclose(self.cfg, 1.0)
        sets = [self.positive, None if skip_middle else self.middle, None if skip_negative else self.negative,
                *self.extra_conds]
        for name, items, skipped in (("cond2", self.middle, skip_middle), ("negative", self.negative, skip_negative)):
            if not skipped and not items:
                raise ValueError(f"DualCFGGuider: {name} conditioning is empty")
        cond, middle, negative, *extras = calc_cond_batch(self.model, sets, x, sigma)
        assert cond is not None
        middle = cond if middle is None else middle
        if self.nested:
            assert negative is not None
            text = apply_terms(self, x, sigma, cond, middle, middle + (cond - middle) * self.cfg, self.cfg, extras)
            return negative + (text - negative) * self.cfg2
        inner = middle if negative is None else negative + (middle - negative) * self.cfg2
        inner = apply_terms(self, x, sigma, middle, negative, inner, self.cfg2, extras)
        return inner + (cond - middle) * self.cfg


class PerpNegDenoiser(CFGDenoiser):
    """Perpendicular negative guidance against an empty prompt (ComfyUI's PerpNegGuider; see perp_neg.perp_neg).

    With neg_scale 0 the negative is not evaluated, and with cfg 1 as well neither is the empty prompt (their
    predictions count as zeros, which gives the positive prediction, as in ComfyUI).
    """

    def __init__(self, model: UNetDenoiser, positive: Sequence[CondItem], negative: Sequence[CondItem],
                 empty: Sequence[CondItem], cfg: float, neg_scale: float) -> None:
        super().__init__(model, positive, negative, cfg)
        self.empty, self.neg_scale = tuple(empty), float(neg_scale)

    def __call__(self, x: Tensor, sigma: Tensor, **extra: Any) -> Tensor:
        skip_negative = math.isclose(self.neg_scale, 0.0)
        skip_empty = skip_negative and math.isclose(self.cfg, 1.0)
        for name, items, skipped in (("negative", self.negative, skip_negative),
                                     ("empty_conditioning", self.empty, skip_empty)):
            if not skipped and not items:
                raise ValueError(f"PerpNegGuider: {name} is empty")
        sets = [self.positive, None if skip_negative else self.negative, None if skip_empty else self.empty,
                *self.extra_conds]
        cond, negative, empty, *extras = calc_cond_batch(self.model, sets, x, sigma)
        assert cond is not None
        negative_x0 = torch.zeros_like(x) if negative is None else negative
        empty_x0 = torch.zeros_like(x) if empty is None else empty
        denoised = perp_neg(cond, negative_x0, empty_x0, self.neg_scale, self.cfg)
        return apply_terms(self, x, sigma, cond, negative, denoised, self.cfg, extras)


@dataclass(frozen=True)
class CFGGuide:
    """GUIDER of CFGGuider: classifier-free guidance, uncond + cfg (cond - uncond) (Ho & Salimans 2022).

    KSampler samples with exactly this guider."""

    model: ModelHandle
    positive: Conditioning
    negative: Conditioning
    cfg: float

    def denoiser(self, unet: UNetDenoiser) -> CFGDenoiser:
        return CFGDenoiser(unet, self.positive, self.negative, self.cfg)


@dataclass(frozen=True)
class BasicGuide:
    """GUIDER of BasicGuider: the positive conditioning alone (what CFG gives at cfg 1)."""

    model: ModelHandle
    positive: Conditioning

    def denoiser(self, unet: UNetDenoiser) -> CFGDenoiser:
        return BasicDenoiser(unet, self.positive, (), 1.0)


@dataclass(frozen=True)
class DualCFGGuide:
    """GUIDER of DualCFGGuider (see DualCFGDenoiser)."""

    model: ModelHandle
    cond1: Conditioning
    cond2: Conditioning
    negative: Conditioning
    cfg_conds: float
    cfg_cond2_negative: float
    nested: bool = False

    def denoiser(self, unet: UNetDenoiser) -> CFGDenoiser:
        return DualCFGDenoiser(unet, self.cond1, self.cond2, self.negative, self.cfg_conds,
                               self.cfg_cond2_negative, self.nested)


@dataclass(frozen=True)
class PerpNegGuide:
    """GUIDER of PerpNegGuider (see PerpNegDenoiser)."""

    model: ModelHandle
    positive: Conditioning
    negative: Conditioning
    empty: Conditioning
    cfg: float
    neg_scale: float

    def denoiser(self, unet: UNetDenoiser) -> CFGDenoiser:
        return PerpNegDenoiser(unet, self.positive, self.negative, self.empty, self.cfg, self.neg_scale)


Guider = CFGGuide | BasicGuide | DualCFGGuide | PerpNegGuide
"""What a GUIDER socket carries: a frozen payload with `model` and `denoiser(unet) -> CFGDenoiser`."""
