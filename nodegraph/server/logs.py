"""The server's recent log records for ComfyUI's frontend's terminal panel (/internal/logs, /internal/logs/raw)."""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .responses import json_response

MAX_ENTRIES = 1000


class LogBuffer(logging.Handler):
    """Keeps the last `MAX_ENTRIES` formatted records, as ComfyUI's `app.logger` keeps its terminal's output.
    Installed on the root logger while the application runs (one per application, never module state)."""

    def __init__(self, capacity: int = MAX_ENTRIES) -> None:
        super().__init__(logging.INFO)
        self.entries: deque[dict[str, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = datetime.fromtimestamp(record.created, timezone.utc).isoformat()
            self.entries.append({"t": stamp, "m": self.format(record) + "\n"})
        except Exception:  # a log line must never break the code that logged it
            self.handleError(record)

    def install(self) -> None:
        logging.getLogger().addHandler(self)

    def remove(self) -> None:
        logging.getLogger().removeHandler(self)


LOG_BUFFER = web.AppKey("nodegraph_log_buffer", LogBuffer)


async def get_logs(request: web.Request) -> web.Response:
    """The recent log as one string of `time - message` lines, as ComfyUI's /internal/logs."""
    entries = list(request.app[LOG_BUFFER].entries)
    return json_response("".join(f"{entry['t']} - {entry['m']}" for entry in entries))


async def get_logs_raw(request: web.Request) -> web.Response:
    """`{entries: [{t, m}], size: {cols, rows}}` as ComfyUI's /internal/logs/raw; we have no terminal, so its
    size is null (the frontend then uses its own)."""
    entries: list[dict[str, Any]] = list(request.app[LOG_BUFFER].entries)
    return json_response({"entries": entries, "size": {"cols": None, "rows": None}})


async def patch_logs_subscribe(request: web.Request) -> web.Response:
    """`{enabled, clientId}`: ComfyUI then streams new log lines over the WebSocket; we do not (the panel shows
    what /internal/logs/raw had), so this only acknowledges, the smallest answer the frontend accepts."""
    return json_response({})
