"""LATENT_OPERATION nodes: an operation is a frozen, hashable payload (nodes/sd/latent_ops.py) applied to a
latent directly, or to every sampling step's guidance direction through a MODEL patch."""

from __future__ import annotations

from dataclasses import replace

from nodegraph import Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.latent_ops import LatentOperation, Sharpen, TonemapReinhard, operation_cfg_patch
from ..sd.types import Latent, ModelHandle

CATEGORY = "latent/advanced/operations"


class LatentApplyOperation(Node):
    schema = NodeSchema(
        type_id="LatentApplyOperation", display_name="LatentApplyOperation", category=CATEGORY,
        inputs=(Socket("samples", "LATENT"), Socket("operation", "LATENT_OPERATION")),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, operation: LatentOperation) -> tuple[Latent]:
        return (replace(samples, samples=operation(samples.samples)),)


class LatentApplyOperationCFG(Node):
    schema = NodeSchema(
        type_id="LatentApplyOperationCFG", display_name="LatentApplyOperationCFG", category=CATEGORY,
        description="Applies the operation to cond - uncond at every sampling step, before CFG scales it.",
        inputs=(Socket("model", "MODEL"), Socket("operation", "LATENT_OPERATION")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, operation: LatentOperation) -> tuple[ModelHandle]:
        return (model.with_patch(operation_cfg_patch(operation)),)


class LatentOperationTonemapReinhard(Node):
    schema = NodeSchema(
        type_id="LatentOperationTonemapReinhard", display_name="LatentOperationTonemapReinhard", category=CATEGORY,
        description="Compresses large latent magnitudes with Reinhard's curve (white point scaled by multiplier).",
        inputs=(Float("multiplier", 1.0, min=0.0, max=100.0, step=0.01),),
        outputs=(Out("LATENT_OPERATION"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, multiplier: float) -> tuple[LatentOperation]:
        return (TonemapReinhard(float(multiplier)),)


class LatentOperationSharpen(Node):
    schema = NodeSchema(
        type_id="LatentOperationSharpen", display_name="LatentOperationSharpen", category=CATEGORY,
        description="Unsharp-masks the latent's directions with a Gaussian of the given radius and sigma.",
        inputs=(Int("sharpen_radius", 9, min=1, max=31, step=1),
                Float("sigma", 1.0, min=0.1, max=10.0, step=0.1),
                Float("alpha", 0.1, min=0.0, max=5.0, step=0.01)),
        outputs=(Out("LATENT_OPERATION"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, sharpen_radius: int, sigma: float, alpha: float) -> tuple[LatentOperation]:
        return (Sharpen(int(sharpen_radius), float(sigma), float(alpha)),)


NODES = (LatentApplyOperation, LatentApplyOperationCFG, LatentOperationTonemapReinhard, LatentOperationSharpen)
