"""Faults a server must survive: nodes that raise or run out of memory, a queue store that fails to record a
result, and (in real processes) kill -9 while a prompt runs or writes its outputs."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from server_helpers import messages_until, next_message, prompt_done, serve, submit, wait_history
from test_server_process import Server, free_port, marker, wait_for

from nodegraph.server.state import STATE


def raising(error: str, value: int = 1, message: str = "") -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "2": {"class_type": "Raise", "inputs": {"a": ["1", 0], "error": error, "message": message}},
            "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}}}


def collect(value: int) -> dict:
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "3": {"class_type": "Collect", "inputs": {"value": ["1", 0]}}}


class CountingManager:
    def __init__(self) -> None:
        self.frees = 0

    def free(self) -> int:
        self.frees += 1
        return 0


async def test_out_of_memory_fails_the_prompt_clearly_frees_and_the_next_prompt_runs(tmp_path):
    async with serve(tmp_path) as client:
        engine = client.app[STATE].engine
        manager = engine.env.model_manager = CountingManager()
        ws = await client.ws_connect("/ws?clientId=oom")
        await next_message(ws)
        first = (await submit(client, collect(5), client_id="oom"))["prompt_id"]
        await messages_until(ws, prompt_done(first))
        assert len(engine.cache) > 0
        for error in ("MemoryError", "OutOfMemoryError"):
            pid = (await submit(client, raising(error, message="CUDA out of memory" * (error != "MemoryError")),
                                client_id="oom"))["prompt_id"]
            received = await messages_until(ws, prompt_done(pid))
            (data,) = [data for event, data in received if event == "execution_error"]
            assert data["node_id"] == "2" and data["node_type"] == "Raise" and data["exception_type"].endswith(error)
            assert data["exception_message"].startswith("out of memory in node 2 (Raise)")
            assert len(engine.cache) == 0
        assert manager.frees == 2
        after = (await submit(client, collect(6), client_id="oom"))["prompt_id"]
        assert (await wait_history(client, after))["outputs"] == {"3": {"value": [6]}}


async def test_a_node_raising_base_exceptions_fails_its_prompt_and_the_queue_goes_on(tmp_path):
    """KeyboardInterrupt or SystemExit raised by a node (not a signal: those reach the main thread) must not
    take the worker down or leave the prompt running."""
    async with serve(tmp_path) as client:
        ids = [(await submit(client, raising(error, value)))["prompt_id"]
               for value, error in enumerate(("KeyboardInterrupt", "SystemExit", "RuntimeError"))]
        last = (await submit(client, collect(9)))["prompt_id"]
        statuses = [(await wait_history(client, pid))["status"] for pid in ids]
        assert [s["status_str"] for s in statuses] == ["error"] * 3
        assert [s["messages"][-1][0] for s in statuses] == ["execution_interrupted", "execution_error", "execution_error"]
        assert (await wait_history(client, last))["outputs"] == {"3": {"value": [9]}}


def quick_marker(tag: str) -> dict:
    return marker(tag, 1, 0.0)


async def test_a_result_the_store_fails_to_record_is_retried_and_never_run_again(tmp_path, monkeypatch):
    """If writing the finished state failed, the prompt stayed "running" and ran again after a restart."""
    async with serve(tmp_path) as client:
        store = client.app[STATE].store
        real, failures = store.finish, []

        def flaky_finish(*args, **kwargs):
            if len(failures) < 3:
                failures.append(1)
                raise sqlite3.OperationalError("disk I/O error")
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "finish", flaky_finish)
        await submit(client, quick_marker("once"), prompt_id="once")
        entry = await wait_history(client, "once")
        assert entry["status"]["status_str"] == "success" and len(failures) == 3
    async with serve(tmp_path) as client:  # a restart on the same data dir
        await submit(client, quick_marker("later"), prompt_id="later")
        await wait_history(client, "later")
        assert (tmp_path / "output" / "runs.log").read_text().split() == ["once", "later"]


async def test_a_result_that_cannot_be_stored_is_recorded_as_an_error_instead(tmp_path, monkeypatch):
    """A result the store keeps refusing (its outputs, say) is recorded without them: the prompt is done."""
    async with serve(tmp_path) as client:
        store = client.app[STATE].store
        real = store.finish

        def refuses_outputs(prompt_id, outputs, status, meta):
            if outputs:
                raise sqlite3.DataError("string or blob too big")
            return real(prompt_id, outputs, status, meta)

        monkeypatch.setattr(store, "finish", refuses_outputs)
        monkeypatch.setattr("nodegraph.server.worker.FINISH_RETRY_DELAY", 0.001)
        await submit(client, quick_marker("big"), prompt_id="big")
        entry = await wait_history(client, "big")
        assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
        (event, data), = entry["status"]["messages"][-1:]
        assert event == "execution_error" and "could not be recorded" in data["exception_message"]
        await submit(client, quick_marker("next"), prompt_id="next")
        assert (await wait_history(client, "next"))["status"]["status_str"] == "error"  # still refused
    assert (tmp_path / "output" / "runs.log").read_text().split() == ["big", "next"]


def _visible_pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError):
        return False


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9 semantics")
def test_kill_9_while_writing_outputs_leaves_no_half_written_png_and_runs_nothing_twice(tmp_path):
    """Cycles of: queue a prompt that writes big PNGs (and two behind it), kill -9 the server mid-write,
    check every visible PNG is whole, restart: the killed prompt runs once more to the end, the queued ones
    run, the stale partial file is gone, and no finished prompt ever runs again."""
    output = tmp_path / "output"
    caught_mid_write, finished = 0, []
    for cycle in range(10):
        server = Server(tmp_path, free_port())
        try:
            tag = f"big{cycle}"
            server.request("POST", "/prompt", {"prompt": {"1": {"class_type": "SaveNoise", "inputs": {
                "tag": tag, "count": 40, "megabytes": 24, "delay": 0.001}}}, "prompt_id": tag})
            for after in ("a", "b"):
                server.request("POST", "/prompt", {"prompt": marker(f"{tag}-{after}", 1, 0.0),
                                                   "prompt_id": f"{tag}-{after}"})
            wait_for(lambda: list(output.glob(f"{tag}_*_.png")), what=f"{tag} to write")
            time.sleep(random.uniform(0.0, 0.1))
        finally:
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        runs_log = output / "runs.log"
        assert tag not in (runs_log.read_text().split() if runs_log.exists() else []), "killed too late"
        partials = list(output.glob(".partial.*"))
        caught_mid_write += bool(partials)
        assert all(_decodes(path) for path in _visible_pngs(output)), "a half-written PNG is visible"

        server = Server(tmp_path, free_port())
        try:
            ids = [tag, f"{tag}-a", f"{tag}-b"]
            history = wait_for(lambda: (h := server.request("GET", "/history")) and set(ids) <= set(h) and h,
                               what=f"{ids} after the restart")
            assert [history[i]["status"]["status_str"] for i in ids] == ["success"] * 3, server.output()
            finished += ids
        finally:
            assert server.stop(signal.SIGTERM) == 0
        assert not list(output.glob(".partial.*"))  # the restart removed what the killed writer left
        runs = (output / "runs.log").read_text().split()
        assert sorted(runs) == sorted(finished)  # each prompt completed exactly once, none again
        assert all(_decodes(path) for path in _visible_pngs(output))
        for path in _visible_pngs(output):  # checked: make room for the next cycle
            path.unlink()
        if caught_mid_write and cycle >= 1:
            break
    assert caught_mid_write >= 1, "no kill landed mid-write: the test did not test what it says"


async def test_200_prompts_from_20_clients_with_one_that_never_reads(tmp_path):
    """Every prompt completes once with its own result; each client hears only of its own prompts; a client
    that never reads its socket (and asked for previews) holds nobody up."""
    from test_server_ws import _never_reading_client

    clients, per_client = 20, 10
    async with serve(tmp_path) as client:
        lazy = await _never_reading_client(client.server.port, "lazy")
        lazy_ids = [(await submit(client, {
            "1": {"class_type": "Number", "inputs": {"value": 900 + i}},
            "2": {"class_type": "PreviewSteps", "inputs": {"a": ["1", 0], "steps": 20}},
            "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}}}, client_id="lazy"))["prompt_id"]
            for i in range(3)]

        async def one_client(index: int) -> dict[str, int]:
            sid = f"c{index}"
            ws = await client.ws_connect(f"/ws?clientId={sid}")
            await next_message(ws)
            values = {}
            for k in range(per_client):
                value = index * per_client + k
                values[(await submit(client, collect(value), client_id=sid))["prompt_id"]] = value
            pending, seen = set(values), set()
            async with asyncio.timeout(25):
                while pending:
                    message = await next_message(ws, timeout=25)
                    if isinstance(message, tuple) and "prompt_id" in message[1]:
                        seen.add(message[1]["prompt_id"])
                        if prompt_done(message[1]["prompt_id"])(message):
                            pending.discard(message[1]["prompt_id"])
            assert seen <= set(values), f"{sid} heard of prompts that are not its own"
            await ws.close()
            return values

        results = await asyncio.gather(*(one_client(i) for i in range(clients)))
        history = await (await client.get("/history")).json()
        expected = {pid: value for values in results for pid, value in values.items()}
        assert len(expected) == clients * per_client
        for pid, value in expected.items():
            assert history[pid]["status"]["status_str"] == "success"
            assert history[pid]["outputs"] == {"3": {"value": [value]}}
        for pid in lazy_ids:
            assert (await wait_history(client, pid))["status"]["status_str"] == "success"
        assert (await (await client.get("/queue")).json()) == {"queue_running": [], "queue_pending": []}
        lazy.close()
