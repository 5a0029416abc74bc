"""Import ComfyUI's UI format (what the editor saves, versions 0.4 and 1) into our native workflow.

The editor's own nodes never reach the engine, exactly as in ComfyUI's queueing: Reroutes are followed to the
node that really feeds an input, a PrimitiveNode's value is written into the widget it feeds, and Notes are
left out. Everything the native model has no field for (editor-only nodes and their links, slot labels, control
values, unknown keys) is kept in `comfyui` entries on the nodes and in `workflow.extra` so that an export
restores the file the editor saved.
"""

from __future__ import annotations

from typing import Any

from ..registry import NodeRegistry
from ..workflow import Group, Link, NodeInstance, Workflow, WorkflowFormatError
from .ui_graph import RawLink, flatten_subgraphs, input_name, node_inputs, read_links
from .ui_widgets import widgets_from_values

KEY = "comfyui"
"""Key of the editor data kept on each node and in `workflow.extra`."""
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
NOTES = frozenset({"Note", "MarkdownNote"})
EDITOR_ONLY = frozenset({REROUTE, PRIMITIVE, *NOTES})
"""Node types that exist only in the editor: never validated, never executed."""
MODES = {0: "always", 2: "never", 4: "bypass"}
"""LiteGraph modes: 2 is muted, 4 bypassed; 1 and 3 (event triggers) run like 0 in ComfyUI."""
_NODE_FIELDS = frozenset({"id", "type", "pos", "size", "mode", "title", "color", "widgets_values", "inputs",
                          "outputs"})
_TOP_FIELDS = frozenset({"nodes", "links", "groups", "extra", "last_node_id", "last_link_id", "version",
                         "definitions", "state"})


def is_ui_format(data: Any) -> bool:
    """A saved editor graph: a list of nodes (ours has a mapping) with links or a format version."""
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list) and data.get("format") is None
            and any(key in data for key in ("links", "last_node_id", "version", "state")))


def from_ui(data: dict[str, Any], registry: NodeRegistry, source: str = "workflow") -> Workflow:
    """Our native workflow from a UI-format file; unknown node types are kept for validation to report.

    Args:
        data: the parsed JSON of a workflow the ComfyUI editor saved.
        registry: node declarations; their widget order maps the positional `widgets_values`.
        source: a name for error messages (usually the file path).
    """
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not all(isinstance(n, dict) and "id" in n and "type" in n
                                                  for n in raw_nodes):
        raise WorkflowFormatError(f"{source}: every node needs an 'id' and a 'type'")
    _refuse_group_nodes(data, source)
    links = read_links(data.get("links"), source)
    raw_nodes, links = flatten_subgraphs(raw_nodes, links, data.get("definitions"), source)
    by_id: dict[str, dict[str, Any]] = {}
    for raw in raw_nodes:
        node_id = str(raw["id"])
        if node_id in by_id:
            raise WorkflowFormatError(f"{source}: node id {node_id} is used twice")
        by_id[node_id] = raw

    nodes: dict[str, NodeInstance] = {}
    native_links: list[Link] = []
    editor_ids = {nid for nid, raw in by_id.items() if raw.get("type") in EDITOR_ONLY}
    for node_id, raw in by_id.items():
        if node_id in editor_ids:
            continue
        node, node_links = _convert_node(node_id, raw, by_id, links, registry, source)
        nodes[node_id] = node
        native_links.extend(node_links)

    extra = dict(data.get("extra") or {})
    extra[KEY] = {
        "top": {k: v for k, v in data.items() if k not in _TOP_FIELDS},
        "state": data.get("state"),
        "last_ids": [data.get("last_node_id"), data.get("last_link_id")],
        "editor_nodes": [{k: v for k, v in by_id[nid].items() if not k.startswith("_")} for nid in by_id
                         if nid in editor_ids],
        "editor_links": [_link_out(link) for link in links.values()
                         if link.origin in editor_ids or link.target in editor_ids],
        "flattened_subgraphs": bool((data.get("definitions") or {}).get("subgraphs")),
    }
    groups = [_group(g) for g in data.get("groups") or [] if isinstance(g, dict)]
    return Workflow(nodes=nodes, links=native_links, groups=groups, extra=extra)


def with_widget_defaults(workflow: Workflow, registry: NodeRegistry) -> Workflow:
    """Widgets a saved node has no value for take their declared default, as when the editor loads the node;
    the prompt it queues then carries them."""
    nodes = {}
    for node_id, node in workflow.nodes.items():
        node_cls = registry.get(node.type)
        missing = {} if node_cls is None else {s.name: s.default for s in node_cls.schema.widgets
                                               if s.name not in node.widgets and s.has_default}
        nodes[node_id] = node.model_copy(update={"widgets": {**node.widgets, **missing}}) if missing else node
    return workflow.model_copy(update={"nodes": nodes})


def _convert_node(node_id: str, raw: dict[str, Any], by_id: dict[str, dict[str, Any]], links: dict[str, RawLink],
                  registry: NodeRegistry, source: str) -> tuple[NodeInstance, list[Link]]:
    node_type = str(raw["type"])
    node_cls = registry.get(node_type)
    info: dict[str, Any] = {
        "id": raw["id"],
        "keys": {k: v for k, v in raw.items() if k not in _NODE_FIELDS and not k.startswith("_")},
        "inputs": [{k: v for k, v in e.items() if k != "link"} for e in node_inputs(raw)],
        "outputs": [{k: v for k, v in o.items() if k != "links"} for o in raw.get("outputs") or []
                    if isinstance(o, dict)],
    }
    raw_mode = raw.get("mode", 0)
    if raw_mode not in MODES:
        info["mode"] = raw_mode
    raw_values = raw.get("widgets_values")
    if "widgets_values" not in raw:
        info["no_widgets_values"] = True
    widgets: dict[str, Any] = {}
    if node_cls is not None:
        mapped = widgets_from_values(node_cls.schema, raw_values)
        widgets = mapped.values
        info.update(control=mapped.control, upload=mapped.upload, leftover=mapped.leftover)
    elif isinstance(raw_values, dict):
        widgets = dict(raw_values)  # named values need no declaration to map
    if node_cls is None and raw_values is not None:
        info["widgets_values"] = raw_values  # the widget order of an unknown type can't be known
    widgets.update(raw.get("_promoted") or {})

    node_links: list[Link] = []
    converted: list[str] = []
    routes: dict[str, Any] = {}
    link_ids: dict[str, Any] = {}
    for entry in node_inputs(raw):
        link = links.get(str(entry.get("link"))) if entry.get("link") is not None else None
        if link is None:
            continue
        name = input_name(entry)
        if isinstance(entry.get("widget"), dict):
            converted.append(name)
        end = _resolve(link, by_id, links, source)
        if end is None:
            continue  # a Reroute chain that starts nowhere: the input is unlinked
        origin, slot = end
        origin_raw = by_id.get(origin)
        if origin_raw is not None and origin_raw.get("type") == PRIMITIVE:
            values = origin_raw.get("widgets_values")
            if isinstance(values, list) and values:
                widgets[name] = values[0]
            routes[name] = {"link": _id_out(link.id), "source": None}
            continue
        node_links.append(Link(from_node=origin, from_slot=slot, to_node=node_id, to_input=name))
        if origin != link.origin:
            routes[name] = {"link": _id_out(link.id), "source": [origin, slot]}
        else:
            link_ids[name] = _id_out(link.id)
    info.update(routes=routes, link_ids=link_ids)
    flags = raw.get("flags") if isinstance(raw.get("flags"), dict) else {}
    node = NodeInstance(type=node_type, widgets=widgets, title=raw.get("title"), pos=_pair(raw.get("pos")),
                        size=_pair(raw.get("size")), mode=MODES.get(raw_mode, "always"),
                        collapsed=bool(flags.get("collapsed", False)), color=raw.get("color"),
                        converted_widgets=converted, **{KEY: info})
    return node, node_links


def _resolve(link: RawLink, by_id: dict[str, dict[str, Any]], links: dict[str, RawLink],
             source: str) -> tuple[str, int] | None:
    """The real output feeding a link: Reroute chains followed back to their start (None: they start nowhere)."""
    origin, slot = link.origin, link.origin_slot
    seen: set[str] = set()
    while by_id.get(origin, {}).get("type") == REROUTE:
        if origin in seen:
            raise WorkflowFormatError(f"{source}: Reroute nodes {', '.join(sorted(seen))} form a loop")
        seen.add(origin)
        entries = node_inputs(by_id[origin])
        upstream = links.get(str(entries[0].get("link"))) if entries and entries[0].get("link") is not None else None
        if upstream is None:
            return None
        origin, slot = upstream.origin, upstream.origin_slot
    return origin, slot


def _link_out(link: RawLink) -> list[Any]:
    return [_id_out(link.id), _id_out(link.origin), link.origin_slot, _id_out(link.target), link.target_slot,
            link.type]


def _id_out(value: str) -> Any:
    """Ids back as the editor wrote them: integers where they are numeric."""
    return int(value) if value.isascii() and value.lstrip("-").isdigit() else value  # not "³"


def _pair(value: Any) -> tuple[float, float] | None:
    """Positions and sizes: `[x, y]`, or the `{"0": x, "1": y}` objects older editors wrote."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    if isinstance(value, (list, tuple)) and len(value) >= 2 and all(isinstance(v, (int, float)) for v in value[:2]):
        return (float(value[0]), float(value[1]))
    return None


def _group(raw: dict[str, Any]) -> Group:
    bounding = raw.get("bounding")
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("title", "bounding", "color")}
    if isinstance(bounding, list) and len(bounding) == 4:
        fields["bounding"] = tuple(float(v) for v in bounding)
    return Group(title=str(raw.get("title", "Group")), color=raw.get("color"), **fields)


def _refuse_group_nodes(data: dict[str, Any], source: str) -> None:
    """Legacy group nodes (`extra.groupNodes`) pack several nodes behind one type; ComfyUI converts them to
    subgraphs, which we read. Refuse rather than guess their wiring."""
    group_nodes = (data.get("extra") or {}).get("groupNodes") or {}
    for raw in data.get("nodes", []):
        node_type = str(raw.get("type", ""))
        if node_type.startswith("workflow>") or node_type.startswith("workflow/") or node_type in group_nodes:
            raise WorkflowFormatError(f"{source}: node {raw.get('id')} is a legacy group node ({node_type!r}); "
                                      f"convert it to a subgraph in ComfyUI and save again")
