"""A validated workflow, ready to run: node classes resolved, values filled in, ordered with networkx."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .schema import Node, NodeSchema


def id_sort_key(node_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order ("2" before "10"), then the rest by name: a deterministic order."""
    return (0, int(node_id), "") if node_id.isascii() and node_id.isdigit() else (1, 0, node_id)  # not "³"


@dataclass(frozen=True)
class CompiledNode:
    id: str
    node_cls: type[Node]
    widgets: dict[str, Any]
    """Literal widget values, defaults filled in (inputs fed by a link are not here)."""
    links: dict[str, tuple[str, int]]
    """Input name -> (upstream node id, output slot)."""

    @property
    def schema(self) -> NodeSchema:
        return self.node_cls.schema

    @property
    def type_id(self) -> str:
        return self.node_cls.schema.type_id


@dataclass
class CompiledGraph:
    nodes: dict[str, CompiledNode]
    graph: nx.DiGraph
    outputs: list[str]
    """The output nodes this graph runs for."""
    static_keys: dict[str, str] = field(default_factory=dict, repr=False)
    """Cache keys that depend on the graph alone, filled by the engine's first run of this plan."""
    registry_size: int = 0
    _order: list[str] | None = field(default=None, repr=False)

    def order(self) -> list[str]:
        """Every node that the outputs need, upstream first; ties broken by node id."""
        if self._order is None:
            needed = needed_nodes(self.graph, self.outputs)
            # Sorting the whole graph and filtering keeps a valid order and avoids slow subgraph views.
            full = nx.lexicographical_topological_sort(self.graph, key=id_sort_key)
            self._order = [node for node in full if node in needed]
        return self._order


def needed_nodes(graph: nx.DiGraph, outputs: Iterable[str]) -> set[str]:
    """The outputs and all their ancestors (breadth-first, no recursion)."""
    needed: set[str] = set()
    frontier = [node for node in outputs if node in graph]
    needed.update(frontier)
    while frontier:
        node = frontier.pop()
        for upstream in graph.predecessors(node):
            if upstream not in needed:
                needed.add(upstream)
                frontier.append(upstream)
    return needed
