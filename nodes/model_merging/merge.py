"""ComfyUI's model and CLIP merge nodes (advanced/model_merging): same names, inputs, order and ranges.

Each returns a new handle whose model the model manager derives from model1's (nodes/sd/merging.py holds
the formula: strength_model * w1 + strength_patch * w2 per tensor); nothing loaded is ever changed.
"""

from __future__ import annotations

from typing import Any

from nodegraph import Float, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.merging import MergeRecipe, block_prefixes, merge_clips, merge_models
from ..sd.types import ClipHandle, ModelHandle

CATEGORY = "advanced/model_merging"


def _ratio(name: str) -> Any:
    return Float(name, 1.0, min=0.0, max=1.0, step=0.01)


def _multiplier() -> Any:
    return Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01)


class ModelMergeSimple(Node):
    schema = NodeSchema(
        type_id="ModelMergeSimple", display_name="ModelMergeSimple", category=CATEGORY,
        description="(1 - ratio) * model1 + ratio * model2 on every UNet weight (ratio 1 gives model2's weights).",
        inputs=(Socket("model1", "MODEL"), Socket("model2", "MODEL"), _ratio("ratio")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model1: ModelHandle, model2: ModelHandle, ratio: float) -> tuple[ModelHandle]:
        return (merge_models(model1, model2, MergeRecipe("simple", (("", ratio),))),)


class ModelMergeSubtract(Node):
    schema = NodeSchema(
        type_id="ModelMergeSubtract", display_name="ModelMergeSubtract", category=CATEGORY,
        description="multiplier * (model1 - model2) on every UNet weight: the difference LoraSave extracts.",
        inputs=(Socket("model1", "MODEL"), Socket("model2", "MODEL"), _multiplier()),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model1: ModelHandle, model2: ModelHandle,
                multiplier: float) -> tuple[ModelHandle]:
        return (merge_models(model1, model2, MergeRecipe("subtract", (("", multiplier),))),)


class ModelMergeAdd(Node):
    schema = NodeSchema(
        type_id="ModelMergeAdd", display_name="ModelMergeAdd", category=CATEGORY,
        description="model1 + model2 on every UNet weight (add back a difference ModelMergeSubtract made).",
        inputs=(Socket("model1", "MODEL"), Socket("model2", "MODEL")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model1: ModelHandle, model2: ModelHandle) -> tuple[ModelHandle]:
        return (merge_models(model1, model2, MergeRecipe("add")),)


def _block_merge(model1: ModelHandle, model2: ModelHandle, names: tuple[str, ...], ratios: dict[str, float]) -> ModelHandle:
    """A block merge: each input is a ratio for the weights whose LDM names start with the input's name."""
    missing = [name for name in names if name not in ratios]
    if missing:
        raise ValueError(f"block merge: no ratio given for {', '.join(missing)}")
    return merge_models(model1, model2, MergeRecipe("blocks", tuple((name, float(ratios[name])) for name in names)))


class ModelMergeBlocks(Node):
    BLOCKS = ("input", "middle", "out")
    schema = NodeSchema(
        type_id="ModelMergeBlocks", display_name="ModelMergeBlocks", category=CATEGORY,
        description="A ratio for the input blocks, the middle block and the output blocks (the input ratio "
                    "also covers time and label embeddings).",
        inputs=(Socket("model1", "MODEL"), Socket("model2", "MODEL"), *(_ratio(name) for name in BLOCKS)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model1: ModelHandle, model2: ModelHandle, **ratios: float) -> tuple[ModelHandle]:
        return (_block_merge(model1, model2, cls.BLOCKS, ratios),)


def _specific(type_id: str, family: str, blocks: tuple[str, ...]) -> type[Node]:
    """ModelMergeSD1 / SD2 / SDXL: a ratio per LDM block (time and label embeddings, each input, middle and
    output block, the final `out.` layers); weights under no block take the first ratio (time_embed.)."""

    class SpecificMerge(Node):
        BLOCKS = blocks
        schema = NodeSchema(
            type_id=type_id, display_name=type_id, category=f"{CATEGORY}/model_specific",
            description=f"Merge two {family.upper()} UNets with a ratio per block.",
            inputs=(Socket("model1", "MODEL"), Socket("model2", "MODEL"), *(_ratio(name) for name in blocks)),
            outputs=(Out("MODEL"),),
        )

        @classmethod
        def execute(cls, ctx: NodeContext, model1: ModelHandle, model2: ModelHandle,
                    **ratios: float) -> tuple[ModelHandle]:
            return (_block_merge(model1, model2, cls.BLOCKS, ratios),)

    SpecificMerge.__name__ = SpecificMerge.__qualname__ = type_id
    return SpecificMerge


ModelMergeSD1 = _specific("ModelMergeSD1", "sd1", block_prefixes("sd1"))
ModelMergeSD2 = _specific("ModelMergeSD2", "sd2", block_prefixes("sd2"))
ModelMergeSDXL = _specific("ModelMergeSDXL", "sdxl", block_prefixes("sdxl"))


class CLIPMergeSimple(Node):
    schema = NodeSchema(
        type_id="CLIPMergeSimple", display_name="CLIPMergeSimple", category=CATEGORY,
        description="(1 - ratio) * clip1 + ratio * clip2 on every text-encoder weight.",
        inputs=(Socket("clip1", "CLIP"), Socket("clip2", "CLIP"), _ratio("ratio")),
        outputs=(Out("CLIP"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip1: ClipHandle, clip2: ClipHandle, ratio: float) -> tuple[ClipHandle]:
        return (merge_clips(clip1, clip2, MergeRecipe("simple", (("", ratio),))),)


class CLIPMergeSubtract(Node):
    schema = NodeSchema(
        type_id="CLIPMergeSubtract", display_name="CLIPMergeSubtract", category=CATEGORY,
        description="multiplier * (clip1 - clip2) on every text-encoder weight.",
        inputs=(Socket("clip1", "CLIP"), Socket("clip2", "CLIP"), _multiplier()),
        outputs=(Out("CLIP"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip1: ClipHandle, clip2: ClipHandle, multiplier: float) -> tuple[ClipHandle]:
        return (merge_clips(clip1, clip2, MergeRecipe("subtract", (("", multiplier),))),)


class CLIPMergeAdd(Node):
    schema = NodeSchema(
        type_id="CLIPMergeAdd", display_name="CLIPMergeAdd", category=CATEGORY,
        description="clip1 + clip2 on every text-encoder weight.",
        inputs=(Socket("clip1", "CLIP"), Socket("clip2", "CLIP")),
        outputs=(Out("CLIP"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip1: ClipHandle, clip2: ClipHandle) -> tuple[ClipHandle]:
        return (merge_clips(clip1, clip2, MergeRecipe("add")),)


NODES = (ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, ModelMergeSD1, ModelMergeSD2,
         ModelMergeSDXL, CLIPMergeSimple, CLIPMergeSubtract, CLIPMergeAdd)
