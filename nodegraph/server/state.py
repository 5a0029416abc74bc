"""What the routes share: the engine, the queue store, the WebSocket hub and the worker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..executor import Engine
from ..plan import CompiledGraph
from ..workflow import Workflow
from .config import ServerConfig
from .queue_store import QueueStore
from .ws import WebSocketHub

T = TypeVar("T")


class ServerState:
    """One per application. Store calls run on one database thread, so SQLite's fsyncs never stall the loop."""

    def __init__(self, engine: Engine, config: ServerConfig, store: QueueStore, hub: WebSocketHub) -> None:
        from .worker import Worker

        self.engine = engine
        self.config = config
        self.store = store
        self.hub = hub
        self.compile_lock = threading.Lock()
        self._db_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nodegraph-db")
        self.worker: Any
        if config.ray is not None:
            from .ray_pool import RayWorkers

            settings = dataclasses.replace(config.ray, max_attempts=config.max_attempts)
            self.worker = RayWorkers(settings, store, hub, self.db, self.broadcast_status, engine.env)
        else:
            self.worker = Worker(engine, store, hub, self.db, self.broadcast_status, self.compile_lock,
                                 batch_prompts=config.batch_prompts)

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, functools.partial(fn, *args, **kwargs))

    def compile(self, workflow: Workflow, outputs: list[str] | None) -> CompiledGraph:
        """Validate (thread-safe with the worker's compiles). Raises ValidationFailed."""
        with self.compile_lock:
            return self.engine.compile(workflow, outputs)

    def workers_info(self) -> list[dict[str, Any]]:
        """/system_stats' "workers": each worker's name, device and what it runs."""
        if hasattr(self.worker, "workers_info"):
            return self.worker.workers_info()
        device = str(getattr(self.engine.env, "device", "cpu"))
        return [{"name": "local", "device": device, "alive": True, "busy": bool(self.worker.running),
                 "running": sorted(self.worker.running), "batch_prompts": self.worker.batch_prompts}]

    def status_data(self, remaining: int) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": remaining}}}

    def broadcast_status(self, remaining: int) -> None:
        """ComfyUI tells every client the queue size on each change."""
        self.hub.send("status", self.status_data(remaining))

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)
        self.store.close()


STATE = web.AppKey("nodegraph_state", ServerState)
