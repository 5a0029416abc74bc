"""Many workers on Ray: the server keeps the one queue and history, Ray actors run the prompts.

`serve --workers N` starts a local Ray runtime with N worker actors (one GPU each when there are enough GPUs,
CPU workers otherwise); `--ray ADDRESS` joins an existing cluster. SQLite stays the source of truth: the
dispatcher claims the next prompt, gives it to the idle worker with the most affinity (`dispatch.choose`),
forwards the worker's events to /ws clients as they come, and records the result. A worker that dies (its
process killed, its machine gone) has its prompt put back in the queue while it has attempts left
(`QueueStore.requeue_lost`: only a prompt still marked running, so none runs twice) and is replaced.

Ray is an optional extra (`pip install -e '.[ray]'`); nothing here imports it until `start`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..paths import atomic_write_bytes
from .dispatch import WorkerSlot, choose, prompt_keys
from .queue_store import QueueItem, QueueStore
from .ws import WebSocketHub

log = logging.getLogger(__name__)
POLL_S = 0.05
"""How often the server asks a busy worker for its prompt's events (progress, previews)."""


@dataclass
class RaySettings:
    """How the worker pool starts.

    Args:
        workers: actors to start.
        address: an existing Ray cluster ("auto", "ray://host:10001", ...); None starts a local runtime.
        app_config: the server's AppConfig, from which each worker builds its engine.
        nodes_modules: `--nodes-module` specs the workers load (default: the installed node packs).
        threads: torch threads per CPU worker (default: the machine's cores shared out).
        send_files: workers send their output files back (needed when they run on other machines; the
            default is True when joining a cluster, False for a local runtime that shares this file system).
        max_attempts: how often a prompt may be started (one lost with its worker is re-queued until then);
            the server sets it from its own `ServerConfig.max_attempts`.
    """

    workers: int = 2
    address: str | None = None
    app_config: Any = None
    nodes_modules: tuple[str, ...] = ()
    threads: int | None = None
    send_files: bool | None = None
    max_attempts: int = 2


class RayWorkers:
    """The server's side of the pool; the same methods as the in-process `Worker`."""

    def __init__(self, settings: RaySettings, store: QueueStore, hub: WebSocketHub,
                 db: Callable[..., Awaitable[Any]], on_queue_change: Callable[[int], None], env: Any) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.db = db
        self.on_queue_change = on_queue_change
        self.env = env
        self.slots: list[WorkerSlot] = []
        self._actors: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._current_nodes: dict[str, tuple[str | None, str]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._drives: set[asyncio.Task[None]] = set()
        self.dispatch_seconds: list[float] = []
        """Per prompt: from its claim to the worker being handed it (the dispatcher's own overhead)."""
        self.lost: list[str] = []
        """Prompts whose worker died while running them."""
        self.assignments: dict[str, str] = {}
        """Prompt id -> the worker that last ran it (bounded to the most recent prompts)."""

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._start_and_loop(), name="nodegraph-ray-dispatch")

    async def _start_and_loop(self) -> None:
        await asyncio.to_thread(self._init_ray)
        await asyncio.gather(*(self._new_actor(f"worker-{i}") for i in range(self.settings.workers)))
        await self._loop()

    def _init_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.settings.address:
            ray.init(address=self.settings.address, log_to_driver=False)
            return
        path = os.pathsep.join(p for p in sys.path if p)  # workers import what this process imports
        ray.init(num_cpus=max(self.settings.workers, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})

    async def _new_actor(self, name: str) -> None:
        import ray

        from .remote_worker import WorkerProcess

        options: dict[str, Any] = {"max_concurrency": 4, "num_cpus": 1}  # run, events and interrupt at once
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus >= self.settings.workers:
            options["num_gpus"] = 1
        threads = self.settings.threads or max((os.cpu_count() or 1) // self.settings.workers, 1)
        actor = ray.remote(**options)(WorkerProcess).remote(self.settings.app_config, self.settings.nodes_modules,
                                                            threads, name)
        info = await actor.info.remote()
        slot = next((s for s in self.slots if s.name == name), None)
        if slot is None:
            slot = WorkerSlot(name, device=info["device"])
            self.slots.append(slot)
        slot.alive, slot.busy, slot.running, slot.device = True, False, None, info["device"]
        slot.keys.clear()
        self._actors[name] = actor
        self._info[name] = info
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for slot in self.slots:
            if slot.running is not None:
                self.interrupt(slot.running)
        self._wake.set()
        pending = [t for t in (self._task, *self._drives) if t is not None]
        if pending:
            done, not_done = await asyncio.wait(pending, timeout=timeout)
            for task in not_done:
                task.cancel()
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        import ray

        for actor in self._actors.values():
            ray.kill(actor)
        if not self.settings.address and ray.is_initialized():
            ray.shutdown()

    # -- what the routes ask --------------------------------------------------------------------------

    def interrupt(self, prompt_id: str | None = None) -> bool:
        hit = False
        for slot in self.slots:
            if slot.running is not None and (prompt_id is None or slot.running == prompt_id):
                self._actors[slot.name].interrupt.remote()
                hit = True
        return hit

    def current_node(self, client_id: str) -> tuple[str, str] | None:
        for prompt_id, (client, node) in self._current_nodes.items():
            if client == client_id:
                return prompt_id, node
        return None

    def free(self, unload_models: bool, free_memory: bool) -> None:
        for actor in self._actors.values():
            actor.free.remote(unload_models, free_memory)

    def workers_info(self) -> list[dict[str, Any]]:
        return [{**self._info.get(slot.name, {}), "name": slot.name, "device": slot.device, "alive": slot.alive,
                 "busy": slot.busy, "running": slot.running} for slot in self.slots]

    # -- dispatching ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                while not self._stopping and any(s.alive and not s.busy for s in self.slots):
                    claimed_at = time.perf_counter()
                    item = await self.db(self.store.claim_next)
                    if item is None:
                        break
                    keys = prompt_keys(item.prompt)
                    slot = choose(self.slots, keys)
                    assert slot is not None  # an idle slot exists and only this loop takes slots
                    slot.busy, slot.running = True, item.prompt_id
                    self.assignments[item.prompt_id] = slot.name
                    while len(self.assignments) > 10_000:
                        del self.assignments[next(iter(self.assignments))]
                    task = asyncio.create_task(self._drive(slot, item, keys, claimed_at))
                    self._drives.add(task)
                    task.add_done_callback(self._drives.discard)
            except Exception:  # keep dispatching; a broken database shows in the log
                log.exception("dispatcher: unexpected error")
                await asyncio.sleep(1.0)
            await self._wake.wait()

    async def _drive(self, slot: WorkerSlot, item: QueueItem, keys: dict[str, tuple[str, bool]],
                     claimed_at: float) -> None:
        from ray.exceptions import RayActorError, WorkerCrashedError

        actor = self._actors[slot.name]
        send_files = self.settings.send_files if self.settings.send_files is not None else bool(self.settings.address)
        ref = actor.run.remote(asdict(item), self.hub.wants_previews(item.client_id), send_files)
        self.dispatch_seconds.append(time.perf_counter() - claimed_at)
        index = 0
        try:
            while True:
                done, _ = await asyncio.to_thread(_wait, ref, POLL_S)
                index = await self._forward(actor, item, index)
                if done:
                    break
            result = await ref
            await self._forward(actor, item, index)
        except (RayActorError, WorkerCrashedError) as exc:
            await self._lost(slot, item, exc)
            return
        finally:
            self._current_nodes.pop(item.prompt_id, None)
        if result["files"]:
            await asyncio.to_thread(self._write_files, result["files"])
        success = result["status"] == "success"
        if self._stopping and result["status"] == "interrupted":
            await self.db(self.store.release, item.prompt_id)
        else:
            status = {"status_str": "success" if success else "error", "completed": success,
                      "messages": result["messages"]}
            meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                    for nid in result["outputs"]}
            remaining = await self.db(self.store.finish, item.prompt_id, result["outputs"], status, meta)
            self.on_queue_change(remaining)
            self.hub.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id)
        slot.remember(key for key, _ in keys.values())
        slot.busy, slot.running, slot.last_busy = False, None, time.monotonic()
        self._wake.set()

    async def _forward(self, actor: Any, item: QueueItem, index: int) -> int:
        index, messages = await actor.events.remote(index)
        for message in messages:
            if message[0] == "json":
                _, event, data, sid = message
                if event == "executing" and data.get("node") is not None:
                    self._current_nodes[item.prompt_id] = (item.client_id, data["node"])
                self.hub.send(event, data, sid)
            else:
                self.hub.send_preview(message[1], message[2])
        return index

    async def _lost(self, slot: WorkerSlot, item: QueueItem, exc: BaseException) -> None:
        log.error("%s died running prompt %s: %s", slot.name, item.prompt_id, exc)
        self.lost.append(item.prompt_id)
        slot.alive, slot.busy, slot.running = False, False, None
        requeued = await self.db(self.store.requeue_lost, item.prompt_id, self.settings.max_attempts,
                                 f"its worker ({slot.name}) died while running it")
        if not requeued:
            self.on_queue_change(await self.db(self.store.remaining))
            self.hub.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.client_id)
        if not self._stopping:
            await self._new_actor(slot.name)

    def _write_files(self, files: list[tuple[str, str, str, bytes]]) -> None:
        """Files a worker on another machine wrote: put them where /view finds them (never over a file)."""
        roots = {"output": Path(self.env.output_dir), "temp": Path(self.env.temp_dir)}
        for kind, subfolder, filename, data in files:
            root = roots[kind].resolve()
            path = (root / subfolder / filename).resolve()
            if not path.is_relative_to(root) or path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)


def _wait(ref: Any, timeout: float) -> tuple[bool, None]:
    import ray

    ready, _ = ray.wait([ref], timeout=timeout)
    return bool(ready), None
