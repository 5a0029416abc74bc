"""Conditioning nodes: encode a prompt, combine, average, restrict to an area, zero out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from nodegraph import Float, Int, Node, NodeContext, NodeSchema, Out, Socket, String

from ..sd.types import ClipHandle, Conditioning

MAX_RESOLUTION = 16384


class CLIPTextEncode(Node):
    schema = NodeSchema(
        type_id="CLIPTextEncode", display_name="CLIP Text Encode (Prompt)", category="conditioning",
        description="Encodes a prompt; (word:1.2) weights, embedding:name and prompts over 77 tokens work.",
        inputs=(String("text", multiline=True), Socket("clip", "CLIP")),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, text: str, clip: ClipHandle) -> tuple[Conditioning]:
        from ..sd.text import encode

        return ((encode(clip, text),),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, text: str) -> Any:
        """The content digest of each embedding file the text names (None for a name that resolves to none),
        so replacing or editing an embedding re-encodes. Looked up where the CLIP handles of this library look
        (`CheckpointLoaderSimple` gives them the environment's embeddings folders)."""
        from ..sd.prompt import parse_prompt
        from ..sd.text import find_embedding

        names = sorted({part.embedding for part in parse_prompt(text) if part.embedding is not None})
        if not names:
            return None
        dirs = ctx.env.models.folder_dirs("embeddings") if ctx.env is not None else []
        found = {name: find_embedding(name, dirs) for name in names}
        return [[name, None if path is None else ctx.fingerprint_file(path)] for name, path in found.items()]


class ConditioningCombine(Node):
    schema = NodeSchema(
        type_id="ConditioningCombine", display_name="Conditioning (Combine)", category="conditioning",
        inputs=(Socket("conditioning_1", "CONDITIONING"), Socket("conditioning_2", "CONDITIONING")),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning_1: Conditioning,
                conditioning_2: Conditioning) -> tuple[Conditioning]:
        return (tuple(conditioning_1) + tuple(conditioning_2),)


def _pad_tokens(embeds: torch.Tensor, tokens: int) -> torch.Tensor:
    if embeds.shape[1] >= tokens:
        return embeds[:, :tokens]
    pad = torch.zeros(embeds.shape[0], tokens - embeds.shape[1], embeds.shape[2], dtype=embeds.dtype)
    return torch.cat([embeds, pad], dim=1)


class ConditioningAverage(Node):
    schema = NodeSchema(
        type_id="ConditioningAverage", display_name="ConditioningAverage", category="conditioning",
        description="Blends each entry of conditioning_to toward the first entry of conditioning_from.",
        inputs=(Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING"),
                Float("conditioning_to_strength", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning_to: Conditioning, conditioning_from: Conditioning,
                conditioning_to_strength: float) -> tuple[Conditioning]:
        if not conditioning_from:
            raise ValueError("conditioning_from is empty")
        source = conditioning_from[0]
        out = []
        for item in conditioning_to:
            other = _pad_tokens(source.embeds, item.embeds.shape[1])
            embeds = item.embeds * conditioning_to_strength + other * (1.0 - conditioning_to_strength)
            pooled = item.pooled
            if pooled is not None and source.pooled is not None:
                pooled = pooled * conditioning_to_strength + source.pooled * (1.0 - conditioning_to_strength)
            out.append(replace(item, embeds=embeds, pooled=pooled))
        return (tuple(out),)


class ConditioningSetArea(Node):
    schema = NodeSchema(
        type_id="ConditioningSetArea", display_name="Conditioning (Set Area)", category="conditioning",
        description="Applies the conditioning only inside a rectangle (pixels, multiples of 8).",
        inputs=(Socket("conditioning", "CONDITIONING"),
                Int("width", 64, min=64, max=MAX_RESOLUTION, step=8),
                Int("height", 64, min=64, max=MAX_RESOLUTION, step=8),
                Int("x", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
                Float("strength", 1.0, min=0.0, max=10.0, step=0.01)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, width: int, height: int, x: int, y: int,
                strength: float) -> tuple[Conditioning]:
        area = (height // 8, width // 8, y // 8, x // 8)
        return (tuple(replace(item, area=area, area_fraction=None, mask_bounds=False, strength=strength)
                      for item in conditioning),)


class ConditioningZeroOut(Node):
    schema = NodeSchema(
        type_id="ConditioningZeroOut", display_name="ConditioningZeroOut", category="advanced/conditioning",
        inputs=(Socket("conditioning", "CONDITIONING"),), outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning) -> tuple[Conditioning]:
        return (tuple(replace(item, embeds=torch.zeros_like(item.embeds),
                              pooled=None if item.pooled is None else torch.zeros_like(item.pooled))
                      for item in conditioning),)


NODES = (CLIPTextEncode, ConditioningCombine, ConditioningAverage, ConditioningSetArea, ConditioningZeroOut)
