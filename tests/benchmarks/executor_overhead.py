"""Engine overhead on no-op graphs: cold runs (validate + plan + execute) and fully cached re-runs.

Usage: python tests/benchmarks/executor_overhead.py
Last line: one JSON object of named figures.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fake_nodes import chain, registry, workflow  # noqa: E402
from nodegraph import Engine  # noqa: E402


def diamond(width: int, depth: int):
    """Number -> `width` parallel chains of `depth` -> fan-in through Add nodes -> Sink (width*depth + ... nodes)."""
    nodes = {"src": ("Number", {"value": 1})}
    links = []
    tails = []
    for w in range(width):
        prev = "src"
        for d in range(depth):
            nid = f"w{w}d{d}"
            nodes[nid] = ("Passthrough", {})
            links.append((prev, 0, nid, "a"))
            prev = nid
        tails.append(prev)
    for i, tail in enumerate(tails):  # fold: each Add takes one branch (widget b stays literal)
        nodes[f"join{i}"] = ("Add", {"b": i})
        links.append((tail, 0, f"join{i}", "a"))
        nodes[f"sink{i}"] = ("Sink", {})
        links.append((f"join{i}", 0, f"sink{i}", "a"))
    return workflow(nodes, links)


def measure(wf, repeats: int = 3) -> tuple[float, float, int]:
    cold, cached = [], []
    for _ in range(repeats):
        engine = Engine(registry())
        start = time.perf_counter()
        engine.run(wf)
        cold.append(time.perf_counter() - start)
        fresh = wf.model_copy(deep=True)  # as a server sees a re-submitted prompt: equal content, new objects
        start = time.perf_counter()
        result = engine.run(fresh)
        cached.append(time.perf_counter() - start)
        assert not result.executed, "a re-run of an unchanged workflow must be fully cached"
    return min(cold), min(cached), len(wf.nodes)


def main() -> None:
    figures = {}
    cold, cached, n = measure(chain(998))
    print(f"chain    {n:6d} nodes: cold {cold * 1e3:8.1f} ms ({cold / n * 1e6:5.1f} us/node), cached {cached * 1e3:6.2f} ms")
    figures["per_node_us_cold"] = round(cold / n * 1e6, 2)
    figures["cached_rerun_ms"] = round(cached * 1e3, 2)
    cold_d, cached_d, n_d = measure(diamond(width=20, depth=48))
    print(f"diamond  {n_d:6d} nodes: cold {cold_d * 1e3:8.1f} ms ({cold_d / n_d * 1e6:5.1f} us/node), cached {cached_d * 1e3:6.2f} ms")
    figures["diamond_per_node_us_cold"] = round(cold_d / n_d * 1e6, 2)
    figures["diamond_cached_rerun_ms"] = round(cached_d * 1e3, 2)
    cold10k, cached10k, n10k = measure(chain(9998), repeats=2)
    print(f"chain    {n10k:6d} nodes: cold {cold10k:8.3f} s  ({cold10k / n10k * 1e6:5.1f} us/node), cached {cached10k * 1e3:6.2f} ms")
    figures["chain10k_cold_s"] = round(cold10k, 3)
    figures["chain10k_per_node_us_cold"] = round(cold10k / n10k * 1e6, 2)
    figures["chain10k_cached_rerun_ms"] = round(cached10k * 1e3, 2)
    from nodegraph.formats.ui_export import to_ui

    long_chain = chain(5000)
    started = time.perf_counter()
    to_ui(long_chain, registry())  # what a submitted prompt without a UI workflow embeds in its images
    figures["to_ui_chain5k_s"] = round(time.perf_counter() - started, 3)
    print(f"to_ui    {len(long_chain.nodes):6d} nodes: {figures['to_ui_chain5k_s']:.3f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
