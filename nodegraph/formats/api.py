"""ComfyUI's API format (what `/prompt` takes): `{id: {class_type, inputs, _meta?}}`, links as `[id, slot]`."""

from __future__ import annotations

from typing import Any

from ..errors import REQUIRED_INPUT_MISSING, ValidationIssue
from ..registry import NodeRegistry
from ..validation import resolve_modes
from ..workflow import Link, NodeInstance, Workflow, WorkflowFormatError


def is_api_format(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(node, dict) and "class_type" in node for node in data.values()))


def is_link(value: Any) -> bool:
    """ComfyUI's rule: a two-item list of a node id and an output slot."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def from_api(prompt: dict[str, Any], source: str = "prompt") -> Workflow:
    """Our native workflow from an API-format prompt; unknown node types are kept for validation to report."""
    nodes: dict[str, NodeInstance] = {}
    links: list[Link] = []
    for raw_id, node in prompt.items():
        node_id = str(raw_id)
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise WorkflowFormatError(f"{source}: node {node_id} has no class_type")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowFormatError(f"{source}: node {node_id} ({class_type}): inputs must be an object")
        widgets: dict[str, Any] = {}
        for name, value in inputs.items():
            if is_link(value):
                if value[1] < 0:
                    raise WorkflowFormatError(f"{source}: node {node_id} input {name!r}: negative slot {value[1]}")
                links.append(Link(from_node=str(value[0]), from_slot=value[1], to_node=node_id, to_input=name))
            elif isinstance(value, dict) and "__value__" in value:
                widgets[name] = value["__value__"]
            else:
                widgets[name] = value
        meta = node.get("_meta") or {}
        title = meta.get("title") if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or not isinstance(title, (str, type(None))):
            raise WorkflowFormatError(f"{source}: node {node_id} ({class_type}): _meta must be an object whose "
                                      f"title is a string, got {meta!r:.80}")
        nodes[node_id] = NodeInstance(type=class_type, widgets=widgets, title=title)
    return Workflow(nodes=nodes, links=links)


def missing_values(workflow: Workflow, registry: NodeRegistry) -> list[ValidationIssue]:
    """ComfyUI's rule for API prompts: every required widget has a value or a link, and null is no value.

    A client's typo (`"widht"`) or a dropped input must not run silently with a default; our native format
    fills declared defaults instead. Use on a workflow read by `from_api`.
    """
    linked = workflow.links_into()
    issues = []
    for node_id, node in workflow.nodes.items():
        node_cls = registry.get(node.type)
        if node_cls is None:
            continue  # reported as a missing node type
        for spec in node_cls.schema.inputs:
            if (spec.is_widget and not spec.optional and (node_id, spec.name) not in linked
                    and node.widgets.get(spec.name) is None):
                given = "is null" if spec.name in node.widgets else "is not given"
                issues.append(ValidationIssue(type=REQUIRED_INPUT_MISSING, message="Required input is missing",
                                              details=f"{spec.name} ({spec.type}) {given}", node_id=node_id,
                                              class_type=node.type, input_name=spec.name))
    return issues


def to_api(workflow: Workflow, registry: NodeRegistry) -> dict[str, Any]:
    """The API-format prompt of a workflow: muted nodes dropped, bypassed ones wired through."""
    workflow = resolve_modes(workflow, registry)
    prompt: dict[str, Any] = {}
    incoming = workflow.links_into()
    for node_id, node in workflow.nodes.items():
        inputs: dict[str, Any] = {}
        node_cls = registry.get(node.type)
        names = [spec.name for spec in node_cls.schema.inputs] if node_cls else list(node.widgets)
        for name in [*names, *(n for n in node.widgets if n not in names)]:
            linked = incoming.get((node_id, name))
            if linked:
                inputs[name] = [linked[0].from_node, linked[0].from_slot]
            elif name in node.widgets:
                value = node.widgets[name]
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
        entry: dict[str, Any] = {"class_type": node.type, "inputs": inputs}
        entry["_meta"] = {"title": node.title or (node_cls.schema.display_name if node_cls else node.type)}
        prompt[node_id] = entry
    return prompt
