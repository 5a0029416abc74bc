"""Pix2Pix-Zero's parts as nodes: the edit direction from two caption lists, the reference cross-attention maps of
the reconstruction run, and the cross-attention guidance that keeps them while sampling the edit."""

from __future__ import annotations

from dataclasses import replace

import torch

from nodegraph import Float, Node, NodeContext, NodeSchema, Out, Socket, String

from ..sampling.ksampler import run_model
from ..sd.guiders import CFGGuide
from ..sd.sampler_spec import SamplerSpec
from ..sd.types import ClipHandle, Conditioning, Latent, ModelHandle
from .inversion import CATEGORY

MAPS_TYPE = "CROSS_ATTENTION_MAPS"


def _captions(text: str, what: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"Pix2PixZeroEditDirection: {what} is empty; write one caption per line")
    return lines


class Pix2PixZeroEditDirection(Node):
    schema = NodeSchema(
        type_id="Pix2PixZeroEditDirection", display_name="Pix2Pix-Zero Edit Direction", category=CATEGORY,
        description="Adds the edit direction mean(target caption embeddings) - mean(source caption embeddings) "
                    "to the conditioning (Parmar et al. 2023, arXiv 2302.03027, section 3.1). One caption per "
                    "line, e.g. captions with 'circle' as source and the same with 'square' as target.",
        inputs=(Socket("conditioning", "CONDITIONING"), Socket("clip", "CLIP"),
                String("source_captions", multiline=True), String("target_captions", multiline=True),
                Float("strength", 1.0, min=-10.0, max=10.0, step=0.01)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, clip: ClipHandle, source_captions: str,
                target_captions: str, strength: float) -> tuple[Conditioning]:
        from ..sd.pix2pix_zero import add_direction, edit_direction
        from ..sd.text import encode

        source = [encode(clip, text).embeds for text in _captions(source_captions, "source_captions")]
        target = [encode(clip, text).embeds for text in _captions(target_captions, "target_captions")]
        return (add_direction(conditioning, edit_direction(source, target), strength),)


class CrossAttentionRecord(Node):
    schema = NodeSchema(
        type_id="CrossAttentionRecord", display_name="Cross-Attention Record", category=CATEGORY,
        description="Samples a latent (an inverted one; no noise is added) with CFG, a SAMPLER and SIGMAS and "
                    "records every cross-attention map per step: the reference Pix2PixZeroGuidance keeps. Also "
                    "returns the sampled latent (the reconstruction).",
        inputs=(Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Float("cfg", 5.0, min=0.0, max=100.0, step=0.1, round=0.01),
                Socket("sampler", "SAMPLER"), Socket("sigmas", "SIGMAS"), Socket("latent_image", "LATENT")),
        outputs=(Out(MAPS_TYPE, "maps"), Out("LATENT", "reconstruction")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, positive: Conditioning, negative: Conditioning,
                cfg: float, sampler: SamplerSpec, sigmas: torch.Tensor, latent_image: Latent) -> tuple[object, Latent]:
        from ..sd.pix2pix_zero import record_cross_attention

        guider = CFGGuide(run_model(ctx, model), tuple(positive), tuple(negative), cfg)
        maps, output = record_cross_attention(guider, sampler, sigmas, replace(latent_image, noise_mask=None),
                                              should_stop=lambda: ctx.interrupted)
        return maps, output


class Pix2PixZeroGuidance(Node):
    schema = NodeSchema(
        type_id="Pix2PixZeroGuidance", display_name="Pix2Pix-Zero Guidance", category=CATEGORY,
        description="Cross-attention guidance (Parmar et al. 2023, eq. 3-4): before each model evaluation the "
                    "latent takes a gradient step of size `amount` toward the recorded cross-attention maps. "
                    "Sample with the recording's sampler and sigmas.",
        inputs=(Socket("model", "MODEL"), Socket("maps", MAPS_TYPE),
                Float("amount", 0.1, min=0.0, max=100.0, step=0.01,
                      tooltip="Gradient step size (diffusers' cross_attention_guidance_amount).")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, maps: object, amount: float) -> tuple[ModelHandle]:
        from ..sd.pix2pix_zero import pix2pix_zero_patch

        return (model.with_patch(pix2pix_zero_patch(maps, amount)),)  # type: ignore[arg-type]


NODES = (Pix2PixZeroEditDirection, CrossAttentionRecord, Pix2PixZeroGuidance)
