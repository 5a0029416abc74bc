"""Guidance nodes: MODEL patches that add semantic guidance (SEGA) or self-attention guidance (SAG).

Both return a new MODEL handle carrying a "guidance" ModelPatch; the input handle and its UNet stay as
they are, so a plain branch from the same checkpoint samples exactly as without guidance.
"""

from __future__ import annotations

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket, String

from nodes.sd.types import ClipHandle, ModelHandle


class SemanticGuidance(Node):
    schema = NodeSchema(
        type_id="SemanticGuidance", display_name="Semantic Guidance (SEGA)", category="model_patches",
        description="Steers the image toward (add) or away from (remove) a concept on top of CFG "
                    "(Brack et al. 2023, arXiv 2301.12247). Chain the node to add more concepts.",
        inputs=(Socket("model", "MODEL"), Socket("clip", "CLIP"),
                String("concept", multiline=True),
                Combo("direction", ("add", "remove")),
                Float("scale", 5.0, min=0.0, max=100.0, step=0.1,
                      tooltip="Strength of the concept's guidance (diffusers' edit_guidance_scale)."),
                Int("warmup_steps", 10, min=0, max=10000,
                    tooltip="Steps before the concept is applied; its momentum builds up meanwhile."),
                Float("threshold", 0.9, min=0.0, max=1.0, step=0.001,
                      tooltip="Quantile of the guidance magnitude dropped: 0.9 keeps the strongest 10%."),
                Float("momentum_scale", 0.1, min=0.0, max=10.0, step=0.01),
                Float("momentum_beta", 0.4, min=0.0, max=1.0, step=0.01),
                Float("edit_weight", 1.0, min=0.0, max=100.0, step=0.01,
                      tooltip="Weight of this concept against the model's other SEGA concepts.")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, concept: str, direction: str,
                scale: float, warmup_steps: int, threshold: float, momentum_scale: float, momentum_beta: float,
                edit_weight: float) -> tuple[ModelHandle]:
        from nodes.sd.sega import Concept, sega_patch
        from nodes.sd.text import encode

        if not concept.strip():
            raise ValueError("SemanticGuidance: the concept text is empty")
        item = Concept(cond=(encode(clip, concept),), reverse=direction == "remove", scale=scale,
                       warmup_steps=warmup_steps, threshold=threshold, momentum_scale=momentum_scale,
                       momentum_beta=momentum_beta, weight=edit_weight)
        return (model.with_patch(sega_patch(item)),)


class SelfAttentionGuidance(Node):
    schema = NodeSchema(
        type_id="SelfAttentionGuidance", display_name="Self-Attention Guidance", category="_for_testing",
        description="Guides away from a copy of the image blurred where the UNet's self-attention is high "
                    "(Hong et al. 2022, arXiv 2210.00939); ComfyUI's node of the same name.",
        inputs=(Socket("model", "MODEL"),
                Float("scale", 0.5, min=-2.0, max=5.0, step=0.01),
                Float("blur_sigma", 2.0, min=0.0, max=10.0, step=0.1)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, scale: float, blur_sigma: float) -> tuple[ModelHandle]:
        from nodes.sd.sag import sag_patch

        return (model.with_patch(sag_patch(scale, blur_sigma)),)


NODES = (SemanticGuidance, SelfAttentionGuidance)
