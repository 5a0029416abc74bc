"""The native workflow format: versioned JSON, widget values by name, links as (node, slot) -> (node, input).

Editor state (titles, positions, sizes, groups, colours) is kept so a load/save round trip loses nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_NAME = "nodegraph"
FORMAT_VERSION = 1

NodeMode = Literal["always", "never", "bypass"]
"""`never` (ComfyUI's mode 2, muted) does not run; `bypass` (mode 4) passes inputs through by type."""


class Link(BaseModel):
    model_config = ConfigDict(frozen=True)

    from_node: str
    from_slot: int = Field(ge=0)
    to_node: str
    to_input: str


class NodeInstance(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    widgets: dict[str, Any] = Field(default_factory=dict)
    title: str | None = None
    pos: tuple[float, float] | None = None
    size: tuple[float, float] | None = None
    mode: NodeMode = "always"
    collapsed: bool = False
    color: str | None = None
    converted_widgets: list[str] = Field(default_factory=list)
    """Widgets the editor shows as sockets; their value comes from a link when one is connected."""


class Group(BaseModel):
    model_config = ConfigDict(extra="allow")

    title: str = "Group"
    bounding: tuple[float, float, float, float] = (0.0, 0.0, 300.0, 200.0)
    color: str | None = None


class Workflow(BaseModel):
    """A whole graph as saved on disk and sent by the editor."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    """NaN stays NaN in `model_dump_json` (the plan memo's key), never null: a value left to its default."""

    format: Literal["nodegraph"] = FORMAT_NAME
    version: int = FORMAT_VERSION
    nodes: dict[str, NodeInstance] = Field(default_factory=dict)
    links: list[Link] = Field(default_factory=list)
    groups: list[Group] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    def links_into(self) -> dict[tuple[str, str], list[Link]]:
        """Links grouped by their (to node, to input)."""
        grouped: dict[tuple[str, str], list[Link]] = {}
        for link in self.links:
            grouped.setdefault((link.to_node, link.to_input), []).append(link)
        return grouped

    def with_widget(self, node_id: str, name: str, value: Any) -> Workflow:
        """A copy with one widget value changed (the original is left as it was)."""
        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id!r} in the workflow (nodes: {', '.join(sorted(self.nodes)[:20])})")
        nodes = dict(self.nodes)
        node = nodes[node_id]
        nodes[node_id] = node.model_copy(update={"widgets": {**node.widgets, name: value}})
        return self.model_copy(update={"nodes": nodes})


class WorkflowFormatError(ValueError):
    """The file is not a workflow we can read; the message says where and why."""


def parse_workflow(data: Any, source: str = "workflow") -> Workflow:
    if not isinstance(data, dict):
        raise WorkflowFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") not in (None, FORMAT_NAME):
        raise WorkflowFormatError(f"{source}: format {data.get('format')!r} is not {FORMAT_NAME!r}")
    version = data.get("version", FORMAT_VERSION)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise WorkflowFormatError(f"{source}: version {version} is newer than this nodegraph reads ({FORMAT_VERSION})")
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise WorkflowFormatError(f"{source}: not a valid nodegraph workflow: {problems}") from None


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowFormatError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return parse_workflow(data, str(path))


def dump_workflow(workflow: Workflow) -> dict[str, Any]:
    return workflow.model_dump(mode="json", exclude_defaults=False)


def save_workflow(workflow: Workflow, path: str | os.PathLike[str]) -> None:
    """Write atomically: a crash mid-write never leaves a half-written file."""
    path = Path(path)
    text = json.dumps(dump_workflow(workflow), indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
