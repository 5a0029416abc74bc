"""The raw graph of a ComfyUI UI-format file: links of either schema, and subgraphs flattened into one graph.

Version 0.4 saves links as `[id, origin, origin_slot, target, target_slot, type]`; version 1 (and every subgraph
definition) as objects with `origin_id`/`target_id`. A node's own `inputs[i].link` names the link into it, which
is kept even where a link's `target_slot` is stale, so inputs are matched through it.

Subgraph instances are flattened the way ComfyUI's executor sees them: inner nodes get ids `outer:inner`, the
subgraph's inputs take the outer node's incoming links (or its promoted widget values), and links out of the
outer node start at the inner node wired to that subgraph output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..workflow import WorkflowFormatError

SUBGRAPH_INPUT = "-10"
SUBGRAPH_OUTPUT = "-20"
MUTED, BYPASSED = 2, 4


@dataclass
class RawLink:
    id: str
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: Any = None


def read_links(raw_links: Any, source: str) -> dict[str, RawLink]:
    """Links of either schema by id (as a string, so nested ids like "83:12" fit)."""
    links: dict[str, RawLink] = {}
    for raw in raw_links or []:
        if isinstance(raw, list) and len(raw) >= 5:
            link_id, origin, origin_slot, target, target_slot = raw[:5]
            link_type = raw[5] if len(raw) > 5 else None
        elif isinstance(raw, dict) and "origin_id" in raw:
            link_id, origin, origin_slot = raw.get("id"), raw["origin_id"], raw.get("origin_slot", 0)
            target, target_slot, link_type = raw.get("target_id"), raw.get("target_slot", 0), raw.get("type")
        elif raw is None:
            continue
        else:
            raise WorkflowFormatError(f"{source}: unreadable link {str(raw)[:80]}")
        links[str(link_id)] = RawLink(str(link_id), str(origin), int(origin_slot), str(target), int(target_slot),
                                      link_type)
    return links


def node_inputs(node: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = node.get("inputs") or []
    return [entry for entry in inputs if isinstance(entry, dict)]


def input_name(entry: dict[str, Any]) -> str:
    """The input a socket feeds: a converted widget's name wins over its (possibly relabelled) socket name."""
    widget = entry.get("widget")
    if isinstance(widget, dict) and widget.get("name"):
        return str(widget["name"])
    return str(entry.get("name", ""))


def flatten_subgraphs(nodes: list[dict[str, Any]], links: dict[str, RawLink], definitions: Any,
                      source: str) -> tuple[list[dict[str, Any]], dict[str, RawLink]]:
    """Replace every subgraph instance by its inner nodes, rewiring links through its inputs and outputs.

    One level per pass, over the whole graph, so a nested instance is expanded with every link into and out of
    it already rewired by the pass before.
    """
    subgraphs = {str(d.get("id")): d for d in (definitions or {}).get("subgraphs", []) if isinstance(d, dict)}
    links = dict(links)
    for _ in range(17):
        if not any(str(n.get("type")) in subgraphs for n in nodes):
            return nodes, links
        expanded: list[dict[str, Any]] = []
        for node in nodes:
            definition = subgraphs.get(str(node.get("type")))
            if definition is None:
                expanded.append(node)
                continue
            inner_nodes, inner_links = _instantiate(node, definition, links, source)
            expanded.extend(inner_nodes)
            links.update(inner_links)
        nodes = expanded
    raise WorkflowFormatError(f"{source}: subgraphs nested more than 16 deep (a subgraph containing itself?)")


def _instantiate(outer: dict[str, Any], definition: dict[str, Any], links: dict[str, RawLink],
                 source: str) -> tuple[list[dict[str, Any]], dict[str, RawLink]]:
    """One subgraph instance as plain nodes; `links` (the outer graph's) is rewired in place."""
    outer_id = str(outer.get("id"))
    name = definition.get("name") or definition.get("id")
    where = f"{source}: subgraph {name!r} (node {outer_id})"
    prefix = f"{outer_id}:"
    inner_links = read_links(definition.get("links"), where)
    sub_inputs = [i for i in definition.get("inputs", []) if isinstance(i, dict)]
    sub_outputs = [o for o in definition.get("outputs", []) if isinstance(o, dict)]
    mode = outer.get("mode", 0)

    if mode == BYPASSED:
        _bypass_instance(outer_id, outer, sub_inputs, sub_outputs, links, where)
        return [], {}

    # Which outer link feeds each subgraph input (matched by name, else by position).
    outer_feeds: dict[int, RawLink] = {}
    entries = node_inputs(outer)
    for index, sub_input in enumerate(sub_inputs):
        entry = next((e for e in entries if e.get("name") == sub_input.get("name")), None)
        if entry is None and index < len(entries):
            entry = entries[index]
        link_id = entry.get("link") if entry else None
        if link_id is not None and str(link_id) in links:
            outer_feeds[index] = links.pop(str(link_id))
    promoted = _promoted_values(outer, sub_inputs, outer_feeds)

    nodes = []
    for inner in definition.get("nodes", []):
        clone = copy.deepcopy(inner)
        clone["id"] = prefix + str(inner.get("id"))
        if mode == MUTED:
            clone["mode"] = MUTED
        for entry in node_inputs(clone):
            if entry.get("link") is not None:
                entry["link"] = prefix + str(entry["link"])
        nodes.append(clone)
    _apply_proxy_values(outer, nodes, prefix)

    result: dict[str, RawLink] = {}
    for link in inner_links.values():
        new = RawLink(prefix + link.id, prefix + link.origin, link.origin_slot, prefix + link.target,
                      link.target_slot, link.type)
        if link.origin == SUBGRAPH_INPUT:
            feed = outer_feeds.get(link.origin_slot)
            if link.origin_slot >= len(sub_inputs):
                raise WorkflowFormatError(f"{where}: a link starts at subgraph input {link.origin_slot}, "
                                          f"which does not exist")
            if feed is None:
                value = promoted.get(link.origin_slot)
                if value is not _MISSING:
                    _set_widget(nodes, new.target, new.id, value)
                _unlink(nodes, new.target, new.id)
                continue
            new.origin, new.origin_slot = feed.origin, feed.origin_slot
        if link.target == SUBGRAPH_OUTPUT:
            continue  # resolved below from the outer side
        result[new.id] = new

    # Links leaving the outer node start at whatever inner node feeds that subgraph output.
    inner_sources: dict[int, tuple[str, int]] = {}
    for index, sub_output in enumerate(sub_outputs):
        for link_id in sub_output.get("linkIds") or []:
            link = inner_links.get(str(link_id))
            if link is not None:
                origin = outer_feeds.get(link.origin_slot) if link.origin == SUBGRAPH_INPUT else None
                inner_sources[index] = ((origin.origin, origin.origin_slot) if origin
                                        else (prefix + link.origin, link.origin_slot))
    for link_id, link in list(links.items()):
        if link.origin == outer_id:
            source_end = inner_sources.get(link.origin_slot)
            if source_end is None:
                del links[link_id]  # nothing inside feeds that output: the target input stays unlinked
            else:
                link.origin, link.origin_slot = source_end
    return nodes, result


_MISSING = object()


def _promoted_values(outer: dict[str, Any], sub_inputs: list[dict[str, Any]],
                     feeds: dict[int, RawLink]) -> dict[int, Any]:
    """Values the outer node shows as widgets for its unlinked value-type subgraph inputs."""
    raw = outer.get("widgets_values")
    values: dict[int, Any] = {}
    if isinstance(raw, dict):
        for index, sub_input in enumerate(sub_inputs):
            values[index] = raw.get(sub_input.get("name"), _MISSING)
        return values
    if not isinstance(raw, list) or _proxy_widgets(outer):
        return values
    position = 0
    for index, sub_input in enumerate(sub_inputs):
        if sub_input.get("type") in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") and position < len(raw):
            values[index] = raw[position]
            position += 1
    return values


def _proxy_widgets(outer: dict[str, Any]) -> list[tuple[str, str]]:
    """Newer editors promote inner widgets by `properties.proxyWidgets`: [[inner node id, widget name], ...]."""
    proxies = (outer.get("properties") or {}).get("proxyWidgets")
    if not isinstance(proxies, list):
        return []
    return [(str(p[0]), str(p[1])) for p in proxies if isinstance(p, list) and len(p) == 2]


def _apply_proxy_values(outer: dict[str, Any], nodes: list[dict[str, Any]], prefix: str) -> None:
    """The outer node's `widgets_values` follow its proxyWidgets order; each value belongs to an inner widget."""
    raw = outer.get("widgets_values")
    if not isinstance(raw, list):
        return
    by_id = {node["id"]: node for node in nodes}
    for (inner_id, name), value in zip(_proxy_widgets(outer), raw):
        node = by_id.get(prefix + inner_id)
        if node is not None and name != "control_after_generate":
            node.setdefault("_promoted", {})[name] = value


def _set_widget(nodes: list[dict[str, Any]], node_id: str, link_id: str, value: Any) -> None:
    """Record a promoted value on the inner input it reaches; the UI importer applies it by widget name."""
    for node in nodes:
        if node["id"] == node_id:
            for entry in node_inputs(node):
                if entry.get("link") == link_id:
                    node.setdefault("_promoted", {})[input_name(entry)] = value


def _unlink(nodes: list[dict[str, Any]], node_id: str, link_id: str) -> None:
    for node in nodes:
        if node["id"] == node_id:
            for entry in node_inputs(node):
                if entry.get("link") == link_id:
                    entry["link"] = None


def _bypass_instance(outer_id: str, outer: dict[str, Any], sub_inputs: list[dict[str, Any]],
                     sub_outputs: list[dict[str, Any]], links: dict[str, RawLink], where: str) -> None:
    """A bypassed subgraph passes, for each output, the first linked input of the same type."""
    feeds: list[tuple[Any, RawLink]] = []
    for entry in node_inputs(outer):
        link_id = entry.get("link")
        if link_id is not None and str(link_id) in links:
            feeds.append((entry.get("type"), links.pop(str(link_id))))
    for link_id, link in list(links.items()):
        if link.origin != outer_id:
            continue
        if link.origin_slot >= len(sub_outputs):
            raise WorkflowFormatError(f"{where}: a link leaves output {link.origin_slot}, which does not exist")
        wanted = sub_outputs[link.origin_slot].get("type")
        feed = next((f for t, f in feeds if t == wanted), None)
        if feed is None:
            del links[link_id]
        else:
            link.origin, link.origin_slot = feed.origin, feed.origin_slot
