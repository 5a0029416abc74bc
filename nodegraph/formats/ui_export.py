"""Export our native workflow as ComfyUI's UI format (version 0.4), the file the ComfyUI editor loads.

What the import kept (editor-only nodes and their links, slot lists, control values, unknown keys) is written
back, so a UI -> native -> UI round trip gives the graph the editor saved. A workflow made here gets what the
editor would have given it: sockets and outputs from the node declarations, `widgets_values` in widget order with
the control and upload slots, and the usual `properties`.
"""

from __future__ import annotations

import copy
from typing import Any

import networkx as nx

from ..plan import id_sort_key
from ..registry import NodeRegistry
from ..schema import OutputSpec
from ..workflow import NodeInstance, Workflow
from .ui import KEY, MODES
from .ui_widgets import values_from_widgets

_MODE_NUMBERS = {name: number for number, name in MODES.items()}
GRID_SHAPE = 6
"""LiteGraph's grid shape: how ComfyUI's editor marks (and saves) a list output's slot."""


def _declared_output(slot: int, output: OutputSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": output.name, "type": output.type, "links": [], "slot_index": slot}
    if output.is_list:
        entry["shape"] = GRID_SHAPE
    return entry
DEFAULT_SIZE = (315.0, 100.0)


def to_ui(workflow: Workflow, registry: NodeRegistry) -> dict[str, Any]:
    """The UI-format dict of a workflow (what ComfyUI's editor saves and loads; also a PNG's `workflow` chunk).

    Args:
        workflow: our native workflow.
        registry: node declarations, for slot lists and widget order of nodes made here.
    """
    kept = dict(workflow.extra.get(KEY) or {})
    ids = _editor_ids(workflow)
    editor_nodes = copy.deepcopy(list(kept.get("editor_nodes") or []))  # the workflow's own copy stays as it is
    editor_ids = {str(n.get("id")) for n in editor_nodes}
    used_link_ids = _reserved_link_ids(workflow, kept)
    next_link = [max([0, *(i for i in used_link_ids if isinstance(i, int))]) + 1]

    def new_link_id() -> int:
        while next_link[0] in used_link_ids:
            next_link[0] += 1
        used_link_ids.add(next_link[0])
        return next_link[0]

    raw_links: list[list[Any]] = []
    taken: set[Any] = set()
    routed: set[tuple[str, str]] = set()
    incoming_by_node: dict[str, dict[str, Any]] = {}
    for link in workflow.links:  # one pass: scanning every link for every node was O(N^2) on long chains
        incoming_by_node.setdefault(link.to_node, {})[link.to_input] = link
    for node_id, node in workflow.nodes.items():
        info = _info(node)
        incoming = incoming_by_node.get(node_id, {})
        for name, route in (info.get("routes") or {}).items():
            link = incoming.get(name)
            primitive_still_feeds = route.get("source") is None and link is None and name in node.converted_widgets
            if primitive_still_feeds or (link is not None and route.get("source") == [link.from_node, link.from_slot]):
                routed.add((node_id, name))
        for name, link in incoming.items():
            if (node_id, name) in routed or link.from_node not in ids:
                continue  # kept as an editor route, or from a node that is not there (validation says so)
            link_id = (info.get("link_ids") or {}).get(name)
            link_id = link_id if link_id is not None and link_id not in taken else new_link_id()
            taken.add(link_id)
            raw_links.append([link_id, ids[link.from_node], link.from_slot, ids[node_id], None, None, name])

    by_target_input: dict[tuple[Any, str], Any] = {}
    for node_id, name in routed:
        by_target_input[(ids[node_id], name)] = _info(workflow.nodes[node_id])["routes"][name]["link"]
    route_name = {(target, link_id): name for (target, name), link_id in by_target_input.items()}
    for raw in kept.get("editor_links") or []:
        origin, target = str(raw[1]), str(raw[3])
        if target not in editor_ids and target not in workflow.nodes:
            continue
        target_is_editor = target in editor_ids
        if origin not in editor_ids and origin not in workflow.nodes:
            continue
        if target_is_editor:
            raw_links.append([raw[0], ids.get(origin, raw[1]), raw[2], raw[3], raw[4], raw[5], None])
            continue
        name = route_name.get((ids[target], raw[0]))
        if name is not None:  # else the route was changed here: that input now has its own link
            raw_links.append([raw[0], ids.get(origin, raw[1]), raw[2], ids[target], None, raw[5], name])

    nodes = [_node_out(node_id, node, ids[node_id], registry) for node_id, node in workflow.nodes.items()]
    nodes_by_id = {n["id"]: n for n in nodes}
    _wire_slots(nodes_by_id, {n["id"]: n for n in editor_nodes}, raw_links)
    raw_links = [raw[:6] for raw in raw_links]
    _sync_primitives(workflow, editor_nodes, raw_links, ids)
    _prune_editor_links(editor_nodes, raw_links)
    if any(n["order"] is None for n in nodes):  # else the editor's own order is kept
        _set_order(nodes + editor_nodes, raw_links)

    all_ids = [n["id"] for n in nodes + editor_nodes]
    last_ids = list(kept.get("last_ids") or [None, None])  # ids the editor used before: never reused
    data: dict[str, Any] = dict(kept.get("top") or {})
    data.update({
        "last_node_id": max([0, *(i for i in [*all_ids, last_ids[0]] if isinstance(i, int))]),
        "last_link_id": max([0, *(i for i in [*(r[0] for r in raw_links), last_ids[1]] if isinstance(i, int))]),
        "nodes": nodes + editor_nodes,
        "links": sorted(raw_links, key=lambda r: (not isinstance(r[0], int), r[0] if isinstance(r[0], int) else 0)),
        "groups": [_group_out(g.model_dump(mode="json")) for g in workflow.groups],
        "config": (kept.get("top") or {}).get("config", {}),
        "extra": {k: v for k, v in workflow.extra.items() if k != KEY},
        "version": 0.4,
    })
    return data


ui_from_native = to_ui
"""The name SaveImage uses for the PNG `workflow` chunk."""


def _info(node: NodeInstance) -> dict[str, Any]:
    info = (node.model_extra or {}).get(KEY)
    return info if isinstance(info, dict) else {}


def _editor_ids(workflow: Workflow) -> dict[str, Any]:
    """Our id -> the editor's: the original where kept, the integer where numeric, else a new integer."""
    ids: dict[str, Any] = {}
    taken = {str(n.get("id")) for n in (workflow.extra.get(KEY) or {}).get("editor_nodes") or []}
    for node_id, node in workflow.nodes.items():
        original = _info(node).get("id")
        if isinstance(original, int) and str(original) == node_id:
            ids[node_id] = original
        elif _is_int(node_id):
            ids[node_id] = int(node_id)
        taken.add(str(ids.get(node_id, "")))
    counter = max([0, *(int(t) for t in taken if _is_int(t))])
    for node_id in sorted(workflow.nodes, key=id_sort_key):
        if node_id not in ids:  # e.g. "83:30" from a flattened subgraph: the 0.4 format wants integers
            counter += 1
            ids[node_id] = counter
    return ids


def _is_int(text: str) -> bool:
    """ASCII digits with an optional minus: what int() reads ("³" is a digit to str.isdigit, not to int)."""
    return text.isascii() and text.lstrip("-").isdigit()


def _reserved_link_ids(workflow: Workflow, kept: dict[str, Any]) -> set[Any]:
    reserved = {raw[0] for raw in kept.get("editor_links") or []}
    for node in workflow.nodes.values():
        reserved.update((_info(node).get("link_ids") or {}).values())
    return reserved


def _node_out(node_id: str, node: NodeInstance, editor_id: Any, registry: NodeRegistry) -> dict[str, Any]:
    info = _info(node)
    node_cls = registry.get(node.type)
    schema = node_cls.schema if node_cls else None
    out: dict[str, Any] = {"id": editor_id, "type": node.type}
    out["pos"] = list(node.pos) if node.pos else [0.0, 0.0]
    out["size"] = list(node.size) if node.size else list(DEFAULT_SIZE)
    keys = dict(info.get("keys") or {})
    flags = dict(keys.pop("flags", None) or {})
    if node.collapsed or "collapsed" in flags:
        flags["collapsed"] = node.collapsed
    out["flags"] = flags
    out["order"] = keys.pop("order", None)
    mode = _MODE_NUMBERS[node.mode]
    out["mode"] = info["mode"] if mode == 0 and "mode" in info else mode
    out["inputs"] = [dict(entry, link=None) for entry in info.get("inputs") or []] if "inputs" in info \
        else _declared_inputs(schema, node)
    out["outputs"] = [dict(entry, links=[]) for entry in info.get("outputs") or []] if "outputs" in info \
        else [_declared_output(i, output) for i, output in enumerate(schema.outputs if schema else ())]
    if node.title is not None:
        out["title"] = node.title
    out["properties"] = keys.pop("properties", {"Node name for S&R": node.type})
    if info.get("no_widgets_values") and not node.widgets:
        pass  # the editor saved none (a node without widgets, or an old file): write none
    elif schema is not None:
        out["widgets_values"] = values_from_widgets(schema, node.widgets, info.get("control"), info.get("upload"),
                                                    info.get("leftover"))
    elif "widgets_values" in info:
        out["widgets_values"] = info["widgets_values"]
    else:
        out["widgets_values"] = dict(node.widgets) if node.widgets else []
    if node.color is not None:
        out["color"] = node.color
    out.update(keys)
    return out


def _declared_inputs(schema: Any, node: NodeInstance) -> list[dict[str, Any]]:
    """Sockets in declaration order, then converted widgets as sockets (`widget: {name}`), as the editor lists."""
    if schema is None:
        return []
    entries = [{"name": s.name, "type": s.type, "link": None} for s in schema.inputs if not s.is_widget]
    for spec in schema.widgets:
        if spec.name in node.converted_widgets:
            entries.append({"name": spec.name, "type": spec.type, "widget": {"name": spec.name}, "link": None})
    return entries


def _wire_slots(nodes: dict[Any, dict[str, Any]], editor_nodes: dict[Any, dict[str, Any]],
                raw_links: list[list[Any]]) -> None:
    """Fill each link's target slot and the `link`/`links` fields at both ends, adding sockets a link needs.

    A native link arrives as `[id, origin, slot, target, None, None, input name]`; a kept editor link whole.
    """
    for node in nodes.values():
        for output in node.get("outputs") or []:
            output["links"] = []
    for raw in raw_links:
        target = nodes.get(raw[3]) or editor_nodes.get(raw[3])
        origin = nodes.get(raw[1]) or editor_nodes.get(raw[1])
        if target is None or origin is None:
            continue
        if raw[4] is None:
            raw[4] = _input_slot(target, raw[6], origin, raw[2])
        outputs = origin.setdefault("outputs", [])
        while len(outputs) <= raw[2]:
            outputs.append({"name": "*", "type": "*", "links": []})
        if raw[5] is None:
            raw[5] = outputs[raw[2]].get("type", "*")
        if raw[3] in nodes:  # a node made here (not a kept editor-only node); a key lookup, not a scan
            entries = target.get("inputs") or []
            if raw[4] < len(entries):
                entries[raw[4]]["link"] = raw[0]
        if raw[1] in nodes:
            outputs[raw[2]]["links"] = [*(outputs[raw[2]].get("links") or []), raw[0]]


def _input_slot(target: dict[str, Any], name: str, origin: dict[str, Any], origin_slot: int) -> int:
    entries = target.setdefault("inputs", [])
    for index, entry in enumerate(entries):
        widget = entry.get("widget") if isinstance(entry.get("widget"), dict) else {}
        if widget.get("name", entry.get("name")) == name:
            return index
    outputs = origin.get("outputs") or []
    link_type = outputs[origin_slot].get("type") if origin_slot < len(outputs) else "*"
    entries.append({"name": name, "type": link_type, "link": None})
    return len(entries) - 1


def _sync_primitives(workflow: Workflow, editor_nodes: list[dict[str, Any]], raw_links: list[list[Any]],
                     ids: dict[str, Any]) -> None:
    """A PrimitiveNode shows the value of the widget it feeds: write back the value edited here."""
    reverse = {v: k for k, v in ids.items()}
    primitives = {n.get("id"): n for n in editor_nodes if n.get("type") == "PrimitiveNode"}
    for raw in raw_links:
        primitive = primitives.get(raw[1])
        target = workflow.nodes.get(reverse.get(raw[3], ""))
        if primitive is None or target is None or not isinstance(primitive.get("widgets_values"), list):
            continue
        for name, route in (_info(target).get("routes") or {}).items():
            if route.get("link") == raw[0] and name in target.widgets and primitive["widgets_values"]:
                primitive["widgets_values"] = [target.widgets[name], *primitive["widgets_values"][1:]]


def _prune_editor_links(editor_nodes: list[dict[str, Any]], raw_links: list[list[Any]]) -> None:
    """Editor-only nodes keep only the links that are still there."""
    present = {raw[0] for raw in raw_links}
    for node in editor_nodes:
        for entry in node.get("inputs") or []:
            if isinstance(entry, dict) and entry.get("link") is not None and entry["link"] not in present:
                entry["link"] = None
        for output in node.get("outputs") or []:
            if isinstance(output, dict) and output.get("links"):
                output["links"] = [i for i in output["links"] if i in present]


def _set_order(nodes: list[dict[str, Any]], raw_links: list[list[Any]]) -> None:
    """The editor's execution order: a topological order of the exported graph (ties by position in the list)."""
    graph = nx.DiGraph()
    index = {n["id"]: i for i, n in enumerate(nodes)}
    graph.add_nodes_from(index)
    graph.add_edges_from((r[1], r[3]) for r in raw_links if r[1] in index and r[3] in index)
    try:
        order = list(nx.lexicographical_topological_sort(graph, key=lambda n: index[n]))
    except nx.NetworkXUnfeasible:
        order = list(index)
    for position, node_id in enumerate(order):
        nodes[index[node_id]]["order"] = position


def _group_out(raw: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in raw.items() if v is not None or k in ("color",)}
    out["bounding"] = list(raw.get("bounding", ()))
    if out.get("color") is None:
        out.pop("color", None)
    return out
