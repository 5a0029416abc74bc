"""`serve --workers N` on a local Ray runtime: one queue, two worker processes, nothing lost when one dies, and
/interrupt reaching the worker that runs the prompt."""

from __future__ import annotations

import asyncio
import os

import pytest

pytest.importorskip("ray")

from nodegraph.app import AppConfig  # noqa: E402
from nodegraph.server.ray_pool import RaySettings  # noqa: E402
from nodegraph.server.state import STATE  # noqa: E402
from server_helpers import api_prompt, messages_until, next_message, prompt_done, serve, submit, wait_history  # noqa: E402

TIMEOUT = 240.0
"""Starting Ray and two worker processes takes seconds (more on a busy machine) than the usual 30 s bound."""


def _settings(root, **overrides) -> RaySettings:
    config = AppConfig(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                       models_dir=root / "models")
    return RaySettings(**{"workers": 2, "app_config": config, "nodes_modules": ("node_pack:register",),
                          "threads": 1, **overrides})


async def _workers_up(client, count: int) -> list[dict]:
    async with asyncio.timeout(TIMEOUT / 2):
        while True:
            workers = (await (await client.get("/system_stats")).json())["workers"]
            if sum(w["alive"] and "pid" in w for w in workers) >= count:
                return workers
            await asyncio.sleep(0.2)


async def _two_workers(root):
    async with serve(root, ray=_settings(root)) as client:
        workers = await _workers_up(client, 2)
        assert len({w["pid"] for w in workers}) == 2 and os.getpid() not in {w["pid"] for w in workers}
        ws = await client.ws_connect("/ws?clientId=erin")
        await next_message(ws)
        ids = [(await submit(client, api_prompt(i, steps=5, delay=0.05), client_id="erin"))["prompt_id"]
               for i in range(6)]
        events = await messages_until(ws, prompt_done(ids[-1]), timeout=TIMEOUT / 2)
        entries = [await wait_history(client, pid, timeout=TIMEOUT / 2) for pid in ids]
        pool = client.app[STATE].worker
        return ids, events, entries, pool


def test_two_ray_workers_share_one_queue(tmp_path):
    ids, events, entries, pool = asyncio.run(asyncio.wait_for(_two_workers(tmp_path), TIMEOUT))
    assert all(e["status"]["status_str"] == "success" for e in entries)
    assert [e["outputs"]["3"]["value"] for e in entries] == [[i] for i in range(6)]
    progress = [m for m in events if isinstance(m, tuple) and m[0] == "progress"]
    assert {m[1]["prompt_id"] for m in progress} == set(ids)  # each worker's progress reached the client
    assert set(pool.assignments.values()) == {"worker-0", "worker-1"}  # both workers ran prompts
    assert max(pool.dispatch_seconds) < 0.5


async def _killed(root):
    async with serve(root, ray=_settings(root)) as client:
        await _workers_up(client, 2)
        pool = client.app[STATE].worker
        victim = (await submit(client, api_prompt(7, steps=200, delay=0.02)))["prompt_id"]
        async with asyncio.timeout(TIMEOUT / 2):
            while victim not in pool.assignments:
                await asyncio.sleep(0.05)
        import ray

        await asyncio.sleep(0.5)
        ray.kill(pool._actors[pool.assignments[victim]])
        entry = await wait_history(client, victim, timeout=TIMEOUT / 2)
        after = (await (await client.get("/queue")).json())
        long = (await submit(client, api_prompt(8, steps=500, delay=0.02)))["prompt_id"]
        async with asyncio.timeout(TIMEOUT / 4):
            while long not in pool.assignments:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await client.post("/interrupt", json={"prompt_id": long})
        stopped = await wait_history(client, long, timeout=TIMEOUT / 4)
        return victim, entry, pool, after, stopped


def test_a_killed_worker_has_its_prompt_run_elsewhere_once(tmp_path):
    victim, entry, pool, queue, stopped = asyncio.run(asyncio.wait_for(_killed(tmp_path), TIMEOUT))
    assert pool.lost == [victim]
    assert entry["status"]["status_str"] == "success" and entry["outputs"]["3"]["value"] == [7]
    assert queue == {"queue_running": [], "queue_pending": []}
    # /interrupt with a prompt id reaches the worker running it
    assert [m[0] for m in stopped["status"]["messages"]][-1] == "execution_interrupted"
