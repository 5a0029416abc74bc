"""Conditioning nodes that say where, when and how strongly an entry acts, and ConditioningConcat.

Each returns new entries (`dataclasses.replace`); what the fields mean at sampling time is resolved by
nodes/sd/cond_regions.py inside the denoiser's calc_cond_batch.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.types import Conditioning

MASK_AREAS = ("default", "mask bounds")


class ConditioningConcat(Node):
    schema = NodeSchema(
        type_id="ConditioningConcat", display_name="Conditioning (Concat)", category="conditioning",
        description="Appends the tokens of conditioning_from's first entry to every entry of conditioning_to.",
        inputs=(Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING")),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning_to: Conditioning,
                conditioning_from: Conditioning) -> tuple[Conditioning]:
        if not conditioning_from:
            raise ValueError("ConditioningConcat: conditioning_from is empty")
        tokens = conditioning_from[0].embeds
        out = []
        for item in conditioning_to:
            if item.embeds.shape[-1] != tokens.shape[-1]:
                raise ValueError(f"ConditioningConcat: token widths differ ({item.embeds.shape[-1]} in "
                                 f"conditioning_to, {tokens.shape[-1]} in conditioning_from); use one CLIP for both")
            out.append(replace(item, embeds=torch.cat([item.embeds, tokens.to(item.embeds)], dim=1)))
        return (tuple(out),)


class ConditioningSetAreaPercentage(Node):
    schema = NodeSchema(
        type_id="ConditioningSetAreaPercentage", display_name="Conditioning (Set Area with Percentage)",
        category="conditioning",
        description="Applies the conditioning only inside a rectangle given as fractions of the image.",
        inputs=(Socket("conditioning", "CONDITIONING"),
                Float("width", 1.0, min=0, max=1.0, step=0.01),
                Float("height", 1.0, min=0, max=1.0, step=0.01),
                Float("x", 0, min=0, max=1.0, step=0.01),
                Float("y", 0, min=0, max=1.0, step=0.01),
                Float("strength", 1.0, min=0.0, max=10.0, step=0.01)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, width: float, height: float, x: float, y: float,
                strength: float) -> tuple[Conditioning]:
        fraction = (float(height), float(width), float(y), float(x))
        return (tuple(replace(item, area=None, area_fraction=fraction, mask_bounds=False, strength=strength)
                      for item in conditioning),)


class ConditioningSetAreaStrength(Node):
    schema = NodeSchema(
        type_id="ConditioningSetAreaStrength", display_name="ConditioningSetAreaStrength", category="conditioning",
        description="Sets how strongly each entry counts against the others where they overlap.",
        inputs=(Socket("conditioning", "CONDITIONING"), Float("strength", 1.0, min=0.0, max=10.0, step=0.01)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, strength: float) -> tuple[Conditioning]:
        return (tuple(replace(item, strength=strength) for item in conditioning),)


class ConditioningSetMask(Node):
    schema = NodeSchema(
        type_id="ConditioningSetMask", display_name="Conditioning (Set Mask)", category="conditioning",
        description="Weights the conditioning per pixel by a mask; 'mask bounds' evaluates it only on the "
                    "mask's bounding box.",
        inputs=(Socket("conditioning", "CONDITIONING"), Socket("mask", "MASK"),
                Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
                Combo("set_cond_area", MASK_AREAS)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, mask: torch.Tensor, strength: float,
                set_cond_area: str) -> tuple[Conditioning]:
        if set_cond_area not in MASK_AREAS:
            raise ValueError(f"ConditioningSetMask: set_cond_area {set_cond_area!r} is not one of {MASK_AREAS}")
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3:
            raise ValueError(f"ConditioningSetMask: mask must be [B, H, W], got shape {tuple(mask.shape)}")
        bounds = set_cond_area != "default"
        return (tuple(replace(item, mask=mask, mask_bounds=bounds, mask_strength=strength)
                      for item in conditioning),)


class ConditioningSetTimestepRange(Node):
    schema = NodeSchema(
        type_id="ConditioningSetTimestepRange", display_name="ConditioningSetTimestepRange",
        category="advanced/conditioning",
        description="Evaluates the conditioning only between start and end, as fractions of the sampling run "
                    "(0 = the first, noisiest step).",
        inputs=(Socket("conditioning", "CONDITIONING"),
                Float("start", 0.0, min=0.0, max=1.0, step=0.001),
                Float("end", 1.0, min=0.0, max=1.0, step=0.001)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, start: float,
                end: float) -> tuple[Conditioning]:
        return (tuple(replace(item, timestep_range=(float(start), float(end))) for item in conditioning),)


NODES = (ConditioningConcat, ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask,
         ConditioningSetTimestepRange)
