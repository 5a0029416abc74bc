"""The WebSocket protocol: the exact event sequence of a run, errors, interruption, previews, targeting."""

import asyncio
import base64
import io
import os
import socket
import struct

from PIL import Image
import nodegraph.server.ws as ws_module
from nodegraph.server.state import STATE
from server_helpers import api_prompt, messages_until, next_message, prompt_done, serve, submit, wait_history, wait_running


def _strip(messages):
    """(type, data) without timestamps, so sequences compare exactly."""
    out = []
    for message in messages:
        event, data = message
        out.append((event, {k: v for k, v in data.items() if k != "timestamp"}))
    return out


async def test_exact_sequence_of_a_run_then_of_a_cached_rerun(tmp_path):
    async with serve(tmp_path) as client:
        ws = await client.ws_connect("/ws?clientId=alice&nodegraph_events=1")  # our own nodegraph.progress too
        assert await next_message(ws) == ("status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "alice"})
        prompt = api_prompt(5, steps=2)
        pid = (await submit(client, prompt, client_id="alice"))["prompt_id"]
        received = _strip(await messages_until(ws, prompt_done(pid)))
        p = {"prompt_id": pid}
        assert received == [
            ("status", {"status": {"exec_info": {"queue_remaining": 1}}}),
            ("execution_start", p),
            ("execution_cached", {"nodes": [], **p}),
            ("nodegraph.progress", {**p, "done": 0, "total": 3, "node": None}),
            ("executing", {"node": "1", "display_node": "1", **p}),
            ("nodegraph.progress", {**p, "done": 1, "total": 3, "node": "1"}),
            ("executing", {"node": "2", "display_node": "2", **p}),
            ("progress", {"value": 1, "max": 2, **p, "node": "2"}),
            ("progress", {"value": 2, "max": 2, **p, "node": "2"}),
            ("nodegraph.progress", {**p, "done": 2, "total": 3, "node": "2"}),
            ("executing", {"node": "3", "display_node": "3", **p}),
            ("executed", {"node": "3", "display_node": "3", "output": {"value": [5]}, **p}),
            ("nodegraph.progress", {**p, "done": 3, "total": 3, "node": "3"}),
            ("execution_success", p),
            ("status", {"status": {"exec_info": {"queue_remaining": 0}}}),
            ("executing", {"node": None, **p}),
        ]
        pid = (await submit(client, prompt, client_id="alice"))["prompt_id"]  # same prompt: all cached
        received = _strip(await messages_until(ws, prompt_done(pid)))
        p = {"prompt_id": pid}
        assert received == [
            ("status", {"status": {"exec_info": {"queue_remaining": 1}}}),
            ("execution_start", p),
            ("execution_cached", {"nodes": ["3"], **p}),  # a cached output needs nothing upstream
            ("nodegraph.progress", {**p, "done": 0, "total": 0, "node": None}),
            ("executed", {"node": "3", "display_node": "3", "output": {"value": [5]}, **p}),
            ("execution_success", p),
            ("status", {"status": {"exec_info": {"queue_remaining": 0}}}),
            ("executing", {"node": None, **p}),
        ]


async def test_own_event_types_only_for_clients_that_ask(tmp_path):
    """ComfyUI's frontend logs every event type it does not know as an error: nodegraph.* events go only to a
    client that asked, by query parameter or by a feature_flags message (as ComfyUI's frontend sends on connect)."""
    async with serve(tmp_path) as client:
        plain = await client.ws_connect("/ws?clientId=comfy")
        await next_message(plain)
        flagged = await client.ws_connect("/ws?clientId=comfy")
        await next_message(flagged)
        await flagged.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": False,
                                                                   "nodegraph_events": True}})
        assert (await next_message(flagged))[0] == "feature_flags"
        pid = (await submit(client, api_prompt(7, steps=1), client_id="comfy"))["prompt_id"]
        plain_events = [m[0] for m in await messages_until(plain, prompt_done(pid))]
        flagged_events = [m[0] for m in await messages_until(flagged, prompt_done(pid))]
        assert "nodegraph.progress" not in plain_events and "progress" in plain_events
        assert flagged_events.count("nodegraph.progress") == 4  # start, then one per executed node
        assert [e for e in flagged_events if e != "nodegraph.progress"] == plain_events


async def test_execution_error_message(tmp_path):
    async with serve(tmp_path) as client:
        ws = await client.ws_connect("/ws?clientId=bob")
        await next_message(ws)
        pid = (await submit(client, api_prompt(1, fail=True), client_id="bob"))["prompt_id"]
        received = await messages_until(ws, prompt_done(pid))
        (error,) = [data for event, data in received if event == "execution_error"]
        assert error["prompt_id"] == pid and error["node_id"] == "4" and error["node_type"] == "Fail"
        assert error["exception_type"] == "builtins.RuntimeError" and error["exception_message"] == "boom"
        assert error["executed"] == ["1"] and error["current_inputs"]["message"] == ["boom"]
        assert isinstance(error["traceback"], list) and "RuntimeError: boom" in error["traceback"][-1]
        assert "1" in error["current_outputs"]
        assert [event for event, _ in received][-3:] == ["execution_error", "status", "executing"]


async def test_interrupted_message(tmp_path):
    async with serve(tmp_path) as client:
        ws = await client.ws_connect("/ws?clientId=carol")
        await next_message(ws)
        pid = (await submit(client, api_prompt(1, steps=100, delay=0.02), client_id="carol"))["prompt_id"]
        await messages_until(ws, lambda m: m[0] == "progress")
        await client.post("/interrupt")
        received = await messages_until(ws, prompt_done(pid))
        (data,) = [data for event, data in received if event == "execution_interrupted"]
        assert data["prompt_id"] == pid and data["node_id"] == "2" and data["node_type"] == "Steps"
        assert data["executed"] == ["1"]


async def test_interruption_inside_a_sampler_names_the_node(tmp_path):
    """StoppableDenoiser raises Interrupted() without a node id: the message must still name the node."""
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Stoppable", "inputs": {"a": ["1", 0], "steps": 500, "delay": 0.01}},
              "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}}}
    async with serve(tmp_path) as client:
        ws = await client.ws_connect("/ws?clientId=dan")
        await next_message(ws)
        pid = (await submit(client, prompt, client_id="dan"))["prompt_id"]
        await messages_until(ws, lambda m: m[0] == "executing" and m[1]["node"] == "2")
        await client.post("/interrupt")
        received = await messages_until(ws, prompt_done(pid))
        (data,) = [data for event, data in received if event == "execution_interrupted"]
        assert data["node_id"] == "2" and data["node_type"] == "Stoppable" and data["executed"] == ["1"]
        history = await wait_history(client, pid)
        assert history["status"]["messages"][-1][1]["node_id"] == "2"


async def test_events_go_to_the_submitting_client_and_status_to_all(tmp_path):
    async with serve(tmp_path) as client:
        mine = await client.ws_connect("/ws?clientId=mine")
        other = await client.ws_connect("/ws?clientId=other")
        await next_message(mine), await next_message(other)
        pid = (await submit(client, api_prompt(2), client_id="mine"))["prompt_id"]
        await messages_until(mine, prompt_done(pid))
        seen = [await next_message(other), await next_message(other)]
        assert [event for event, _ in seen] == ["status", "status"]
        reconnect = await client.ws_connect("/api/ws")  # no clientId: a fresh sid is assigned
        event, data = await next_message(reconnect)
        assert event == "status" and len(data["sid"]) == 32


async def test_client_id_inside_extra_data_is_honoured(tmp_path):
    async with serve(tmp_path) as client:
        ws = await client.ws_connect("/ws?clientId=legacy")
        await next_message(ws)
        pid = (await submit(client, api_prompt(8), extra_data={"client_id": "legacy"}))["prompt_id"]
        events = [m[0] for m in await messages_until(ws, prompt_done(pid))]
        assert "execution_success" in events


async def test_reconnecting_client_learns_the_running_node(tmp_path):
    async with serve(tmp_path) as client:
        pid = (await submit(client, api_prompt(1, steps=100, delay=0.02), client_id="dave"))["prompt_id"]
        await wait_running(client, pid)
        ws = await client.ws_connect("/ws?clientId=dave")
        assert (await next_message(ws))[0] == "status"
        event, data = await next_message(ws)
        assert event == "executing" and data["prompt_id"] == pid
        await client.post("/interrupt")


def _preview_prompt():
    return {"1": {"class_type": "Number", "inputs": {"value": 1}},
            "2": {"class_type": "PreviewSteps", "inputs": {"a": ["1", 0], "steps": 2}},
            "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}}}


async def test_previews_only_for_clients_that_ask(tmp_path):
    async with serve(tmp_path) as client:
        plain = await client.ws_connect("/ws?clientId=eve")
        await next_message(plain)
        pid = (await submit(client, _preview_prompt(), client_id="eve"))["prompt_id"]
        assert not any(isinstance(m, bytes) for m in await messages_until(plain, prompt_done(pid)))

        flagged = await client.ws_connect("/ws?clientId=eve")
        await next_message(flagged)
        await flagged.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        event, flags = await next_message(flagged)
        assert event == "feature_flags" and flags["supports_preview_metadata"] is True
        prompt = _preview_prompt()
        prompt["1"]["inputs"]["value"] = 2  # not cached
        pid = (await submit(client, prompt, client_id="eve"))["prompt_id"]
        received = await messages_until(flagged, prompt_done(pid))
        frames = [m for m in received if isinstance(m, bytes)]
        assert len(frames) == 2
        event_type, image_format = struct.unpack(">II", frames[0][:8])
        assert (event_type, image_format) == (1, 1)
        with Image.open(io.BytesIO(frames[0][8:])) as image:
            assert image.format == "JPEG" and image.size == (64, 48)
        # a frame arrives after the progress message it belongs to
        index = next(i for i, m in enumerate(received) if isinstance(m, bytes))
        assert received[index - 1][0] == "progress"

        query = await client.ws_connect("/ws?clientId=frank&previews=1")
        await next_message(query)
        prompt["1"]["inputs"]["value"] = 3
        pid = (await submit(client, prompt, client_id="frank"))["prompt_id"]
        assert sum(isinstance(m, bytes) for m in await messages_until(query, prompt_done(pid))) == 2


class BlockedSocket:
    """A WebSocket whose peer never reads: the first send never completes."""

    closed = False

    def __init__(self):
        self.sent = []

    async def send_str(self, text):
        self.sent.append(text)
        await asyncio.Event().wait()

    send_bytes = send_str

    async def close(self):
        self.closed = True


async def test_outbox_drops_previews_then_progress_and_never_execution_messages(monkeypatch):
    monkeypatch.setattr(ws_module, "MAX_OUTBOX", 300)
    aborted = []
    conn = ws_module.Connection(BlockedSocket(), "slow", True, abort=lambda: aborted.append(True))
    pump = asyncio.create_task(conn.pump())
    conn.put("first")
    await asyncio.sleep(0)  # the pump is now stuck sending it
    for i in range(1000):
        conn.put(b"preview", ws_module.PREVIEW)
        conn.put(f"progress {i}", ws_module.PROGRESS)
    assert conn.backlog == ws_module.MAX_PROGRESS_BACKLOG > ws_module.MAX_PREVIEW_BACKLOG
    waiting = lambda: [level for level, _ in conn._outbox]  # noqa: E731
    assert waiting().count(ws_module.PREVIEW) == ws_module.MAX_PREVIEW_BACKLOG // 2
    for i in range(ws_module.MAX_OUTBOX):
        conn.put(f"executed {i}")
        assert conn.backlog <= ws_module.MAX_OUTBOX and not aborted
    assert waiting() == [ws_module.ESSENTIAL] * ws_module.MAX_OUTBOX  # previews went first, then progress
    assert [item for _, item in conn._outbox][0] == "executed 0"
    conn.put("executed one too many")
    assert aborted and conn.gone and conn.backlog == 0 and conn.backlog_bytes == 0
    conn.put("after")
    assert conn.backlog == 0
    pump.cancel()


async def test_stalled_client_is_disconnected(monkeypatch):
    monkeypatch.setattr(ws_module, "STALL_SECONDS", 0.05)
    aborted = []
    conn = ws_module.Connection(BlockedSocket(), "slow", False, abort=lambda: aborted.append(True))
    pump = asyncio.create_task(conn.pump())
    conn.put("first")
    await asyncio.sleep(0.1)
    conn.put("executed")
    assert aborted and conn.gone
    pump.cancel()


async def _never_reading_client(port: int, sid: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads (a tiny receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (f"GET /ws?clientId={sid}&previews=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)  # byte by byte: nothing past the handshake is read
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_client_that_never_reads_is_bounded_then_dropped_and_others_get_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(ws_module, "MAX_OUTBOX_BYTES", 2 * 1024**2)
    async with serve(tmp_path) as client:
        hub = client.app[STATE].hub
        good = await client.ws_connect("/ws?clientId=good")
        await next_message(good)
        lazy = await _never_reading_client(client.server.port, "lazy")
        while "lazy" not in hub._clients:
            await asyncio.sleep(0.01)
        (conn,) = hub._clients["lazy"]
        received = []

        async def read_good():
            while True:
                received.append(await next_message(good))

        reader = asyncio.create_task(read_good())
        peak, sent = 0, 0
        big = "x" * 32 * 1024
        while not conn.gone:
            assert sent < 5000, "the client that never reads was never dropped"
            hub.send("progress", {"value": sent, "max": 0})
            hub.send_preview(b"\0" * 16 * 1024)
            hub.send("executed", {"node": str(sent), "output": {"text": [big]}})
            sent += 1
            peak = max(peak, conn.backlog_bytes)
            await asyncio.sleep(0)
        assert peak <= ws_module.MAX_OUTBOX_BYTES and conn.dropped > 0
        async with asyncio.timeout(5):
            while "lazy" in hub._clients:
                await asyncio.sleep(0.01)
            while sum(1 for m in received if m[0] == "executed") < sent:
                await asyncio.sleep(0.01)
        assert "good" in hub._clients
        assert [m[1]["node"] for m in received if m[0] == "executed"] == [str(i) for i in range(sent)]
        reader.cancel()
        lazy.close()
