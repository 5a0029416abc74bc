"""What runs inside a worker process (a Ray actor): its own Engine, the prompts it is given, their events.

The actor knows nothing of the queue: the server's `RayWorkers` claims a prompt, calls `run` and, while it runs,
polls `events` for what the prompt's `PromptEvents` sent (the same messages the in-process worker sends), and
forwards them to the /ws clients. `run` returns the prompt's outputs and status for the history, and, when asked
(a worker on another machine), the bytes of the files its output nodes wrote, so the server can serve them.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
from pathlib import Path
from typing import Any

from ..context import CancelToken
from ..errors import Interrupted, NodeExecutionError, ValidationFailed
from .events import PromptEvents
from .queue_store import QueueItem

EVENTS_KEPT = 4096
"""Events a worker keeps for the server to poll; older ones of a prompt are dropped (only previews pile up)."""


class RecordingHub:
    """Stands in for the WebSocketHub inside a worker: records what would be sent, in order."""

    def __init__(self, previews: bool) -> None:
        self.previews = previews
        self.sent: list[tuple[Any, ...]] = []
        self.first = 0
        self._lock = threading.Lock()

    def threadsafe(self, callback: Any, *args: Any) -> None:
        callback(*args)

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        self._record(("json", event, data, sid))

    def send_preview(self, frame: bytes, sid: str | None = None) -> None:
        self._record(("preview", frame, sid))

    def wants_previews(self, sid: str | None) -> bool:
        return self.previews

    def _record(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.sent.append(message)
            if len(self.sent) > EVENTS_KEPT:
                del self.sent[0]
                self.first += 1

    def since(self, index: int) -> tuple[int, list[tuple[Any, ...]]]:
        with self._lock:
            start = max(index - self.first, 0)
            return self.first + len(self.sent), self.sent[start:]


class WorkerProcess:
    """One worker: an Engine built from the server's settings, running one prompt at a time.

    Args:
        app_config: the server's `AppConfig` (folders, device, precision); the worker's engine is built from it.
        nodes_modules: `--nodes-module` specs, or () for the installed node packs.
        threads: torch CPU threads for this worker (None leaves torch's default).
        name: shown in /system_stats.
    """

    def __init__(self, app_config: Any, nodes_modules: tuple[str, ...] = (), threads: int | None = None,
                 name: str = "worker") -> None:
        import torch

        from ..app import build_engine
        from ..cli import load_node_packs

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.engine = build_engine(app_config, load_node_packs(list(nodes_modules)) if nodes_modules else None)
        self.compile_lock = threading.Lock()
        self.hub: RecordingHub | None = None
        self.cancel: CancelToken | None = None

    def info(self) -> dict[str, Any]:
        import torch

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"name": self.name, "device": str(self.engine.env.device), "pid": os.getpid(),
                "host": socket.gethostname(), "threads": torch.get_num_threads(),
                "cpu_seconds": usage.ru_utime + usage.ru_stime}

    def run(self, item: dict[str, Any], previews: bool = False, send_files: bool = False) -> dict[str, Any]:
        """Run one queued prompt; returns {"outputs", "messages", "status", "files"} (never raises for the
        prompt's own failures: they are its result)."""
        from .worker import run_prompt

        queued = QueueItem(**item)
        self.hub = hub = RecordingHub(previews)
        self.cancel = cancel = CancelToken()
        events = PromptEvents(hub, queued.prompt_id, queued.client_id)  # type: ignore[arg-type]
        try:
            run_prompt(self.engine, queued, events, cancel, self.compile_lock)
        except Interrupted as exc:
            if events.status is None:
                events.interrupted(exc)
        except NodeExecutionError as exc:
            if events.status is None:
                events.failed(exc)
        except ValidationFailed as exc:
            events.failed(exc, exc.issues[0].node_id if exc.issues else None)
        except BaseException as exc:  # noqa: BLE001 - the prompt's failure is its result, the worker goes on
            if events.status is None:
                events.failed(exc)
        files = self._files(events.outputs) if send_files else []
        return {"outputs": events.outputs, "messages": events.messages, "status": events.status, "files": files}

    def events(self, index: int) -> tuple[int, list[tuple[Any, ...]]]:
        """What the running (or last) prompt sent from `index` on, and the index to ask from next."""
        return (0, []) if self.hub is None else self.hub.since(index)

    def interrupt(self) -> bool:
        if self.cancel is None:
            return False
        self.cancel.cancel()
        return True

    def free(self, unload_models: bool, free_memory: bool) -> None:
        from .worker import _free

        _free(self.engine, unload_models, free_memory)

    def _files(self, outputs: dict[str, Any]) -> list[tuple[str, str, str, bytes]]:
        """(type, subfolder, filename, bytes) of every file the output nodes list (images, gifs, ...)."""
        env = self.engine.env
        roots = {"output": Path(env.output_dir), "temp": Path(env.temp_dir)}
        found = []
        for ui in outputs.values():
            for entries in ui.values():
                for entry in entries if isinstance(entries, list) else []:
                    if not (isinstance(entry, dict) and entry.get("type") in roots and "filename" in entry):
                        continue
                    root = roots[entry["type"]]
                    path = (root / entry.get("subfolder", "") / entry["filename"]).resolve()
                    if path.is_relative_to(root.resolve()) and path.is_file():
                        found.append((entry["type"], entry.get("subfolder", ""), entry["filename"], path.read_bytes()))
        return found
