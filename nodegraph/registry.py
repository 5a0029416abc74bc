"""The node registry: an object the application fills and hands to the engine.

The engine never imports a node library; node packs (ours included) register through the
`nodegraph.nodes` entry-point group, whose objects are `register(registry)` functions.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from importlib.metadata import entry_points

from .schema import Node, NodeSchema

ENTRY_POINT_GROUP = "nodegraph.nodes"
log = logging.getLogger(__name__)


class RegistryError(ValueError):
    pass


class NodeRegistry:
    """Node types by stable type id."""

    def __init__(self, nodes: Iterable[type[Node]] = ()) -> None:
        self._types: dict[str, type[Node]] = {}
        self.load_errors: dict[str, str] = {}
        self._env_setups: list[Callable[[Any], None]] = []
        for node in nodes:
            self.register(node)

    def register(self, node: type[Node]) -> type[Node]:
        """Add a node class; usable as a decorator. A type id may be registered once."""
        schema = getattr(node, "schema", None)
        if not isinstance(schema, NodeSchema):
            raise RegistryError(f"{node!r} has no NodeSchema in its `schema` attribute")
        if not callable(getattr(node, "execute", None)):
            raise RegistryError(f"{schema.type_id}: node class has no execute()")
        check_execute_signature(node)
        existing = self._types.get(schema.type_id)
        if existing is not None and existing is not node:
            raise RegistryError(f"node type {schema.type_id!r} is already registered by {existing.__module__}")
        self._types[schema.type_id] = node
        return node

    def add_environment_setup(self, setup: Callable[[Any], None]) -> None:
        """Let a node pack prepare the application's environment (e.g. list a model it ships)."""
        self._env_setups.append(setup)

    def setup_environment(self, env: Any) -> Any:
        for setup in self._env_setups:
            setup(env)
        return env

    def get(self, type_id: str) -> type[Node] | None:
        return self._types.get(type_id)

    def __getitem__(self, type_id: str) -> type[Node]:
        try:
            return self._types[type_id]
        except KeyError:
            raise KeyError(f"unknown node type {type_id!r}") from None

    def __contains__(self, type_id: object) -> bool:
        return type_id in self._types

    def __iter__(self) -> Iterator[type[Node]]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def schemas(self) -> list[NodeSchema]:
        return [node.schema for node in self._types.values()]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> NodeRegistry:
        """Register every installed node pack; a pack that fails is recorded, not fatal."""
        for entry in sorted(entry_points(group=group), key=lambda e: e.name):
            try:
                register = entry.load()
                register(self)
            except Exception as exc:  # a broken third-party pack must not take the app down
                self.load_errors[entry.name] = f"{type(exc).__name__}: {exc}"
                log.warning("node pack %r failed to load: %s", entry.name, exc)
        return self


def check_execute_signature(node: type[Node]) -> None:
    """The schema's inputs and `execute`'s parameters must agree, so a mismatch fails when the node registers
    instead of in a user's run: every declared input is a parameter (or `**kwargs` takes it), every parameter
    after `ctx` without a default is a declared input, and an optional input with no default value (absent
    when unlinked) has a parameter with a default.

    Raises:
        RegistryError: naming the node and the input or parameter that disagree.
    """
    schema = node.schema
    try:
        parameters = list(inspect.signature(node.execute).parameters.values())[1:]  # after ctx
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{schema.type_id}: execute() has no readable signature ({exc})") from None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        raise RegistryError(f"{schema.type_id}: execute() takes *args; inputs are passed by name")
    by_name = {p.name: p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    problems = []
    for spec in schema.inputs:
        parameter = by_name.get(spec.name)
        if parameter is None:
            if not takes_any:
                problems.append(f"input {spec.name!r} is declared but execute() has no parameter {spec.name!r}")
        elif spec.optional and not spec.has_default and parameter.default is inspect.Parameter.empty:
            problems.append(f"optional input {spec.name!r} may be absent but parameter {spec.name!r} has no default")
    for name, parameter in by_name.items():
        if schema.input(name) is None and parameter.default is inspect.Parameter.empty:
            problems.append(f"execute() parameter {name!r} has no default and no declared input feeds it")
    if problems:
        raise RegistryError(f"{schema.type_id} ({node.__module__}.{node.__qualname__}): " + "; ".join(problems))


def default_registry() -> NodeRegistry:
    """A registry of all installed node packs."""
    return NodeRegistry().load_entry_points()
