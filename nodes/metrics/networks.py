"""Loaders of the metric networks: FID's Inception-v3, LPIPS, and a CLIP vision tower as a feature model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out, Socket, String
from nodegraph.models import ModelRef, resolve

from ..loaders import _file_fingerprint, _folder
from ..sd.metrics.features import FeatureModel, clip_vision_feature_model, load_fid_inception

INCEPTION_FOLDER = "inception"
LPIPS_FOLDER = "lpips"
_COLOURS = "a red|an orange|a yellow|a green|a cyan|a blue|a purple|a pink|a white|a black"
SHAPES_CLASS_PROMPTS = f"{{{_COLOURS}}} {{circle|square|triangle|star|ring}} on {{{_COLOURS}}} background"
"""The embedded model's captions as class prompts (500: every foreground and background colour, every shape)."""


@dataclass(frozen=True)
class LpipsHandle:
    """LPIPS_MODEL: the manager's ref to an LPIPS network (or the shipped tower's uncalibrated distance)."""

    model_ref: ModelRef | torch.nn.Module
    kind: str
    """"vgg", "alex" (LPIPS proper) or "clip_vision" (LPIPS's formula on a CLIP tower, equal layer weights)."""

    @property
    def model(self) -> torch.nn.Module:
        return resolve(self.model_ref)


class FIDInceptionLoader(Node):
    schema = NodeSchema(
        type_id="FIDInceptionLoader", display_name="Load FID Inception", category="evaluation/loaders",
        description="Loads FID's Inception-v3 from the `inception` models folder, as pytorch-fid stores it "
                    "(pt_inception-2015-12-05-*.pth). FID, KID, IS and precision/recall from it are comparable with "
                    "published figures computed with the same weights at the same image count.",
        inputs=(Combo("inception_name", _folder(INCEPTION_FOLDER)),),
        outputs=(Out("FEATURE_MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, inception_name: str) -> tuple[FeatureModel]:
        path = ctx.env.models.resolve(INCEPTION_FOLDER, inception_name)
        return (load_fid_inception(path, manager=ctx.env.manager),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, inception_name: str) -> Any:
        return _file_fingerprint(ctx, INCEPTION_FOLDER, inception_name)


class CLIPVisionFeatureModel(Node):
    schema = NodeSchema(
        type_id="CLIPVisionFeatureModel", display_name="CLIP Vision as Feature Model", category="evaluation/loaders",
        description="Uses a CLIP vision tower's image embedding as the features of FID/KID/precision-recall, and "
                    "(with a CLIP text encoder) its zero-shot class probabilities over the class prompts (one per "
                    "line, {a|b} alternatives expanded) for the Inception Score. With the shipped tiny tower and "
                    "the embedded model this is the out-of-the-box variant: its numbers compare only with numbers "
                    "from the same tower and class prompts, never with Inception figures.",
        inputs=(Socket("clip_vision", "CLIP_VISION"), String("class_prompts", SHAPES_CLASS_PROMPTS, multiline=True),
                Socket("clip", "CLIP", optional=True)),
        outputs=(Out("FEATURE_MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip_vision: Any, class_prompts: str, clip: Any = None,
                ) -> tuple[FeatureModel]:
        from ..sd.metrics.text_image import expand_prompts, text_embeddings

        prompts = tuple(expand_prompts(class_prompts)) if clip is not None else ()
        if not prompts:
            return (clip_vision_feature_model(clip_vision),)
        width = int(clip_vision.model.config.projection_dim)
        embeds = text_embeddings(clip, list(prompts), width)
        return (clip_vision_feature_model(clip_vision, embeds, prompts),)


class LPIPSLoader(Node):
    schema = NodeSchema(
        type_id="LPIPSLoader", display_name="Load LPIPS", category="evaluation/loaders",
        description="Loads an LPIPS network from the `lpips` models folder in the lpips package's layout (VGG-16 or "
                    "AlexNet backbone + lin0..lin4 heads): numbers comparable with LPIPS v0.1 figures of the same "
                    "backbone. The shipped CLIP vision tower listed there gives LPIPS's formula on its layers with "
                    "equal weights: it ranks pairs by perceptual change but compares only with itself.",
        inputs=(Combo("lpips_name", _folder(LPIPS_FOLDER)),),
        outputs=(Out("LPIPS_MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, lpips_name: str) -> tuple[LpipsHandle]:
        from ..sd.loading.files import file_signature, read_weights
        from ..sd.metrics.lpips import TowerDistance, build_lpips

        path = ctx.env.models.resolve(LPIPS_FOLDER, lpips_name)
        what = f"LPIPS file {path.name}"

        def load(device: str) -> torch.nn.Module:
            data, metadata = read_weights(path)
            if any(k.startswith(("vision_model.", "visual.")) or ".vision_model." in k for k in data):
                from ..sd.clip_vision import _file_overrides, build_vision_model

                return TowerDistance(build_vision_model(data, what, _file_overrides(metadata, what))).to(device)
            return build_lpips(data, what).to(device)

        ref = ctx.env.manager.ref((file_signature(path), "lpips"), load, name=f"{path.name} LPIPS")
        model = ref.get()
        kind = "clip_vision" if isinstance(model, TowerDistance) else model.net.kind
        return (LpipsHandle(model_ref=ref, kind=kind),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, lpips_name: str) -> Any:
        return _file_fingerprint(ctx, LPIPS_FOLDER, lpips_name)


NODES = (FIDInceptionLoader, CLIPVisionFeatureModel, LPIPSLoader)
