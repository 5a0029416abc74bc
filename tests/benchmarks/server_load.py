"""Load benchmark of `nodegraph serve`: concurrent clients submit small prompts and wait on the WebSocket.

Starts the server as a subprocess on a free loopback port (a temporary data dir, the model-free test node
pack), has CLIENTS clients submit PROMPTS prompts in total (each waits for its own prompts' `executing`
node=None on its WebSocket), then checks the history for every one; first with distinct prompts (every one
executes), then with one prompt repeated (served from the cache: the server path's own cost), reporting the
server's RSS before and after. Bounded in count and time; stops by
itself. The last line printed is one JSON object of figures.

    python tests/benchmarks/server_load.py [--prompts 200] [--clients 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
OVERALL_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def small_prompt(index: int, client: int, cached: bool = False) -> dict:
    """Number -> Add -> Collect: distinct per prompt so every one really executes, or (cached) one prompt that
    every submission repeats, so after the first all are served from the output cache."""
    if cached:
        index, client = -1, -1
    return {"1": {"class_type": "Number", "inputs": {"value": index % 1000}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": client}},
            "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}}}


def rss_mb(pid: int) -> float:
    """The process's resident set now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_ready(base: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                async with session.get(base + "/prompt") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not start in time")


async def run_client(base: str, client: int, count: int, offset: int, latencies: list[float],
                     submit_times: list[float], submitted: list[str], cached: bool) -> None:
    """One client: its own WebSocket, `count` prompts submitted back to back, waits for all of them."""
    client_id = f"bench-{client}"
    pending: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws?clientId={client_id}") as ws:
            await ws.receive(timeout=10)  # the greeting status
            for i in range(count):
                started = time.perf_counter()
                async with session.post(base + "/prompt", json={"prompt": small_prompt(offset + i, client, cached),
                                                                "client_id": client_id}) as response:
                    body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"submit failed: {body}")
                submit_times.append(time.perf_counter() - started)
                pending[body["prompt_id"]] = started
                submitted.append(body["prompt_id"])
            while pending:
                message = await ws.receive(timeout=60)
                if message.type != aiohttp.WSMsgType.TEXT:
                    if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError("WebSocket closed early")
                    continue
                event = json.loads(message.data)
                data = event["data"]
                if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") in pending:
                    latencies.append(time.perf_counter() - pending.pop(data["prompt_id"]))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))] if ordered else float("nan")


async def phase(base: str, prompts: int, clients: int, cached: bool) -> dict:
    """`clients` clients submit `prompts` prompts between them and wait for each; then history is checked."""
    latencies: list[float] = []
    submit_times: list[float] = []
    submitted: list[str] = []
    per_client = [prompts // clients + (1 if c < prompts % clients else 0) for c in range(clients)]
    offsets = [sum(per_client[:c]) for c in range(clients)]
    started = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(
        *(run_client(base, c, per_client[c], offsets[c], latencies, submit_times, submitted, cached)
          for c in range(clients)), return_exceptions=True), OVERALL_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors[:3]:
        print(f"client error: {error!r}", flush=True)
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/history") as response:
            history = await response.json()
    completed = sum(1 for pid in submitted if history.get(pid, {}).get("status", {}).get("status_str") == "success")
    return {
        "submitted": len(submitted),
        "completed": completed,
        "lost": len(submitted) - completed,
        "client_errors": len(errors),
        "prompts_per_s": round(completed / elapsed, 1) if elapsed > 0 else None,
        "p50_latency_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p95_latency_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "p95_submit_ms": round(percentile(submit_times, 0.95) * 1000, 1),
        "seconds": round(elapsed, 2),
    }


async def rerun_latency(base: str, repeats: int = 60, warmup: int = 10) -> float:
    """Median ms for one client to submit an already-run prompt and hear it finish (all served from the cache):
    the server path's own cost, submit -> plan memo -> queue store -> history -> WebSocket."""
    times = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws?clientId=latency") as ws:
            await ws.receive(timeout=10)
            for _ in range(repeats + warmup):
                started = time.perf_counter()
                async with session.post(base + "/prompt", json={"prompt": small_prompt(0, 0, cached=True),
                                                                "client_id": "latency"}) as response:
                    prompt_id = (await response.json())["prompt_id"]
                while True:
                    event = json.loads((await ws.receive(timeout=30)).data)
                    data = event["data"]
                    if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                        break
                times.append(time.perf_counter() - started)
    return percentile(times[warmup:], 0.5) * 1000


async def benchmark(prompts: int, clients: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="nodegraph-load-"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (REPO, REPO / "tests", REPO / "tests/server"))}
    env.pop("NODEGRAPH_TOKEN", None)
    log = open(root / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(port), "--data-dir", str(root / "data"),
         "--output-dir", str(root / "output"), "--device", "cpu", "--nodes-module", "node_pack:register"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, process)
        print(f"server up on {base}; {clients} clients, {prompts} prompts", flush=True)
        rss_before = rss_mb(process.pid)
        uncached = await phase(base, prompts, clients, cached=False)
        cached = await phase(base, prompts, clients, cached=True)
        latency = await rerun_latency(base)
        figures = {**uncached, "cached": cached, "cached_rerun_median_ms": round(latency, 2), "server_rss_before_mb": round(rss_before, 1),
                   "server_rss_after_mb": round(rss_mb(process.pid), 1),
                   "server_peak_rss_mb": round(peak_rss_mb(process.pid), 1)}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    figures = asyncio.run(benchmark(max(args.prompts, 1), max(1, min(args.clients, args.prompts))))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
