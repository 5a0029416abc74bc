"""PreviewAny: shows any upstream value as text in the editor (ComfyUI's "Preview as Text")."""

from __future__ import annotations

import json
from typing import Any

import torch

from nodegraph import Node, NodeContext, NodeResult, NodeSchema, Out, Socket
from nodegraph.schema import ANY_TYPE


def value_as_text(value: Any) -> str:
    """ComfyUI's rendering: text as is, numbers and booleans with str(), JSON (indented 4) for what JSON can
    hold, else Python's repr of the object (tensors with 6 edge items a side)."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    try:
        return json.dumps(value, indent=4)
    except (TypeError, ValueError):
        pass
    torch.set_printoptions(edgeitems=6)
    try:
        return str(value)
    except Exception:
        return "source exists, but could not be serialized."
    finally:
        torch.set_printoptions(profile="default")


class PreviewAny(Node):
    schema = NodeSchema(type_id="PreviewAny", display_name="Preview as Text", category="utilities",
                        description="Shows any value as text in the editor and passes that text on.",
                        inputs=(Socket("source", ANY_TYPE),), outputs=(Out("STRING"),), output_node=True)

    @classmethod
    def execute(cls, ctx: NodeContext, source: Any) -> NodeResult:
        text = value_as_text(source)
        return NodeResult(outputs=(text,), ui={"text": [text]})


NODES = (PreviewAny,)
