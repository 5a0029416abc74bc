"""The engine: validate, plan against the cache, run what is missing, report through hooks."""

from __future__ import annotations

import gc
import hashlib
import inspect
import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .cache import OutputCache, UnhashableInput, node_key
from .context import CancelToken, NodeContext
from .errors import (UNHASHABLE_INPUT, Interrupted, NodeExecutionError, OutOfMemory, ValidationFailed, ValidationIssue,
                     is_out_of_memory)
from .fingerprint import FileFingerprints
from .hooks import Hooks, HookSet, NodeErrorInfo, RunInfo
from .lists import ItemList, ItemProgress, gather_outputs, item_index, map_calls, merge_ui, whole_lists
from .models import release_memory
from .plan import CompiledGraph, CompiledNode
from .registry import NodeRegistry
from .schema import Node, NodeResult
from .validation import check_dynamic_options, check_value, compile_workflow
from .workflow import Workflow

PLAN_MEMO_SIZE = 32
"""Plans remembered; one made for the default outputs is remembered under two keys."""


@contextmanager
def gc_paused() -> Iterator[None]:
    """Planning allocates many small objects at once; the cyclic GC only slows it (not used around nodes)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class RunResult:
    run_id: str
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What each output node showed (e.g. saved images), by node id."""
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """The output values of the run's target nodes, by node id."""
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    """The cache key of every node the outputs need (what made each one reuse or re-run)."""
    seconds: float = 0.0


class Engine:
    """Runs workflows against one node registry, sharing one output cache between runs.

    Args:
        registry: the node types this engine knows (it never imports a node library itself).
        env: the application's environment, handed to nodes as `ctx.env` (paths, devices, model cache).
        cache: the output cache; a default bounded LRU cache when omitted.
        hooks: hooks that watch every run of this engine.

    The engine owns its long-lived state: `cache` (outputs), the plan memo and `fingerprints` (file digests).
    """

    def __init__(self, registry: NodeRegistry, *, env: Any = None, cache: OutputCache | None = None,
                 hooks: Iterable[Hooks] = ()) -> None:
        self.registry = registry
        self.env = env
        self.cache = cache if cache is not None else OutputCache()
        self.hooks = list(hooks)
        self.fingerprints = FileFingerprints()
        self._lock = threading.Lock()
        self._plans: OrderedDict[str, CompiledGraph] = OrderedDict()

    def compile(self, workflow: Workflow | CompiledGraph, outputs: Sequence[str] | None = None) -> CompiledGraph:
        """Validate and plan; an identical workflow reuses its plan, re-checking only what the environment
        can change (COMBO options read from disk). Raises `ValidationFailed`.

        A plan made for the default outputs (None: every output node) is also found by the list of those
        outputs, which is what the server stores with a queued prompt: submission and worker share one plan.
        """
        if isinstance(workflow, CompiledGraph):
            return workflow
        with gc_paused():
            text = workflow.model_dump_json().encode()
            memo_key = _memo_key(text, outputs)
            graph = self._plans.get(memo_key)
            if graph is not None and graph.registry_size == len(self.registry):
                self._plans.move_to_end(memo_key)
                check_dynamic_options(graph, self.env)
                return graph
            graph = compile_workflow(workflow, self.registry, self.env, outputs)
            graph.registry_size = len(self.registry)
            self._plans[memo_key] = graph
            self._plans[_memo_key(text, graph.outputs)] = graph
            while len(self._plans) > PLAN_MEMO_SIZE:
                self._plans.popitem(last=False)
            return graph

    def run(self, workflow: Workflow | CompiledGraph, *, outputs: Sequence[str] | None = None,
            hooks: Iterable[Hooks] = (), cancel: CancelToken | None = None, run_id: str | None = None,
            metadata: dict[str, Any] | None = None) -> RunResult:
        """Run the nodes the outputs need, taking unchanged ones from the cache.

        `metadata` is handed to nodes as `ctx.metadata` (not part of any cache key).

        Raises:
            ValidationFailed: the workflow is invalid; nothing ran.
            NodeExecutionError: a node raised; the run stopped there.
            Interrupted: `cancel` was set; the run stopped at the next check.
        """
        graph = self.compile(workflow, outputs)
        hook = HookSet([*self.hooks, *hooks])
        cancel = cancel or CancelToken()
        run = RunInfo(run_id=run_id or uuid.uuid4().hex, outputs=list(graph.outputs), metadata=dict(metadata or {}))
        with self._lock:  # one run at a time per engine: runs share the cache
            return self._run(graph, run, hook, cancel)

    def _run(self, graph: CompiledGraph, run: RunInfo, hook: HookSet, cancel: CancelToken) -> RunResult:
        started = time.perf_counter()
        with gc_paused():
            order = graph.order()
            nonce = uuid.uuid4().hex  # per run, never the caller's run id: a reused id must not hit the cache
            keys, pending = self._keys(graph, order, nonce)
            store, to_execute = self._plan(graph, order, keys, pending)
        run.order = [nid for nid in order if nid in store or nid in to_execute]
        run.cached = [nid for nid in run.order if nid in store]
        run.execute = [nid for nid in run.order if nid in to_execute]
        run.pending = [nid for nid in run.execute if nid in pending]
        result = RunResult(run_id=run.run_id, cached=list(run.cached))
        hook.run_start(run)
        targets = set(graph.outputs)
        consumers = {nid: 0 for nid in run.order}
        for nid in run.execute:
            for source, _ in graph.nodes[nid].links.values():
                consumers[source] += 1
        try:
            for nid in run.order:
                node = graph.nodes[nid]
                if nid in store:
                    entry_ui = store[nid][1]
                    hook.node_end(run, nid, node.type_id, cached=True, ui=entry_ui, seconds=0.0)
                    if entry_ui:
                        result.ui[nid] = entry_ui
                    continue
                if cancel.cancelled:
                    raise Interrupted(nid)
                if nid in pending:  # its key needed values known only now
                    keys[nid] = self._run_time_key(graph, nid, keys, store, run, hook, nonce)
                    entry = self.cache.get(keys[nid])
                    if entry is not None:
                        store[nid] = (entry.outputs, entry.ui)
                        result.cached.append(nid)
                        hook.node_end(run, nid, node.type_id, cached=True, ui=entry.ui, seconds=0.0)
                if nid not in store:
                    outputs, ui = self._execute(graph, nid, store, run, hook, cancel, keys, nonce)
                    store[nid] = (outputs, ui)
                    result.executed.append(nid)
                    self.cache.put(keys[nid], outputs, ui)
                if store[nid][1]:
                    result.ui[nid] = store[nid][1]
                for source, _ in node.links.values():  # free what no remaining node needs
                    consumers[source] -= 1
                    if consumers[source] == 0 and source not in targets:
                        store.pop(source, None)
        except Interrupted as exc:
            hook.run_end(run, "interrupted", exc)
            raise
        except NodeExecutionError as exc:
            if isinstance(exc, OutOfMemory):
                store.clear()
                self._free_after_out_of_memory()
            hook.run_end(run, "error", exc)
            raise
        except BaseException as exc:  # Ctrl-C, SystemExit, a bug outside any node: watchers still learn the end
            hook.run_end(run, "interrupted" if isinstance(exc, KeyboardInterrupt) else "error", exc)
            raise
        result.values = {nid: store[nid][0] for nid in graph.outputs if nid in store}
        result.keys = {nid: keys[nid] for nid in order if nid in keys}
        result.seconds = time.perf_counter() - started
        hook.run_end(run, "success")
        return result

    def _keys(self, graph: CompiledGraph, order: list[str], nonce: str) -> tuple[dict[str, str], set[str]]:
        """Merkle keys in dependency order, and the "pending" nodes whose keys wait for the run.

        Keys of "static" nodes (deterministic, no fingerprint, all upstream static) depend on the graph alone
        and are kept with the plan for the next run. A node whose fingerprint needs a linked value (a file name
        fed by a link) is keyed at run time once that value is known, and so is everything downstream of it.
        """
        keys: dict[str, str] = {}
        pending: set[str] = set()
        static = graph.static_keys
        issues: list[ValidationIssue] = []
        for nid in order:
            known = static.get(nid)
            if known is not None:
                keys[nid] = known
                continue
            node = graph.nodes[nid]
            schema = node.schema
            if fingerprint_links(node) or any(src in pending for src, _ in node.links.values()):
                pending.add(nid)
                continue
            try:
                keys[nid] = self._key(node, keys, nonce)
                if (not has_fingerprint(node.node_cls) and schema.deterministic
                        and all(src in static for src, _ in node.links.values())):
                    static[nid] = keys[nid]
            except UnhashableInput as exc:
                issues.append(ValidationIssue(type=UNHASHABLE_INPUT, message="Input cannot be hashed for the cache",
                                              details=str(exc), node_id=nid, class_type=schema.type_id))
            except Exception as exc:
                issues.append(ValidationIssue(type="exception_during_validation", message=f"fingerprint failed: {exc}",
                                              details=type(exc).__name__, node_id=nid, class_type=schema.type_id))
        if issues:
            raise ValidationFailed(issues)
        return keys, pending

    def _key(self, node: CompiledNode, keys: dict[str, str], nonce: str, linked: dict[str, Any] | None = None) -> str:
        """One node's key from its upstream keys; `nonce` (new each run) keys non-deterministic nodes and
        `linked` holds the linked values its fingerprint names."""
        schema = node.schema
        upstream = {name: (keys.get(src, src), slot) for name, (src, slot) in node.links.items()}
        fingerprint = None
        if has_fingerprint(node.node_cls):
            ctx = NodeContext(node.id, schema.type_id, self.env, fingerprints=self.fingerprints)
            per_item = map_calls(linked) if linked else None  # a list fed to the fingerprint: one per item
            fingerprint = (node.node_cls.fingerprint(ctx, **node.widgets, **(linked or {})) if per_item is None
                           else [node.node_cls.fingerprint(ctx, **node.widgets, **call) for call in per_item])
        return node_key(schema.type_id, schema.version, node.widgets, upstream, fingerprint,
                        None if schema.deterministic else nonce)

    def _run_time_key(self, graph: CompiledGraph, nid: str, keys: dict[str, str],
                      store: dict[str, tuple[tuple[Any, ...], dict[str, Any]]], run: RunInfo, hook: HookSet,
                      nonce: str) -> str:
        """The key of a pending node, its inputs now known; a fingerprint that fails is this node's error."""
        node = graph.nodes[nid]
        try:
            wanted = fingerprint_links(node)
            linked = {name: value for name, value in self._inputs(node, store).items() if name in wanted}
            return self._key(node, keys, nonce, linked)
        except Exception as exc:
            text = traceback.format_exc()
            hook.node_error(run, NodeErrorInfo(nid, node.type_id, type(exc).__name__, str(exc), text))
            raise NodeExecutionError(nid, node.type_id, exc, text) from exc

    def _plan(self, graph: CompiledGraph, order: list[str], keys: dict[str, str],
              pending: set[str]) -> tuple[dict[str, tuple[tuple[Any, ...], dict[str, Any]]], set[str]]:
        """Walk back from the outputs: a cached node needs nothing upstream, a missing one needs its inputs.
        A pending node (keyed at run time) may execute, so it needs its inputs too."""
        store: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        to_execute: set[str] = set()
        needed = set(graph.outputs)
        for nid in reversed(order):
            if nid not in needed:
                continue
            entry = None if nid in pending else self.cache.get(keys[nid])
            if entry is not None:
                store[nid] = (entry.outputs, entry.ui)  # held for this run even if evicted meanwhile
                continue
            to_execute.add(nid)
            needed.update(src for src, _ in graph.nodes[nid].links.values())
        return store, to_execute

    def _inputs(self, node: CompiledNode, store: dict[str, tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, Any]:
        """The node's keyword arguments: its widgets and its linked values (value types checked now, item by
        item for a list)."""
        kwargs = dict(node.widgets)
        for name, (src, slot) in node.links.items():
            value = store[src][0][slot]
            spec = node.schema.input_map[name]
            if spec.is_value_type:  # a linked INT/FLOAT/...: check it against its constraints now
                items = value if isinstance(value, ItemList) else (value,)
                checked = []
                for index, item in enumerate(items):
                    item, issue = check_value(spec, item, self.env)
                    if issue is not None:
                        where = f" item {index}" if isinstance(value, ItemList) else ""
                        raise ValueError(f"linked value for {name!r}{where}: {issue.message} ({issue.details})")
                    checked.append(item)
                value = ItemList(checked, value.origins) if isinstance(value, ItemList) else checked[0]
            kwargs[name] = value
        return kwargs

    def _call_key(self, node: CompiledNode, keys: dict[str, str], inputs: dict[str, Any], call: dict[str, Any],
                  index: int, nonce: str) -> str:
        """The cache key of one call of a node run once per item: each list input by its item's identity."""
        schema = node.schema
        upstream: dict[str, Any] = {}
        for name, (src, slot) in node.links.items():
            value = inputs[name]
            upstream[name] = (("item", value.identity(item_index(value, index))) if isinstance(value, ItemList)
                              else (keys.get(src, src), slot))
        fingerprint = None
        if has_fingerprint(node.node_cls):
            ctx = NodeContext(node.id, schema.type_id, self.env, fingerprints=self.fingerprints)
            linked = {name: call[name] for name in fingerprint_links(node)}
            fingerprint = node.node_cls.fingerprint(ctx, **node.widgets, **linked)
        return node_key(schema.type_id, schema.version, node.widgets, upstream, fingerprint,
                        None if schema.deterministic else nonce)

    def _execute(self, graph: CompiledGraph, nid: str, store: dict[str, tuple[tuple[Any, ...], dict[str, Any]]],
                 run: RunInfo, hook: HookSet, cancel: CancelToken, keys: dict[str, str],
                 nonce: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Run one node: once, once per item of the lists fed to it (each call cached on its own), or once
        with whole lists (`input_is_list`)."""
        node = graph.nodes[nid]
        schema = node.schema
        hook.node_start(run, nid, schema.type_id)
        started = time.perf_counter()
        item: int | None = None
        try:
            inputs = self._inputs(node, store)
            calls = None if schema.input_is_list else map_calls(inputs)
            if calls is None:
                kwargs = whole_lists(inputs) if schema.input_is_list else inputs
                ctx = NodeContext(nid, schema.type_id, self.env, run, hook, cancel, self.fingerprints)
                outputs, ui = _normalise(node.node_cls.execute(ctx, **kwargs), len(schema.outputs), schema.type_id)
                outputs = gather_outputs(schema.output_is_list, [(outputs, keys[nid])], False, schema.type_id)
            else:
                done, uis = [], []
                for item, call in enumerate(calls):
                    call_key = self._call_key(node, keys, inputs, call, item, nonce)
                    entry = self.cache.get(call_key)
                    if entry is None:
                        if cancel.cancelled:
                            raise Interrupted(nid)
                        ctx = NodeContext(nid, schema.type_id, self.env, run, ItemProgress(hook, item, len(calls)),
                                          cancel, self.fingerprints)
                        returned = node.node_cls.execute(ctx, **call)
                        call_outputs, call_ui = _normalise(returned, len(schema.outputs), schema.type_id)
                        self.cache.put(call_key, call_outputs, call_ui)
                    else:
                        call_outputs, call_ui = entry.outputs, entry.ui
                    done.append((call_outputs, call_key))
                    uis.append(call_ui)
                item = None
                outputs = gather_outputs(schema.output_is_list, done, True, schema.type_id)
                ui = merge_ui(uis)
        except Interrupted as exc:
            raise exc.at_node(nid)
        except Exception as exc:
            text = traceback.format_exc()
            if is_out_of_memory(exc):  # keep no frame (and its tensors) alive through the traceback
                failure: NodeExecutionError = OutOfMemory(nid, schema.type_id, exc.with_traceback(None), text,
                                                          item=item)
            else:
                failure = NodeExecutionError(nid, schema.type_id, exc, text, item=item)
            hook.node_error(run, NodeErrorInfo(nid, schema.type_id, type(exc).__name__, failure.exception_message, text))
            if isinstance(failure, OutOfMemory):
                raise failure from None
            raise failure from exc
        hook.node_end(run, nid, schema.type_id, cached=False, ui=ui, seconds=time.perf_counter() - started)
        return outputs, ui

    def _free_after_out_of_memory(self) -> None:
        """After a node ran out of memory: drop every cached output and every model not in use, so the next
        run starts from clean memory instead of failing the same way."""
        self.cache.clear()
        manager = getattr(self.env, "model_manager", None)
        if manager is not None:
            try:
                manager.free()
            except Exception:  # freeing is best effort; the run's own error is what the user must see
                logging.getLogger(__name__).exception("freeing models after running out of memory failed")
        release_memory()


def _memo_key(workflow_json: bytes, outputs: Sequence[str] | None) -> str:
    digest = hashlib.blake2b(workflow_json, digest_size=20)
    digest.update(repr(None if outputs is None else list(dict.fromkeys(outputs))).encode())
    return digest.hexdigest()


def has_fingerprint(node_cls: type[Node]) -> bool:
    return node_cls.fingerprint.__func__ is not Node.fingerprint.__func__  # type: ignore[attr-defined]


def fingerprint_links(node: CompiledNode) -> frozenset[str]:
    """The linked inputs a node's fingerprint names as parameters: their values are needed to key it."""
    if not has_fingerprint(node.node_cls) or not node.links:
        return frozenset()
    parameters = list(inspect.signature(node.node_cls.fingerprint).parameters.values())[1:]  # after ctx
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(named & node.links.keys())


def _normalise(returned: Any, n_outputs: int, type_id: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(returned, NodeResult):
        outputs, ui = tuple(returned.outputs), dict(returned.ui)
    elif returned is None and n_outputs == 0:
        outputs, ui = (), {}
    elif isinstance(returned, tuple):
        outputs, ui = returned, {}
    else:
        raise TypeError(f"{type_id}.execute must return a tuple or NodeResult, got {type(returned).__name__}")
    if len(outputs) != n_outputs:
        raise TypeError(f"{type_id}.execute returned {len(outputs)} value(s) for {n_outputs} declared output(s)")
    return outputs, ui
