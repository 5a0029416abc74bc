"""Scale-out benchmark: 64 small prompts on the embedded model from 8 clients, through the server.

Configurations, each on a fresh server (in this process, aiohttp's TestServer) and data dir:
- `single`: the in-process worker, one prompt at a time (torch threads: --threads);
- `ray1` / `ray2`: 1 and 2 Ray worker processes on a local runtime, --threads torch threads each;
- `batched`: the in-process worker with --batch-prompts 8 (queued prompts of one shape stacked).

Every prompt is txt2img at 128 px (Euler, --steps steps, CFG 6) with its own seed and caption. Throughput is
prompts per second from the first submission to the last result; the images of every configuration are compared
pixel for pixel with `single`'s. Also reported: each configuration's CPU seconds per prompt (the process' own,
plus its workers' for Ray) and the dispatcher's overhead per prompt (claim to hand-over). Run on a quiet
machine; the last line printed is one JSON object of figures.

    python tests/benchmarks/scale_out.py [--prompts 64] [--clients 8] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "server")]

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from batching_helpers import PROMPTS, embedded_prompt, saved_pixels  # noqa: E402
from nodegraph.app import AppConfig, build_engine  # noqa: E402
from nodegraph.server import ServerConfig, create_app  # noqa: E402
from nodegraph.server.state import STATE  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prompt_for(index: int, steps: int) -> dict:
    return embedded_prompt(1000 + index, PROMPTS[index % len(PROMPTS)], steps=steps, size=128, prefix=f"p{index}")


async def run_config(name: str, root: Path, args: argparse.Namespace, **server: object) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    app_config = AppConfig(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                           models_dir=root / "models")
    engine = build_engine(app_config)
    if "workers" in server:
        from nodegraph.server.ray_pool import RaySettings

        server = {"ray": RaySettings(workers=int(server.pop("workers")), app_config=app_config, threads=args.threads)}
    app = create_app(engine, ServerConfig(host="127.0.0.1", port=0, data_dir=root / "data", durable=False, **server))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        pool = app[STATE].worker
        workers = pool.settings.workers if "ray" in server else 1
        while sum("pid" in w for w in (await (await client.get("/system_stats")).json())["workers"]) < workers \
                and "ray" in server:  # Ray workers start in the background
            await asyncio.sleep(0.2)
        # warm up every worker (imports, model load) outside the timing
        warm = [(await (await client.post("/prompt", json={"prompt": prompt_for(10_000 + i, args.steps)})).json())
                ["prompt_id"] for i in range(workers)]
        await wait_all(client, warm)
        before_cpu, before_workers = cpu_seconds(), await worker_cpu(pool)
        started = time.perf_counter()

        async def one_client(c: int) -> list[tuple[int, str]]:
            """Connect, submit this client's share of the prompts at once, wait on the socket for all of them."""
            ws = await client.ws_connect(f"/ws?clientId=client-{c}")
            ids = []
            for i in range(c, args.prompts, args.clients):
                body = {"prompt": prompt_for(i, args.steps), "client_id": f"client-{c}"}
                ids.append((i, (await (await client.post("/prompt", json=body)).json())["prompt_id"]))
            waiting = {pid for _, pid in ids}
            while waiting:
                message = await ws.receive(timeout=1800)
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data["type"] == "executing" and data["data"]["node"] is None:
                        waiting.discard(data["data"]["prompt_id"])
            await ws.close()
            return ids

        submitted = [pair for ids in await asyncio.gather(*(one_client(c) for c in range(args.clients))) for pair in ids]
        entries = await wait_all(client, [pid for _, pid in submitted])
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - before_cpu + (await worker_cpu(pool)) - before_workers
        images = {i: saved_pixels(root / "output", entries[pid]["outputs"]["9"]) for i, pid in submitted}
        figures = {"prompts_per_s": args.prompts / seconds, "seconds": seconds, "cpu_s_per_prompt": cpu / args.prompts,
                   "failed": sum(e["status"]["status_str"] != "success" for e in entries.values())}
        if hasattr(pool, "last_group"):
            figures["last_group_size"] = len(pool.last_group.get("prompts", ())) or 1
        if hasattr(pool, "dispatch_seconds"):
            timed = pool.dispatch_seconds[-args.prompts:]
            figures["dispatch_ms_mean"] = 1000 * sum(timed) / len(timed)
            figures["dispatch_ms_max"] = 1000 * max(timed)
        return {"name": name, "figures": figures, "images": images}
    finally:
        await client.close()


async def worker_cpu(pool: object) -> float:
    """Ray workers' CPU seconds so far (0 for the in-process worker: counted with this process)."""
    actors = getattr(pool, "_actors", {})
    if not actors:
        return 0.0
    infos = await asyncio.gather(*(actor.info.remote() for actor in actors.values()))
    return sum(info["cpu_seconds"] for info in infos)


async def wait_all(client: TestClient, ids: list[str], timeout: float = 1800.0) -> dict[str, dict]:
    found: dict[str, dict] = {}
    async with asyncio.timeout(timeout):
        while len(found) < len(ids):
            history = await (await client.get("/history", params={"max_items": "100000"})).json()
            found = {pid: history[pid] for pid in ids if pid in history}
            await asyncio.sleep(0.25)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", default="single,batched,ray1,ray2")
    args = parser.parse_args()
    options = {"single": {}, "batched": {"batch_prompts": 8}, "ray1": {"workers": 1}, "ray2": {"workers": 2}}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            result = asyncio.run(run_config(name, Path(tmp) / name, args, **options[name]))
            results[name] = result
            print(name, json.dumps({k: round(v, 4) for k, v in result["figures"].items()}), flush=True)
    base = results.get("single")
    figures: dict[str, object] = {"prompts": args.prompts, "clients": args.clients, "steps": args.steps,
                                  "threads_per_worker": args.threads}
    for name, result in results.items():
        for key, value in result["figures"].items():
            figures[f"{name}_{key}"] = round(value, 4)
        if base is not None and name != "single":
            same = [np.array_equal(base["images"][i], result["images"][i]) for i in base["images"]]
            diff = max(float(np.abs(base["images"][i].astype(int) - result["images"][i].astype(int)).max())
                       for i in base["images"])
            figures[f"{name}_identical_images"] = sum(same)
            figures[f"{name}_max_pixel_diff"] = diff
            figures[f"{name}_speedup"] = round(result["figures"]["prompts_per_s"] / base["figures"]["prompts_per_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
