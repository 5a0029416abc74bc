"""From a /prompt body to a runnable workflow, and from validation issues to ComfyUI's 400 body.

Both the submission (to validate at once) and the worker (to run what was stored) build the workflow the
same way, so what was accepted is what runs, even after a restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import INVALID_INPUT_TYPE, MISSING_NODE_TYPE, PROMPT_NO_OUTPUTS, ValidationFailed, ValidationIssue
from ..formats import map_models, to_workflow
from ..formats import run_metadata as embedded_metadata
from ..formats.api import is_api_format, missing_values, to_api
from ..plan import CompiledGraph, id_sort_key
from ..registry import NodeRegistry
from ..workflow import Workflow, WorkflowFormatError
from . import jsonsafe
from .responses import error_object

SENSITIVE_EXTRA_DATA = ("auth_token_comfy_org", "api_key_comfy_org")
"""ComfyUI's extra_data keys that carry credentials: never stored, never echoed back."""


def clean_extra_data(extra_data: dict[str, Any], client_id: str | None) -> dict[str, Any]:
    """What is stored and shown in /queue and /history: the client's extra_data with its client_id (as
    ComfyUI keeps it), without credentials."""
    cleaned = {key: value for key, value in extra_data.items() if key not in SENSITIVE_EXTRA_DATA}
    if client_id is not None:
        cleaned["client_id"] = client_id
    return cleaned


def model_map(extra_data: dict[str, Any]) -> dict[str, str]:
    mapping = extra_data.get("model_map")
    if mapping is None:
        return {}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise WorkflowFormatError("extra_data.model_map must be an object of model names {OLD: NEW}")
    return mapping


def build_workflow(prompt: dict[str, Any], extra_data: dict[str, Any], registry: NodeRegistry) -> Workflow:
    """The native workflow of a submitted prompt (API format, or any format `to_workflow` reads), with
    `extra_data.model_map` applied. Raises `WorkflowFormatError`."""
    workflow = to_workflow(prompt, registry, source="prompt")
    return map_models(workflow, model_map(extra_data))


def check_prompt(prompt: dict[str, Any], workflow: Workflow, registry: NodeRegistry,
                 compile: Callable[[Workflow], CompiledGraph]) -> CompiledGraph:
    """Validate a submitted prompt: the engine's checks and, for ComfyUI's API format, its rule that every
    required value is given (`missing_values`). Raises `ValidationFailed` listing every issue of both."""
    missing = missing_values(workflow, registry) if is_api_format(prompt) else []
    try:
        graph = compile(workflow)
    except ValidationFailed as exc:
        known = {(issue.node_id, issue.input_name, issue.type) for issue in exc.issues}
        issues = [*exc.issues, *(i for i in missing if (i.node_id, i.input_name, i.type) not in known)]
        issues.sort(key=lambda i: (id_sort_key(i.node_id) if i.node_id else (-1, 0, ""), i.input_name or ""))
        raise ValidationFailed(issues) from None
    if missing:
        raise ValidationFailed(missing)
    return graph


def run_metadata(prompt: dict[str, Any], workflow: Workflow, extra_data: dict[str, Any],
                 registry: NodeRegistry) -> dict[str, Any]:
    """What output nodes embed (SaveImage's PNG text chunks): the API prompt that runs, the UI workflow the
    client sent in extra_pnginfo (derived from the graph when none came) and our native workflow."""
    if is_api_format(prompt) and not model_map(extra_data):
        api_prompt = prompt
    else:
        api_prompt = to_api(workflow, registry)
    pnginfo = extra_data.get("extra_pnginfo")
    pnginfo = pnginfo if isinstance(pnginfo, dict) else {}
    ui_workflow = pnginfo.get("workflow") if isinstance(pnginfo.get("workflow"), dict) else None
    meta = embedded_metadata(workflow, registry, prompt=api_prompt, workflow_ui=ui_workflow)
    if isinstance(pnginfo.get("nodegraph_workflow"), dict):
        meta["nodegraph_workflow"] = pnginfo["nodegraph_workflow"]  # the editor's own, with its layout and groups
    meta["extra_data"] = extra_data
    return meta


def unsafe_values(body: dict[str, Any], workflow: Workflow) -> tuple[list[ValidationIssue], list[str]]:
    """NaN, ±Infinity and lone surrogates in a /prompt body, which neither the queue nor JSON clients can
    carry: issues naming node and input for those inside a node of the prompt, `path: problem` for the rest."""
    prompt = body.get("prompt")
    if is_api_format(prompt):
        nodes_at, values = ("prompt",), "inputs"
    elif isinstance(prompt, dict) and isinstance(prompt.get("nodes"), dict):  # our native format
        nodes_at, values = ("prompt", "nodes"), "widgets"
    else:
        nodes_at, values = None, ""
    issues: list[ValidationIssue] = []
    general: list[str] = []
    for path, problem in jsonsafe.find_problems(body):
        depth = len(nodes_at or ())
        node_id = str(path[depth]) if nodes_at and path[:depth] == nodes_at and len(path) > depth else None
        if node_id is None or node_id not in workflow.nodes or jsonsafe.value_problem(node_id):
            general.append(f"{jsonsafe.show_path(path)}: {problem}")
            continue
        field = path[depth + 1:]  # ("inputs", "seed"), ("class_type",), ("_meta", "title"), ...
        input_name = field[1] if len(field) > 1 and field[0] == values and isinstance(field[1], str) else None
        issues.append(ValidationIssue(type=INVALID_INPUT_TYPE, message="Value cannot be carried as JSON",
                                      details=f"{jsonsafe.show_path(field[1:] if input_name else field)}: {problem}",
                                      node_id=node_id, input_name=input_name))
    return issues, general


def invalid_prompt(message: str, details: str = "", type: str = "invalid_prompt") -> dict[str, Any]:
    return {"error": error_object(type, message, details), "node_errors": {}}


def validation_error_body(issues: list[ValidationIssue], workflow: Workflow,
                          registry: NodeRegistry) -> dict[str, Any]:
    """ComfyUI's 400 body: `{error: {type, message, details, extra_info}, node_errors: {id: {...}}}`."""
    node_errors: dict[str, dict[str, Any]] = {}
    general: list[ValidationIssue] = []
    for issue in issues:
        node_id = issue.node_id
        if node_id is None or node_id not in workflow.nodes:
            general.append(issue)
            continue
        entry = node_errors.get(node_id)
        if entry is None:
            entry = {"errors": [], "dependent_outputs": dependent_outputs(workflow, registry, node_id),
                     "class_type": issue.class_type or workflow.nodes[node_id].type}
            node_errors[node_id] = entry
        entry["errors"].append(error_object(issue.type, issue.message, issue.details, issue.extra_info()))
    node_errors = dict(sorted(node_errors.items(), key=lambda item: id_sort_key(item[0])))

    missing = next((i for i in issues if i.type == MISSING_NODE_TYPE and i.node_id in workflow.nodes), None)
    if missing is not None:
        node = workflow.nodes[missing.node_id or ""]
        title = node.title or node.type
        error = error_object(MISSING_NODE_TYPE, f"Node '{title}' not found. The custom node may not be installed.",
                             f"Node ID '#{missing.node_id}'",
                             {"node_id": missing.node_id, "class_type": node.type, "node_title": title})
    elif node_errors:
        lines = [f"{e['message']}: {e['details']}" if e["details"] else e["message"]
                 for entry in node_errors.values() for e in entry["errors"]]
        error = error_object("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines))
    else:
        first = general[0] if general else ValidationIssue(type=PROMPT_NO_OUTPUTS, message="Prompt has no outputs")
        error = error_object(first.type, first.message, first.details, first.extra_info())
    return {"error": error, "node_errors": node_errors}


def dependent_outputs(workflow: Workflow, registry: NodeRegistry, node_id: str) -> list[str]:
    """The output nodes downstream of `node_id` (itself included): those its error keeps from running."""
    downstream: dict[str, list[str]] = {}
    for link in workflow.links:
        downstream.setdefault(link.from_node, []).append(link.to_node)
    seen, frontier = {node_id}, deque([node_id])
    while frontier:
        for nxt in downstream.get(frontier.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    outputs = []
    for nid in seen:
        node = workflow.nodes.get(nid)
        node_cls = registry.get(node.type) if node is not None else None
        if node_cls is not None and node_cls.schema.output_node:
            outputs.append(nid)
    return sorted(outputs, key=id_sort_key)
