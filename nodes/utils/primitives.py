"""Primitive nodes: one typed value each, to feed a widget converted to a socket (ComfyUI's nodes_primitive)."""

from __future__ import annotations

import sys

from nodegraph import Boolean, Float, Int, Node, NodeContext, NodeSchema, Out, String

_LIMIT = sys.maxsize
"""ComfyUI bounds PrimitiveInt and PrimitiveFloat by ±sys.maxsize (2**63 - 1 on 64-bit Python)."""


class PrimitiveInt(Node):
    schema = NodeSchema(type_id="PrimitiveInt", display_name="Int", category="utils/primitive",
                        description="A whole number, e.g. for a widget converted to a socket.",
                        inputs=(Int("value", 0, min=-_LIMIT, max=_LIMIT, control_after_generate=True),),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: int) -> tuple[int]:
        return (value,)


class PrimitiveFloat(Node):
    schema = NodeSchema(type_id="PrimitiveFloat", display_name="Float", category="utils/primitive",
                        inputs=(Float("value", 0.0, min=-_LIMIT, max=_LIMIT, step=0.1),), outputs=(Out("FLOAT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: float) -> tuple[float]:
        return (value,)


class PrimitiveString(Node):
    schema = NodeSchema(type_id="PrimitiveString", display_name="String", category="utils/primitive",
                        inputs=(String("value"),), outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: str) -> tuple[str]:
        return (value,)


class PrimitiveStringMultiline(Node):
    schema = NodeSchema(type_id="PrimitiveStringMultiline", display_name="String (Multiline)",
                        category="utils/primitive", inputs=(String("value", multiline=True),),
                        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: str) -> tuple[str]:
        return (value,)


class PrimitiveBoolean(Node):
    schema = NodeSchema(type_id="PrimitiveBoolean", display_name="Boolean", category="utils/primitive",
                        inputs=(Boolean("value"),), outputs=(Out("BOOLEAN"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: bool) -> tuple[bool]:
        return (value,)


NODES = (PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean)
