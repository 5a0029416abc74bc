"""Model-free fake nodes for engine tests (InvokeAI's test nodes, ComfyUI's testing pack)."""

from __future__ import annotations

import time
from typing import Any

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeRegistry, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.errors import Interrupted
from nodegraph.workflow import Link, NodeInstance, Workflow

CALLS: list[str] = []
"""Node ids in the order they executed; tests clear it."""


class Number(Node):
    schema = NodeSchema(type_id="Number", category="test", inputs=(Int("value", 1, min=-1000, max=1000),),
                        outputs=(Out("INT", "value"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: int) -> tuple[int]:
        CALLS.append(ctx.node_id)
        return (value,)


class Add(Node):
    schema = NodeSchema(type_id="Add", category="test", inputs=(Socket("a", "INT"), Int("b", 0, min=-1000, max=1000)),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, b: int) -> tuple[int]:
        CALLS.append(ctx.node_id)
        return (a + b,)


class Scale(Node):
    schema = NodeSchema(type_id="Scale", category="test",
                        inputs=(Socket("a", "INT"), Float("factor", 1.0, min=0.0, max=10.0),
                                Combo("mode", ["floor", "round"])),
                        outputs=(Out("INT"), Out("FLOAT")))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, factor: float, mode: str) -> tuple[int, float]:
        CALLS.append(ctx.node_id)
        value = a * factor
        return (int(value) if mode == "floor" else round(value), value)


class Steps(Node):
    """Reports progress for `steps` steps, sleeping `delay` seconds each; an interruption point per step."""

    schema = NodeSchema(type_id="Steps", category="test",
                        inputs=(Socket("a", "INT"), Int("steps", 5, min=1, max=10000), Float("delay", 0.0, min=0, max=1)),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, steps: int, delay: float) -> tuple[int]:
        CALLS.append(ctx.node_id)
        for step in range(1, steps + 1):
            time.sleep(delay)
            ctx.progress(step, steps)
        return (a,)


class Stoppable(Node):
    """Waits up to `steps` x `delay` seconds for an interruption and then raises a bare `Interrupted()`, as the
    sampler's StoppableDenoiser does (it knows no node id)."""

    schema = NodeSchema(type_id="Stoppable", category="test",
                        inputs=(Socket("a", "INT"), Int("steps", 1, min=1, max=10000), Float("delay", 0.0, min=0, max=1)),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, steps: int, delay: float) -> tuple[int]:
        CALLS.append(ctx.node_id)
        for _ in range(steps):
            time.sleep(delay)
            if ctx.interrupted:
                raise Interrupted()
        raise Interrupted()


class Fail(Node):
    schema = NodeSchema(type_id="Fail", category="test", inputs=(Socket("a", "INT"), String("message", "boom")),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, message: str) -> tuple[int]:
        CALLS.append(ctx.node_id)
        raise RuntimeError(message)


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (a RuntimeError of that name) without importing torch."""


RAISABLE: dict[str, type[BaseException]] = {
    "MemoryError": MemoryError, "OutOfMemoryError": OutOfMemoryError, "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit, "RuntimeError": RuntimeError,
}


class Raise(Node):
    """Raises the exception type it names (out of memory, Ctrl-C, ...) when it runs."""

    schema = NodeSchema(type_id="Raise", category="test",
                        inputs=(Socket("a", "INT"), Combo("error", list(RAISABLE)), String("message", "")),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, error: str, message: str) -> tuple[int]:
        CALLS.append(ctx.node_id)
        raise RAISABLE[error](*([message] if message else []))


class FileValue(Node):
    """Reads a number from a file; its fingerprint is the file's content digest, so edits invalidate the cache."""

    schema = NodeSchema(type_id="FileValue", category="test", inputs=(String("path"),), outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, path: str) -> tuple[int]:
        CALLS.append(ctx.node_id)
        with open(path) as handle:
            return (int(handle.read()),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, path: str) -> Any:
        return ctx.fingerprint_file(path)


class Text(Node):
    """A string to link into a converted widget (ComfyUI's PrimitiveString)."""

    schema = NodeSchema(type_id="Text", category="test", inputs=(String("value"),), outputs=(Out("STRING"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: str) -> tuple[str]:
        CALLS.append(ctx.node_id)
        return (value,)


class Random(Node):
    schema = NodeSchema(type_id="Random", category="test", inputs=(), outputs=(Out("INT"),), deterministic=False)
    counter = 0

    @classmethod
    def execute(cls, ctx: NodeContext) -> tuple[int]:
        CALLS.append(ctx.node_id)
        Random.counter += 1
        return (Random.counter,)


class Collect(Node):
    """Output node: shows its value."""

    schema = NodeSchema(type_id="Collect", category="test", inputs=(Socket("value", "INT"),),
                        output_node=True)

    @classmethod
    def execute(cls, ctx: NodeContext, value: int) -> NodeResult:
        CALLS.append(ctx.node_id)
        return NodeResult(ui={"value": [value]})


class MakeList(Node):
    schema = NodeSchema(type_id="MakeList", category="test", inputs=(Int("length", 3, min=0, max=100),),
                        outputs=(Out("LIST"),))

    @classmethod
    def execute(cls, ctx: NodeContext, length: int) -> tuple[list[int]]:
        CALLS.append(ctx.node_id)
        return (list(range(length)),)


class Passthrough(Node):
    schema = NodeSchema(type_id="Passthrough", category="test", inputs=(Socket("a", "INT"),), outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int) -> tuple[int]:
        return (a,)


class Sink(Node):
    schema = NodeSchema(type_id="Sink", category="test", inputs=(Socket("a", "INT"),), output_node=True)

    @classmethod
    def execute(cls, ctx: NodeContext, a: int) -> NodeResult:
        return NodeResult(ui={"value": [a]})


ALL = (Number, Add, Scale, Steps, Stoppable, Fail, Raise, FileValue, Text, Random, Collect, MakeList, Passthrough, Sink)


def registry() -> NodeRegistry:
    return NodeRegistry(ALL)


def workflow(nodes: dict[str, tuple[str, dict[str, Any]]], links: list[tuple[str, int, str, str]]) -> Workflow:
    """Terse workflow builder: nodes {id: (type, widgets)}, links [(from, slot, to, input)]."""
    return Workflow(
        nodes={nid: NodeInstance(type=t, widgets=w) for nid, (t, w) in nodes.items()},
        links=[Link(from_node=a, from_slot=s, to_node=b, to_input=i) for a, s, b, i in links],
    )


def chain(length: int, node_type: str = "Passthrough") -> Workflow:
    """Number -> node_type x length -> Sink, built without recursion."""
    nodes: dict[str, tuple[str, dict[str, Any]]] = {"0": ("Number", {"value": 1})}
    links = []
    for i in range(1, length + 1):
        nodes[str(i)] = (node_type, {})
        links.append((str(i - 1), 0, str(i), "a"))
    nodes[str(length + 1)] = ("Sink", {})
    links.append((str(length), 0, str(length + 1), "a"))
    return workflow(nodes, links)
