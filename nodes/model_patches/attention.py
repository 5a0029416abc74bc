"""Attention multiply nodes (ComfyUI's "_for_testing/attention_experiments"): scale the q/k/v/out projections of
the UNet's self- or cross-attention, or of the text encoder's self-attention."""

from __future__ import annotations

from nodegraph import Float, Node, NodeContext, NodeSchema, Out, Socket

from nodes.sd.types import ClipHandle, ModelHandle

CATEGORY = "_for_testing/attention_experiments"


def _factors() -> tuple:
    return tuple(Float(name, 1.0, min=0.0, max=10.0, step=0.01) for name in ("q", "k", "v", "out"))


class UNetSelfAttentionMultiply(Node):
    schema = NodeSchema(
        type_id="UNetSelfAttentionMultiply", display_name="UNetSelfAttentionMultiply", category=CATEGORY,
        description="Multiplies the UNet's self-attention (attn1) projections by q, k, v and out.",
        inputs=(Socket("model", "MODEL"), *_factors()), outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, q: float, k: float, v: float,
                out: float) -> tuple[ModelHandle]:
        from nodes.sd.attention_patches import unet_attention_multiply_patch

        return (model.with_patch(unet_attention_multiply_patch("attn1", q, k, v, out)),)


class UNetCrossAttentionMultiply(Node):
    schema = NodeSchema(
        type_id="UNetCrossAttentionMultiply", display_name="UNetCrossAttentionMultiply", category=CATEGORY,
        description="Multiplies the UNet's cross-attention (attn2) projections by q, k, v and out.",
        inputs=(Socket("model", "MODEL"), *_factors()), outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, q: float, k: float, v: float,
                out: float) -> tuple[ModelHandle]:
        from nodes.sd.attention_patches import unet_attention_multiply_patch

        return (model.with_patch(unet_attention_multiply_patch("attn2", q, k, v, out)),)


class CLIPAttentionMultiply(Node):
    schema = NodeSchema(
        type_id="CLIPAttentionMultiply", display_name="CLIPAttentionMultiply", category=CATEGORY,
        description="Multiplies the text encoder's self-attention projections by q, k, v and out.",
        inputs=(Socket("clip", "CLIP"), *_factors()), outputs=(Out("CLIP"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip: ClipHandle, q: float, k: float, v: float,
                out: float) -> tuple[ClipHandle]:
        from nodes.sd.attention_patches import clip_attention_multiply_patch

        return (clip.with_patch(clip_attention_multiply_patch(q, k, v, out)),)


NODES = (UNetSelfAttentionMultiply, UNetCrossAttentionMultiply, CLIPAttentionMultiply)
