"""Whole-graph validation: every problem is collected before anything runs, each naming node and input."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import networkx as nx

from . import errors as E
from .errors import ValidationFailed, ValidationIssue
from .plan import CompiledGraph, CompiledNode, id_sort_key
from .registry import NodeRegistry
from .schema import ANY_TYPE, LINKABLE_INTO_WIDGET, InputSpec, NodeSchema
from .workflow import Link, Workflow

_JSON_TYPES = {"INT": "an integer", "FLOAT": "a number", "STRING": "a string", "BOOLEAN": "true or false",
               "COMBO": "a string"}


def resolve_modes(workflow: Workflow, registry: NodeRegistry) -> Workflow:
    """Drop muted nodes and wire bypassed ones through, as ComfyUI's editor does before queueing.

    A bypassed node's output takes the first linked input of the same type; with none, links
    from that output are dropped (so a required input downstream is reported missing).
    """
    disabled = {nid for nid, node in workflow.nodes.items() if node.mode != "always"}
    if not disabled:
        return workflow
    incoming = workflow.links_into()

    def passthrough(node_id: str, slot: int) -> tuple[str, int] | None:
        seen: set[tuple[str, int]] = set()
        while node_id in disabled:
            if (node_id, slot) in seen or workflow.nodes[node_id].mode == "never":
                return None
            seen.add((node_id, slot))
            node_cls = registry.get(workflow.nodes[node_id].type)
            if node_cls is None or slot >= len(node_cls.schema.outputs):
                return None
            wanted = node_cls.schema.outputs[slot].type
            source = None
            for spec in node_cls.schema.inputs:
                links = incoming.get((node_id, spec.name))
                if spec.type == wanted and links:
                    source = (links[0].from_node, links[0].from_slot)
                    break
            if source is None:
                return None
            node_id, slot = source
        return node_id, slot

    links = []
    for link in workflow.links:
        if link.to_node in disabled:
            continue
        source = passthrough(link.from_node, link.from_slot)
        if source is not None:
            links.append(Link(from_node=source[0], from_slot=source[1], to_node=link.to_node, to_input=link.to_input))
    nodes = {nid: node for nid, node in workflow.nodes.items() if nid not in disabled}
    return workflow.model_copy(update={"nodes": nodes, "links": links})


def check_value(spec: InputSpec, value: Any, env: Any) -> tuple[Any, ValidationIssue | None]:
    """Check (and normalise, e.g. 3.0 -> 3 for INT) one widget value; return (value, issue or None)."""
    t = spec.type
    bad_type = ValidationIssue(type=E.INVALID_INPUT_TYPE, message=f"Failed to convert an input value to a {t} value",
                               details=f"{spec.name}, {value!r}: expected {_JSON_TYPES[t]}",
                               input_name=spec.name, received_value=value)
    if t == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, bad_type
        if isinstance(value, float):
            if not value.is_integer():
                return value, bad_type
            value = int(value)
    elif t == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return value, bad_type
        value = float(value)
    elif t == "BOOLEAN":
        if not isinstance(value, bool):
            return value, bad_type
    elif t in ("STRING", "COMBO"):
        if not isinstance(value, str):
            return value, bad_type
    if t in ("INT", "FLOAT"):
        if spec.min is not None and value < spec.min:
            return value, ValidationIssue(type=E.VALUE_SMALLER_THAN_MIN, message=f"Value {value} smaller than min of {spec.min}",
                                          details=f"{spec.name}", input_name=spec.name, received_value=value)
        if spec.max is not None and value > spec.max:
            return value, ValidationIssue(type=E.VALUE_BIGGER_THAN_MAX, message=f"Value {value} bigger than max of {spec.max}",
                                          details=f"{spec.name}", input_name=spec.name, received_value=value)
    if t == "COMBO":
        options = spec.resolve_options(env)
        if value not in options:
            shown = ", ".join(repr(option) for option in options[:20]) + (", ..." if len(options) > 20 else "")
            return value, ValidationIssue(type=E.VALUE_NOT_IN_LIST, message="Value not in list",
                                          details=f"{spec.name}: {value!r} not in [{shown}]",
                                          input_name=spec.name, received_value=value,
                                          extra={"options": options[:200]})
    problem = spec.check(value, env) if spec.check is not None else None
    if problem:
        return value, ValidationIssue(type=E.CUSTOM_VALIDATION_FAILED, message=f"Invalid {spec.name}",
                                      details=f"{spec.name}: {value!r} {problem}", input_name=spec.name,
                                      received_value=value)
    return value, None


def compile_workflow(workflow: Workflow, registry: NodeRegistry, env: Any = None,
                     outputs: Sequence[str] | None = None) -> CompiledGraph:
    """Validate the whole workflow and return it ready to run, or raise `ValidationFailed` listing every issue."""
    workflow = resolve_modes(workflow, registry)
    issues: list[ValidationIssue] = []
    graph = nx.DiGraph()
    schemas: dict[str, NodeSchema] = {}

    for node_id, node in workflow.nodes.items():
        graph.add_node(node_id)
        node_cls = registry.get(node.type)
        if node_cls is None:
            issues.append(ValidationIssue(type=E.MISSING_NODE_TYPE, message=f"Node type {node.type!r} not found",
                                          details="the node pack that provides it may not be installed",
                                          node_id=node_id, class_type=node.type))
        else:
            schemas[node_id] = node_cls.schema

    links: dict[str, dict[str, tuple[str, int]]] = {nid: {} for nid in workflow.nodes}
    bad_links: dict[str, set[str]] = {nid: set() for nid in workflow.nodes}
    for (to_node, to_input), group in workflow.links_into().items():
        issue = _check_link(workflow, schemas, group, to_node, to_input)
        if issue is not None:
            issues.append(issue)
            bad_links.get(to_node, set()).add(to_input)  # reported once, not again as missing
            continue
        link = group[0]
        links[to_node][to_input] = (link.from_node, link.from_slot)
        graph.add_edge(link.from_node, to_node)

    compiled: dict[str, CompiledNode] = {}
    for node_id, schema in schemas.items():
        widgets, node_issues = _check_node_inputs(schema, workflow.nodes[node_id].widgets, links[node_id],
                                                  bad_links[node_id], env)
        for issue in node_issues:
            issues.append(issue.model_copy(update={"node_id": node_id, "class_type": schema.type_id}))
        compiled[node_id] = CompiledNode(id=node_id, node_cls=registry[schema.type_id], widgets=widgets,
                                         links=links[node_id])

    issues.extend(_cycle_issues(graph, workflow))
    chosen, output_issues = _choose_outputs(schemas, set(workflow.nodes), outputs)
    issues.extend(output_issues)
    if issues:
        issues.sort(key=lambda i: (id_sort_key(i.node_id) if i.node_id else (-1, 0, ""), i.input_name or ""))
        raise ValidationFailed(issues)
    return CompiledGraph(nodes=compiled, graph=graph, outputs=chosen)


def check_dynamic_options(graph: CompiledGraph, env: Any) -> None:
    """Re-check COMBO values whose options come from the environment (files may have gone since)."""
    issues = []
    for node in graph.nodes.values():
        for name, value in node.widgets.items():
            spec = node.schema.input_map[name]
            if spec.type == "COMBO" and callable(spec.options):
                _, issue = check_value(spec, value, env)
                if issue is not None:
                    issues.append(issue.model_copy(update={"node_id": node.id, "class_type": node.type_id}))
    if issues:
        raise ValidationFailed(issues)


def validate_workflow(workflow: Workflow, registry: NodeRegistry, env: Any = None,
                      outputs: Sequence[str] | None = None) -> list[ValidationIssue]:
    try:
        compile_workflow(workflow, registry, env, outputs)
    except ValidationFailed as failed:
        return failed.issues
    return []


def _check_link(workflow: Workflow, schemas: dict[str, NodeSchema], group: list[Link], to_node: str,
                to_input: str) -> ValidationIssue | None:
    target = schemas.get(to_node)
    link = group[0]
    where = {"node_id": to_node, "input_name": to_input, "received_value": [link.from_node, link.from_slot]}
    if to_node not in workflow.nodes:
        return ValidationIssue(type=E.BAD_LINKED_INPUT, message=f"Link into node {to_node!r}, which does not exist",
                               details=f"from node {link.from_node} slot {link.from_slot}", **where)
    if target is None:
        return None  # the node's missing type is already reported
    where["class_type"] = target.type_id
    spec = target.input(to_input)
    if spec is None:
        return ValidationIssue(type=E.UNKNOWN_INPUT, message=f"{target.type_id} has no input {to_input!r}",
                               details=f"inputs are {[s.name for s in target.inputs]}", **where)
    if len(group) > 1:
        sources = [[other.from_node, other.from_slot] for other in group]
        return ValidationIssue(type=E.BAD_LINKED_INPUT, message="More than one link into one input",
                               details=f"links from {sources}", **where)
    if link.from_node not in workflow.nodes:
        return ValidationIssue(type=E.BAD_LINKED_INPUT, message=f"Linked node {link.from_node!r} does not exist",
                               details=f"slot {link.from_slot}", **where)
    source = schemas.get(link.from_node)
    if source is None:
        return None
    if link.from_slot >= len(source.outputs):
        return ValidationIssue(type=E.BAD_LINKED_INPUT, message=f"Node {link.from_node} ({source.type_id}) has no output slot {link.from_slot}",
                               details=f"it has {len(source.outputs)} output(s)", **where)
    received = source.outputs[link.from_slot].type
    accepted = LINKABLE_INTO_WIDGET.get(spec.type, frozenset({spec.type}))
    if received not in accepted and spec.type != ANY_TYPE:
        return ValidationIssue(type=E.RETURN_TYPE_MISMATCH, message="Return type mismatch between linked nodes",
                               details=f"{to_input}, received_type({received}) mismatch input_type({spec.type})", **where)
    return None


def _check_node_inputs(schema: NodeSchema, given: dict[str, Any], linked: dict[str, tuple[str, int]],
                       bad_links: set[str], env: Any) -> tuple[dict[str, Any], list[ValidationIssue]]:
    issues: list[ValidationIssue] = []
    widgets: dict[str, Any] = {}
    for name, value in given.items():
        spec = schema.input(name)
        if spec is None:
            issues.append(ValidationIssue(type=E.UNKNOWN_INPUT, message=f"{schema.type_id} has no input {name!r}",
                                          details=f"inputs are {[s.name for s in schema.inputs]}",
                                          input_name=name, received_value=value))
        elif not spec.is_widget and name not in linked and name not in bad_links:
            issues.append(ValidationIssue(type=E.INVALID_INPUT_TYPE, message=f"Input {name!r} is a {spec.type} socket and needs a link",
                                          details="a literal value was given", input_name=name, received_value=value))
    for spec in schema.inputs:
        if spec.name in linked or spec.name in bad_links:
            continue  # a link wins over a widget value kept for when it is unlinked
        if not spec.is_widget:
            if not spec.optional and spec.name not in given:  # a literal given instead is reported above
                issues.append(ValidationIssue(type=E.REQUIRED_INPUT_MISSING, message="Required input is missing",
                                              details=f"{spec.name} ({spec.type}) is not linked", input_name=spec.name))
            continue
        if spec.name in given and given[spec.name] is not None:
            value, issue = check_value(spec, given[spec.name], env)
            if issue is not None:
                issues.append(issue)
                continue
            widgets[spec.name] = value
        elif spec.has_default:
            widgets[spec.name] = spec.default
        elif not spec.optional:
            issues.append(ValidationIssue(type=E.REQUIRED_INPUT_MISSING, message="Required input is missing",
                                          details=f"{spec.name} ({spec.type}) has no value", input_name=spec.name))
    return widgets, issues


def _cycle_issues(graph: nx.DiGraph, workflow: Workflow) -> Iterable[ValidationIssue]:
    for component in nx.strongly_connected_components(graph):
        if len(component) == 1:
            (only,) = component
            if not graph.has_edge(only, only):
                continue
        members = sorted(component, key=id_sort_key)
        first = members[0]
        yield ValidationIssue(type=E.DEPENDENCY_CYCLE, message="Dependency cycle detected",
                              details=f"nodes {', '.join(members)} depend on each other", node_id=first,
                              class_type=workflow.nodes[first].type, extra={"cycle": members})


def _choose_outputs(schemas: dict[str, NodeSchema], node_ids: set[str],
                    outputs: Sequence[str] | None) -> tuple[list[str], list[ValidationIssue]]:
    if outputs is None:
        chosen = sorted((nid for nid, schema in schemas.items() if schema.output_node), key=id_sort_key)
        if not chosen:
            return [], [ValidationIssue(type=E.PROMPT_NO_OUTPUTS, message="Prompt has no outputs",
                                        details="add an output node such as SaveImage")]
        return chosen, []
    issues = []
    for nid in outputs:
        if nid not in node_ids:
            issues.append(ValidationIssue(type=E.PROMPT_NO_OUTPUTS, message=f"Requested output node {nid!r} is not in the workflow",
                                          node_id=nid))
    return list(dict.fromkeys(outputs)), issues
