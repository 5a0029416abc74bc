"""The in-process worker: takes prompts from the SQLite queue in order and runs them on the shared Engine.

The engine runs on a dedicated daemon thread (so a stuck node cannot hold the process at exit); this
coroutine, on the event loop, does all bookkeeping. A failing or interrupted prompt is recorded in the
history and the queue goes on.

With `batch_prompts` N > 1 it claims, with the next prompt, up to N - 1 more queued prompts of the same shape
(`dispatch.shape_signature`) and runs them side by side, one thread and one Engine each (sharing the output cache
and the model manager), joined in a `nodegraph.batching.Rendezvous` so their sampler calls stack into one UNet call.
Each prompt keeps its own events, result, interruption and failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..batching import Rendezvous, joined
from ..context import CancelToken
from ..errors import Interrupted, NodeExecutionError, ValidationFailed
from ..executor import Engine, RunResult
from ..models import release_memory
from .dispatch import shape_signature
from .events import PromptEvents
from .queue_store import QueueItem, QueueStore
from .submit import build_workflow, run_metadata
from .ws import WebSocketHub

log = logging.getLogger(__name__)

FINISH_RETRIES = 5
"""Tries at recording a prompt's result as it is; then it is recorded as an error without its outputs."""
FINISH_RETRY_DELAY = 0.05
"""Seconds before the second try; doubled each time, up to 2 s."""


class RunThread:
    """A single daemon thread running jobs in submission order (prompts, and /free between them)."""

    def __init__(self, name: str = "nodegraph-run") -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)


@dataclass
class Running:
    item: QueueItem
    events: PromptEvents
    cancel: CancelToken


class Worker:
    """Runs queued prompts one at a time.

    Args:
        engine: shared by every prompt (and its output cache with them).
        store: the persistent queue.
        hub: where the prompts' events go.
        db: runs a store call off the event loop (`await db(store.method, *args)`).
        on_queue_change: called on the loop with the prompts remaining after each one finishes.
        compile_lock: shared with submission-time validation (the engine's plan memo is not thread-safe).
        batch_prompts: how many prompts of one shape may run side by side with stacked sampler calls.
    """

    def __init__(self, engine: Engine, store: QueueStore, hub: WebSocketHub,
                 db: Callable[..., Awaitable[Any]], on_queue_change: Callable[[int], None],
                 compile_lock: threading.Lock, *, batch_prompts: int = 1) -> None:
        if batch_prompts < 1:
            raise ValueError(f"batch_prompts must be at least 1, got {batch_prompts}")
        self.engine = engine
        self.store = store
        self.hub = hub
        self.db = db
        self.on_queue_change = on_queue_change
        self.compile_lock = compile_lock
        self.batch_prompts = batch_prompts
        self.running: dict[str, Running] = {}
        self._engines = [engine] + [Engine(engine.registry, env=engine.env, cache=engine.cache, hooks=engine.hooks)
                                    for _ in range(batch_prompts - 1)]
        self._runners = [RunThread(f"nodegraph-run-{i}") for i in range(batch_prompts)]
        self._runner = self._runners[0]
        self.last_group: dict[str, Any] = {}
        """The last group run: its prompt ids and its rendezvous' counts (what stacked)."""
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="nodegraph-worker")

    def wake(self) -> None:
        """A prompt was queued: look again."""
        self._wake.set()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running prompt (only `prompt_id`, when given; else every running one); True if one was
        asked to stop."""
        targets = [r for r in self.running.values() if prompt_id is None or r.item.prompt_id == prompt_id]
        for running in targets:
            running.cancel.cancel()
        return bool(targets)

    def current_node(self, client_id: str) -> tuple[str, str] | None:
        """(prompt id, node id) being executed for this client, to re-announce it on reconnect."""
        for current in self.running.values():
            if current.item.client_id == client_id and current.events.current_node is not None:
                return current.item.prompt_id, current.events.current_node
        return None

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Drop cached outputs and node packs' model caches, between prompts (never under a running one)."""
        self._runner.submit(_free, self.engine, unload_models, free_memory)

    async def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the running prompt (it goes back to the queue, its attempt not counted) and stop."""
        self._stopping = True
        for running in list(self.running.values()):
            running.cancel.cancel()
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=timeout)
            if not done:
                log.warning("a node did not stop within %.0f s; leaving it to be re-queued at the next start", timeout)
                self._task.cancel()
        for runner in self._runners:
            runner.stop()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                self._wake.clear()
                item = await self.db(self.store.claim_next)
                if item is None:
                    await self._wake.wait()
                    continue
                group = [item]
                if self.batch_prompts > 1:
                    shape = shape_signature(item.prompt)
                    group += await self.db(self.store.claim_more, lambda p: shape_signature(p) == shape,
                                           self.batch_prompts - 1)
                await self._process_group(group)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; a broken database shows in the log, not as a dead queue
                log.exception("worker: unexpected error")
                await asyncio.sleep(1.0)

    async def _process_group(self, items: list[QueueItem]) -> None:
        if len(items) == 1:
            await self._process(items[0])
            return
        rendezvous = Rendezvous(len(items))
        await asyncio.gather(*(self._process(item, slot, rendezvous) for slot, item in enumerate(items)))
        self.last_group = {"prompts": [item.prompt_id for item in items], **rendezvous.stats}

    async def _process(self, item: QueueItem, slot: int = 0, rendezvous: Rendezvous | None = None) -> None:
        events = PromptEvents(self.hub, item.prompt_id, item.client_id)
        running = Running(item, events, CancelToken())
        self.running[item.prompt_id] = running
        try:
            future = self._runners[slot].submit(self._run, item, events, running.cancel, self._engines[slot], rendezvous)
            await asyncio.wrap_future(future)
        except Interrupted as exc:
            if self._stopping:
                await self.db(self.store.release, item.prompt_id)
                return
            if events.status is None:
                events.interrupted(exc)
        except NodeExecutionError as exc:
            if events.status is None:
                events.failed(exc)
        except ValidationFailed as exc:  # e.g. a model file deleted since the prompt was queued
            events.failed(exc, exc.issues[0].node_id if exc.issues else None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a node's KeyboardInterrupt or SystemExit must not end the worker
            if events.status is None:
                log.exception("prompt %s failed outside any node", item.prompt_id)
                events.failed(exc)
        finally:
            self.running.pop(item.prompt_id, None)
        success = events.status == "success"
        status = {"status_str": "success" if success else "error", "completed": success, "messages": events.messages}
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in events.outputs}
        remaining = await self._record(item, events.outputs, status, meta)
        self.on_queue_change(remaining)
        self.hub.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id)

    async def _record(self, item: QueueItem, outputs: dict[str, Any], status: dict[str, Any],
                      meta: dict[str, Any]) -> int:
        """Move the prompt to the history, retrying: one left "running" would run again after a restart.

        A result the store keeps refusing is recorded as an error without its outputs (the prompt is done
        either way); if even that fails, the worker keeps trying and takes no other prompt meanwhile.
        """
        delay = FINISH_RETRY_DELAY
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.db(self.store.finish, item.prompt_id, outputs, status, meta)
            except Exception as exc:
                log.error("prompt %s: recording its result failed (try %d): %s: %s", item.prompt_id, attempt,
                          type(exc).__name__, exc)
                if attempt == FINISH_RETRIES:
                    outputs, meta, status = {}, {}, _unrecorded_status(item.prompt_id, exc)
                if self._stopping and attempt >= 2 * FINISH_RETRIES:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _run(self, item: QueueItem, events: PromptEvents, cancel: CancelToken, engine: Engine,
             rendezvous: Rendezvous | None = None) -> RunResult:
        """On a run thread: rebuild the stored prompt exactly as it was validated, and run it."""
        with joined(rendezvous):
            return run_prompt(engine, item, events, cancel, self.compile_lock)


def run_prompt(engine: Engine, item: QueueItem, events: PromptEvents, cancel: CancelToken,
               compile_lock: threading.Lock) -> RunResult:
    """Build, compile and run one stored prompt on `engine`, its events going to `events`."""
    registry = engine.registry
    workflow = build_workflow(item.prompt, item.extra_data, registry)
    with compile_lock:
        graph = engine.compile(workflow, item.outputs_to_execute or None)
    events.graph = graph
    metadata = run_metadata(item.prompt, workflow, item.extra_data, registry)
    result = engine.run(graph, hooks=[events], cancel=cancel, run_id=item.prompt_id, metadata=metadata)
    events.status = "success"
    return result


def _unrecorded_status(prompt_id: str, exc: BaseException) -> dict[str, Any]:
    message = (f"the prompt ran, but its result could not be recorded ({type(exc).__name__}: {exc}); "
               "its outputs may be in the output folder")
    data = {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [], "exception_message": message,
            "exception_type": "ResultNotRecorded", "traceback": [], "current_inputs": {}, "current_outputs": [],
            "timestamp": int(time.time() * 1000)}
    return {"status_str": "error", "completed": False, "messages": [["execution_error", data]]}


def _free(engine: Engine, unload_models: bool, free_memory: bool) -> None:
    """POST /free: cached outputs go with either flag; loaded models with unload_models (ComfyUI's meaning),
    through the model manager that owns them. Then freed memory is handed back to the OS."""
    if unload_models or free_memory:
        engine.cache.clear()
    manager = getattr(engine.env, "model_manager", None)
    if unload_models and manager is not None:
        manager.free()
    release_memory()
