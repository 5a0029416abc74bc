"""Latent arithmetic (ComfyUI's nodes_latent): add, subtract, multiply, interpolate, concatenate, cut.

The second latent of a pair is resized to the first's size and repeated or cut to its batch first.
"""

from __future__ import annotations

from dataclasses import replace

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd import latent_ops
from ..sd.types import Latent

MAX_RESOLUTION = 16384
CONCAT_DIMS = ("x", "-x", "y", "-y", "t", "-t")
CUT_DIMS = ("x", "y", "t")


def _pair_schema(type_id: str, description: str) -> NodeSchema:
    return NodeSchema(type_id=type_id, display_name=type_id, category="latent/advanced", description=description,
                      inputs=(Socket("samples1", "LATENT"), Socket("samples2", "LATENT")), outputs=(Out("LATENT"),))


class LatentAdd(Node):
    schema = _pair_schema("LatentAdd", "samples1 + samples2.")

    @classmethod
    def execute(cls, ctx: NodeContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first = samples1.samples
        return (replace(samples1, samples=first + latent_ops.reshape_like(first, samples2.samples)),)


class LatentSubtract(Node):
    schema = _pair_schema("LatentSubtract", "samples1 - samples2.")

    @classmethod
    def execute(cls, ctx: NodeContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first = samples1.samples
        return (replace(samples1, samples=first - latent_ops.reshape_like(first, samples2.samples)),)


class LatentMultiply(Node):
    schema = NodeSchema(
        type_id="LatentMultiply", display_name="LatentMultiply", category="latent/advanced",
        inputs=(Socket("samples", "LATENT"), Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, multiplier: float) -> tuple[Latent]:
        return (replace(samples, samples=samples.samples * multiplier),)


class LatentInterpolate(Node):
    schema = NodeSchema(
        type_id="LatentInterpolate", display_name="LatentInterpolate", category="latent/advanced",
        description="Per pixel, mixes the latent vectors' directions and lengths separately (ratio 1 = samples1).",
        inputs=(Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
                Float("ratio", 1.0, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples1: Latent, samples2: Latent, ratio: float) -> tuple[Latent]:
        return (replace(samples1, samples=latent_ops.interpolate(samples1.samples, samples2.samples, ratio)),)


class LatentConcat(Node):
    schema = NodeSchema(
        type_id="LatentConcat", display_name="LatentConcat", category="latent/advanced",
        description="Joins two latents side by side (x), one above the other (y), or along t; '-' puts "
                    "samples2 first.",
        inputs=(Socket("samples1", "LATENT"), Socket("samples2", "LATENT"), Combo("dim", CONCAT_DIMS)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples1: Latent, samples2: Latent, dim: str) -> tuple[Latent]:
        if dim not in CONCAT_DIMS:
            raise ValueError(f"LatentConcat: dim {dim!r} is not one of {CONCAT_DIMS}")
        return (replace(samples1, samples=latent_ops.concat(samples1.samples, samples2.samples, dim)),)


class LatentCut(Node):
    schema = NodeSchema(
        type_id="LatentCut", display_name="LatentCut", category="latent/advanced",
        description="amount latent pixels from index (negative counts from the end) along x, y or t.",
        inputs=(Socket("samples", "LATENT"), Combo("dim", CUT_DIMS),
                Int("index", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
                Int("amount", 1, min=1, max=MAX_RESOLUTION, step=1)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, dim: str, index: int, amount: int) -> tuple[Latent]:
        if dim not in CUT_DIMS:
            raise ValueError(f"LatentCut: dim {dim!r} is not one of {CUT_DIMS}")
        return (replace(samples, samples=latent_ops.cut(samples.samples, dim, index, amount)),)


NODES = (LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentConcat, LatentCut)
