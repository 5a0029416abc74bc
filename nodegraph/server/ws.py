"""The WebSocket hub: ComfyUI's `/ws?clientId=` protocol, JSON events to a client id (or all) plus preview frames.

Each connection has its own outbox drained by its own task, so one slow client never holds up the worker
or the others; its previews are dropped first when it falls behind.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
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
MAX_OUTBOX = 2000
"""Messages waiting for one client before it is considered gone."""
MAX_PREVIEW_BACKLOG = 64
"""Previews are dropped while a client has this many messages waiting."""


def preview_frame(jpeg: bytes) -> bytes:
    """A binary preview frame: big-endian event type, big-endian image format, then the JPEG bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + jpeg


class Connection:
    def __init__(self, ws: web.WebSocketResponse, sid: str, previews: bool) -> None:
        self.ws = ws
        self.sid = sid
        self.previews = previews
        self.outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    def put(self, item: str | bytes) -> None:
        if isinstance(item, bytes) and self.outbox.qsize() >= MAX_PREVIEW_BACKLOG:
            return
        if self.outbox.qsize() >= MAX_OUTBOX:
            log.warning("ws client %s is not reading; disconnecting it", self.sid)
            self.close()
            return
        self.outbox.put_nowait(item)

    def close(self) -> None:
        self.outbox.put_nowait(None)

    async def pump(self) -> None:
        """Send queued messages in order until closed or the peer goes away."""
        try:
            while (item := await self.outbox.get()) is not None:
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                else:
                    await self.ws.send_str(item)
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
            log.debug("ws %s: send failed: %s", self.sid, exc)
        finally:
            if not self.ws.closed:
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
        text = dumps({"type": event, "data": data})
        for conn in targets:
            conn.put(text)

    def send_preview(self, frame: bytes, sid: str | None = None) -> None:
        for conn in self._connections(sid):
            if conn.previews:
                conn.put(frame)

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
        conn = Connection(ws, sid, previews)
        self._clients.setdefault(sid, []).append(conn)
        self._refresh_previews()
        pump = asyncio.create_task(conn.pump())
        try:
            for event, data in greeting(sid):
                conn.put(dumps({"type": event, "data": data}))
            async for message in ws:
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
        """Clients may announce `feature_flags`; `supports_preview_metadata` asks for preview frames."""
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
        conn.put(dumps({"type": "feature_flags", "data": self.server_features}))

    async def close_all(self) -> None:
        for conn in self._connections(None):
            conn.close()
            await conn.ws.close(code=1001, message=b"server shutdown")
