"""Primitive and text nodes: values to feed converted widgets, and a text output for model-free workflows."""

from __future__ import annotations

from typing import Any

from nodegraph import Boolean, Float, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.paths import output_prefix_problem, save_new_file

_MAX_INT = 2**63 - 1


class PrimitiveInt(Node):
    schema = NodeSchema(type_id="PrimitiveInt", display_name="Int", category="utils/primitive",
                        description="A whole number, e.g. for a widget converted to a socket.",
                        inputs=(Int("value", 0, min=-_MAX_INT, max=_MAX_INT, control_after_generate=True),),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: int) -> tuple[int]:
        return (value,)


class PrimitiveFloat(Node):
    schema = NodeSchema(type_id="PrimitiveFloat", display_name="Float", category="utils/primitive",
                        inputs=(Float("value", 0.0, min=-1e18, max=1e18),), outputs=(Out("FLOAT"),))

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


class StringConcatenate(Node):
    schema = NodeSchema(type_id="StringConcatenate", display_name="Concatenate", category="utils/string",
                        inputs=(String("string_a", multiline=True), String("string_b", multiline=True),
                                String("delimiter", "")),
                        outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
        return (f"{string_a}{delimiter}{string_b}",)


class SaveText(Node):
    schema = NodeSchema(type_id="SaveText", display_name="Save Text", category="utils/string",
                        description="Writes the text to a new file in the output folder.",
                        inputs=(Socket("text", "STRING"),
                                String("filename_prefix", "nodegraph", check=output_prefix_problem)),
                        output_node=True)

    @classmethod
    def execute(cls, ctx: NodeContext, text: str, filename_prefix: str) -> NodeResult:
        path = save_new_file(ctx.env.output_dir, filename_prefix, "txt", text.encode("utf-8"))
        subfolder = path.parent.relative_to(ctx.env.output_dir.resolve()).as_posix()
        entry: dict[str, Any] = {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                                 "type": "output"}
        return NodeResult(ui={"text": [text], "files": [entry]})


NODES = (PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean,
         StringConcatenate, SaveText)
