"""Per-image metrics: LPIPS (diversity within a batch or distance to references), CLIP score (image <-> prompt)
and conditional accuracy (the shapes classifier's agreement with the asked class). Each returns a FLOAT that
shows on the node and in the run's outputs."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from nodegraph import Combo, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.models import ModelRef

from ..sd.metrics.text_image import ATTRIBUTES

LPIPS_MODES = ("diversity", "references")


def _held(ref: Any) -> Any:
    return ref.manager.using(ref) if isinstance(ref, ModelRef) else nullcontext([ref])


class LPIPSMetric(Node):
    schema = NodeSchema(
        type_id="MetricLPIPS", display_name="LPIPS", category="evaluation",
        description="LPIPS (Zhang et al. 2018): 'diversity' is the mean distance over all pairs of the batch "
                    "(higher: more varied images); 'references' the mean distance of each image to its reference "
                    "(same index, or one reference for all; lower: closer). Comparable with LPIPS v0.1 figures of "
                    "the same backbone; with the shipped CLIP tower, only with other runs of it.",
        inputs=(Socket("images", "IMAGE"), Socket("lpips_model", "LPIPS_MODEL"), Combo("mode", list(LPIPS_MODES)),
                Socket("references", "IMAGE", optional=True)),
        outputs=(Out("FLOAT", "lpips"),), output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, lpips_model: Any, mode: str,
                references: torch.Tensor | None = None) -> NodeResult:
        from ..sd.metrics.lpips import paired_distance, pairwise_diversity

        pixels = images[..., :3].movedim(-1, 1).float()
        with _held(lpips_model.model_ref) as (network,):
            device = next(network.parameters()).device
            if mode == "diversity":
                value = pairwise_diversity(network, pixels.to(device))
            elif references is None:
                raise ValueError("LPIPS mode 'references' needs the references input wired")
            else:
                wanted = references[..., :3].movedim(-1, 1).float().to(device)
                value = paired_distance(network, pixels.to(device), wanted)
        return NodeResult(outputs=(value,), ui={"text": [f"LPIPS {mode} {value:.4f} ({lpips_model.kind})"]})


class CLIPScore(Node):
    schema = NodeSchema(
        type_id="MetricCLIPScore", display_name="CLIP Score", category="evaluation",
        description="CLIP score (Hessel et al. 2021, torchmetrics' scale): 100 x max(cosine, 0) between each "
                    "image's CLIP embedding and the prompt's, averaged; higher means the image follows the prompt. "
                    "Pair a vision tower with the text encoder it was trained with (OpenAI ViT-L/14 with SD1's, "
                    "the shipped tower with the embedded model's); numbers compare only within that pair.",
        inputs=(Socket("images", "IMAGE"), Socket("clip_vision", "CLIP_VISION"), Socket("clip", "CLIP"),
                String("prompt", "", multiline=True)),
        outputs=(Out("FLOAT", "clip_score"),), output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, clip_vision: Any, clip: Any, prompt: str) -> NodeResult:
        from ..sd.clip_vision import encode_image
        from ..sd.metrics.text_image import clip_score, text_embeddings

        with _held(clip_vision.model_ref) as (tower,):
            image_embeds = encode_image(tower, images).image_embeds
        text = text_embeddings(clip, [prompt], int(image_embeds.shape[-1]))
        value = clip_score(image_embeds, text)
        return NodeResult(outputs=(value,), ui={"text": [f"CLIP score {value:.3f}"]})


class ConditionalAccuracy(Node):
    schema = NodeSchema(
        type_id="MetricConditionalAccuracy", display_name="Conditional Accuracy", category="evaluation",
        description="Fraction (0..1) of images in which the shapes classifier (an analytic one: no learned weights) "
                    "reads what the prompt asks: its shape, foreground colour, background colour, or all it names. "
                    "Meaningful for the embedded shapes model and images like its training data; comparable across "
                    "samplers, steps and seeds of that model.",
        inputs=(Socket("images", "IMAGE"), String("prompt", "", multiline=True), Combo("attribute", list(ATTRIBUTES))),
        outputs=(Out("FLOAT", "accuracy"),), output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, prompt: str, attribute: str) -> NodeResult:
        from ..sd.metrics.text_image import conditional_accuracy

        value = conditional_accuracy(images, [prompt], attribute)
        return NodeResult(outputs=(value,), ui={"text": [f"accuracy ({attribute}) {value:.4f}"]})


NODES = (LPIPSMetric, CLIPScore, ConditionalAccuracy)
