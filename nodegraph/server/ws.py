"""The WebSocket hub: ComfyUI's `/ws?clientId=` protocol, JSON events to a client id (or all) plus preview frames.

Each connection has its own bounded outbox drained by its own task, so one slow client never holds up the
worker or the others. When a client falls behind, its previews are dropped first, then its progress and
status messages; `executing`, `executed` and `execution_*` messages are never dropped: a client that lets
those pile up past the bound, or does not take a single message for `STALL_SECONDS`, is disconnected (it
can reconnect and read /history).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import WSMsgType, web

from . import jsonsafe
from .responses import dumps

log = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
"""ComfyUI's binary event type for a latent preview."""
JPEG = 1
"""ComfyUI's binary image format id for JPEG (2 is PNG)."""

PREVIEW, PROGRESS, ESSENTIAL = 0, 1, 2
"""How much a queued message matters: previews go first, then progress; essential ones are never dropped."""
PROGRESS_EVENTS = frozenset({"progress", "progress_state", "nodegraph.progress", "status"})
"""Events superseded by the next of their kind: droppable when a client falls behind."""
MAX_PREVIEW_BACKLOG = 16
"""Previews are dropped while a client has this many messages waiting."""
MAX_PROGRESS_BACKLOG = 256
"""Progress and status messages are dropped while a client has this many messages waiting."""
MAX_OUTBOX = 2000
"""Messages waiting for one client; past it, waiting previews then progress make room, else it is dropped."""
MAX_OUTBOX_BYTES = 32 * 1024**2
"""Bytes waiting for one client, bounded the same way."""
STALL_SECONDS = 60.0
"""A client whose socket has not taken one message for this long, with more waiting, is disconnected."""


def preview_frame(jpeg: bytes) -> bytes:
    """A binary preview frame: big-endian event type, big-endian image format, then the JPEG bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + jpeg


OWN_EVENT_PREFIX = "nodegraph."
"""Our own WebSocket event types start with this; ComfyUI's frontend logs any type it does not know as an error,
so they go only to clients that ask (`?nodegraph_events=1`, or `nodegraph_events: true` in feature_flags)."""


def is_own_event(event: str) -> bool:
    return event.startswith(OWN_EVENT_PREFIX)


def priority(event: str) -> int:
    return PROGRESS if event in PROGRESS_EVENTS else ESSENTIAL


class Connection:
    """One client socket and its bounded outbox.

    Args:
        ws: the prepared WebSocket.
        sid: the client id.
        previews: whether this client wants preview frames.
        abort: closes the socket at once, without a close handshake (a client that stopped reading would never
            take one); None when the transport is unknown.
        own_events: send this client our own event types too (see `is_own_event`).
    """

    def __init__(self, ws: web.WebSocketResponse, sid: str, previews: bool,
                 abort: Callable[[], None] | None = None, own_events: bool = False) -> None:
        self.ws = ws
        self.sid = sid
        self.previews = previews
        self.own_events = own_events
        """This client asked for our own event types (`nodegraph.*`), which ComfyUI's clients do not know."""
        self._abort = abort
        self._outbox: deque[tuple[int, str | bytes]] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._sending_since: float | None = None
        self.gone = False
        """Disconnected for falling behind: nothing more is queued."""
        self.dropped = 0

    @property
    def backlog(self) -> int:
        """Messages waiting (the one being sent not included)."""
        return len(self._outbox)

    @property
    def backlog_bytes(self) -> int:
        return self._bytes

    def put(self, item: str | bytes, level: int = ESSENTIAL) -> None:
        """Queue a message of importance `level` (PREVIEW, PROGRESS or ESSENTIAL), or drop it as the policy says."""
        if self.gone or self._closing:
            return
        if self._sending_since is not None and time.monotonic() - self._sending_since > STALL_SECONDS:
            self.disconnect(f"its socket took nothing for {STALL_SECONDS:.0f} s")
            return
        waiting = len(self._outbox)
        if (level == PREVIEW and waiting >= MAX_PREVIEW_BACKLOG) or (level == PROGRESS and waiting >= MAX_PROGRESS_BACKLOG):
            self.dropped += 1
            return
        size = len(item)
        while len(self._outbox) >= MAX_OUTBOX or self._bytes + size > MAX_OUTBOX_BYTES:
            if level == ESSENTIAL and self._evict():
                continue
            if level != ESSENTIAL:
                self.dropped += 1
                return
            self.disconnect(f"{len(self._outbox)} messages ({self._bytes} bytes) wait for it")
            return
        self._outbox.append((level, item))
        self._bytes += size
        self._wake.set()

    def _evict(self) -> bool:
        """Drop the oldest waiting preview, else the oldest progress message; False when there is neither."""
        for level in (PREVIEW, PROGRESS):
            for index, (queued, item) in enumerate(self._outbox):
                if queued == level:
                    del self._outbox[index]
                    self._bytes -= len(item)
                    self.dropped += 1
                    return True
        return False

    def close(self) -> None:
        """Send what is waiting, then close."""
        self._closing = True
        self._wake.set()

    def disconnect(self, reason: str) -> None:
        """Drop everything waiting and close the socket now: the client stays behind."""
        if self.gone:
            return
        log.warning("ws client %s is not reading (%s); disconnecting it", self.sid, reason)
        self.gone = True
        self._outbox.clear()
        self._bytes = 0
        self._wake.set()
        if self._abort is not None:
            self._abort()

    async def pump(self) -> None:
        """Send queued messages in order until closed or the peer goes away."""
        try:
            while True:
                while not self._outbox:
                    if self._closing or self.gone:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                _, item = self._outbox.popleft()
                self._bytes -= len(item)
                self._sending_since = time.monotonic()
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                else:
                    await self.ws.send_str(item)
                self._sending_since = None
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
            log.debug("ws %s: send failed: %s", self.sid, exc)
        finally:
            if not self.ws.closed and not self.gone:
                await self.ws.close()


class WebSocketHub:
    """Connected clients by client id; `send` is called on the event loop, `threadsafe` from elsewhere."""

    def __init__(self, server_features: dict[str, Any]) -> None:
        self._clients: dict[str, list[Connection]] = {}
        self._preview_sids: frozenset[str] = frozenset()
        self._any_preview = False
        self.server_features = server_features
        self.loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._clients.values())

    def _connections(self, sid: str | None) -> Iterable[Connection]:
        if sid is None:
            return [conn for conns in self._clients.values() for conn in conns]
        return list(self._clients.get(sid, ()))

    def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """Queue a JSON event for one client id, or for everyone when `sid` is None."""
        targets = self._connections(sid)
        if not targets:
            return
        if is_own_event(event):
            targets = [conn for conn in targets if conn.own_events]
        text = dumps({"type": event, "data": data})
        level = priority(event)
        for conn in targets:
            conn.put(text, level)

    def send_preview(self, frame: bytes, sid: str | None = None) -> None:
        for conn in self._connections(sid):
            if conn.previews:
                conn.put(frame, PREVIEW)

    def wants_previews(self, sid: str | None) -> bool:
        """Readable from the worker thread: is anyone there to show a preview to (worth encoding it)?"""
        return self._any_preview if sid is None else sid in self._preview_sids

    def threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` on the event loop from another thread (the worker's hooks)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed meanwhile: nobody is listening any more
            pass

    def _refresh_previews(self) -> None:
        sids = {sid for sid, conns in self._clients.items() if any(c.previews for c in conns)}
        self._preview_sids = frozenset(sids)
        self._any_preview = bool(sids)

    async def handle(self, request: web.Request,
                     greeting: Callable[[str], list[tuple[str, dict[str, Any]]]]) -> web.WebSocketResponse:
        """Serve one WebSocket: greet it (status, current node), then read feature flags until it closes."""
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        previews = request.query.get("previews", "").lower() in ("1", "true", "yes")
        own_events = request.query.get("nodegraph_events", "").lower() in ("1", "true", "yes")
        transport = request.transport
        conn = Connection(ws, sid, previews, transport.abort if transport is not None else None, own_events)
        self._clients.setdefault(sid, []).append(conn)
        self._refresh_previews()
        pump = asyncio.create_task(conn.pump())
        try:
            for event, data in greeting(sid):
                conn.put(dumps({"type": event, "data": data}))
            async for message in ws:
                if conn.gone:
                    break
                if message.type == WSMsgType.TEXT:
                    self._on_text(conn, message.data)
                elif message.type == WSMsgType.ERROR:
                    log.debug("ws %s closed with %s", sid, ws.exception())
        finally:
            conns = self._clients.get(sid, [])
            if conn in conns:
                conns.remove(conn)
            if not conns:
                self._clients.pop(sid, None)
            self._refresh_previews()
            conn.close()
            await asyncio.wait([pump], timeout=5)
        return ws

    def _on_text(self, conn: Connection, text: str) -> None:
        """Clients may announce `feature_flags`; `supports_preview_metadata` asks for preview frames,
        `nodegraph_events` for our own event types."""
        try:
            message = jsonsafe.loads(text)
        except (ValueError, TypeError):  # JsonRefused too: malformed or nested too deeply
            return
        if not isinstance(message, dict) or message.get("type") != "feature_flags":
            return
        data = message.get("data")
        if isinstance(data, dict) and data.get("supports_preview_metadata"):
            conn.previews = True
            self._refresh_previews()
        if isinstance(data, dict) and data.get("nodegraph_events") is True:
            conn.own_events = True
        conn.put(dumps({"type": "feature_flags", "data": self.server_features}))

    async def close_all(self) -> None:
        for conn in self._connections(None):
            conn.close()
            if not conn.gone:
                await conn.ws.close(code=1001, message=b"server shutdown")
