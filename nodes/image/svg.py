"""SVG saving (image/save): SVG documents written to the output folder with the workflow in their metadata.

The SVG socket carries `SvgDocuments`, a frozen tuple of documents as text (ComfyUI's SVG type holds the same as
byte streams). Files go through `files.save_output`, like every saved image: prefix checked, atomic, no overwrite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nodegraph import Node, NodeContext, NodeResult, NodeSchema, Socket, String
from nodegraph.paths import output_prefix_problem

from .files import extra_info, save_output


@dataclass(frozen=True)
class SvgDocuments:
    """The SVG socket's payload: one or more SVG documents as text, one per picture of a batch."""

    documents: tuple[str, ...]


def svg_with_metadata(document: str, metadata: dict[str, Any]) -> str:
    """The document with a `<metadata>` element holding the JSON (in CDATA) right after its opening `<svg>` tag,
    where ComfyUI puts it; a "]]>" inside the JSON is split across two CDATA sections so it cannot end one early."""
    if not metadata:
        return document
    payload = json.dumps(metadata, indent=2).replace("]]>", "]]]]><![CDATA[>")
    start = document.find("<svg")
    end = document.find(">", start) if start >= 0 else -1
    if end < 0:
        return document
    element = f"\n  <metadata><![CDATA[\n{payload}\n]]></metadata>"
    return document[: end + 1] + element + document[end + 1:]


class SaveSVGNode(Node):
    schema = NodeSchema(
        type_id="SaveSVGNode", display_name="SaveSVGNode", category="image/save",
        description="Saves SVG documents to the output folder, the workflow in their metadata.",
        inputs=(Socket("svg", "SVG"),
                String("filename_prefix", "svg/ComfyUI", check=output_prefix_problem,
                       tooltip="Name prefix of the saved files; may start with sub-folders of the output folder.")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, svg: SvgDocuments, filename_prefix: str) -> NodeResult:
        metadata = {"prompt": ctx.metadata["prompt"]} if ctx.metadata.get("prompt") is not None else {}
        metadata.update(extra_info(ctx))
        saved = [save_output(ctx.env.output_dir, filename_prefix, "svg",
                             svg_with_metadata(document, metadata).encode("utf-8"), "output")
                 for document in svg.documents]
        return NodeResult(ui={"images": saved})


NODES = (SaveSVGNode,)
