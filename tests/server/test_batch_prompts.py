"""`serve --batch-prompts N`: queued prompts of one shape run together, each with exactly its own images."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nodegraph.app import AppConfig, build_engine
from nodegraph.server import ServerConfig
from nodegraph.server.queue_store import QueueStore
from nodegraph.server.state import STATE
from nodes.models.embedded import EMBEDDED_PATH
from server_helpers import serve, wait_history
from tests.batching_helpers import PROMPTS, embedded_prompt, saved_pixels

pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model is not built")
TIMEOUT = 300.0
"""Real-model runs: longer than the server tests' usual 30 s bound (imports alone take seconds on a busy machine)."""


def _engine(root):
    return build_engine(AppConfig(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                                  models_dir=root / "models"))


async def _run_all(root, prompts, **config):
    """Queue every prompt before the server starts (so the worker sees them together), then collect images."""
    store = QueueStore(ServerConfig(data_dir=root / "data").database_path, durable=False)
    for i, prompt in enumerate(prompts):
        store.add(f"p{i}", prompt, {}, ["9"])
    store.close()
    engine = _engine(root)
    async with serve(root, engine=engine, **config) as client:
        entries = [await wait_history(client, f"p{i}", timeout=120) for i in range(len(prompts))]
        worker = client.app[STATE].worker
        stats = await (await client.get("/system_stats")).json()
    return entries, worker, stats, engine.env.output_dir


def test_batched_prompts_match_one_at_a_time_pixel_for_pixel(tmp_path):
    asyncio.run(asyncio.wait_for(_batched_match(tmp_path), TIMEOUT))


async def _batched_match(tmp_path):
    prompts = [embedded_prompt(seed, text, steps=3, prefix=f"b{seed}") for seed, text in zip((5, 6, 7), PROMPTS)]
    alone, _, _, alone_dir = await _run_all(tmp_path / "alone", prompts)
    batched, worker, stats, batched_dir = await _run_all(tmp_path / "batched", prompts, batch_prompts=3)
    assert worker.last_group["prompts"] == ["p0", "p1", "p2"]
    assert worker.last_group["batched_calls"] >= 3 * 3  # cond+uncond of 3 prompts, every step, in one call
    assert stats["workers"][0]["batch_prompts"] == 3
    for a, b in zip(alone, batched):
        assert a["status"]["status_str"] == b["status"]["status_str"] == "success"
        np.testing.assert_array_equal(saved_pixels(alone_dir, a["outputs"]["9"]),
                                      saved_pixels(batched_dir, b["outputs"]["9"]))


def test_one_failing_prompt_in_a_group_leaves_the_others_alone(tmp_path):
    asyncio.run(asyncio.wait_for(_one_fails(tmp_path), TIMEOUT))


async def _one_fails(tmp_path):
    good = [embedded_prompt(seed, PROMPTS[0], steps=2, prefix="g") for seed in (1, 2)]
    bad = embedded_prompt(3, PROMPTS[1], steps=2, prefix="g")
    bad["9"]["inputs"]["filename_prefix"] = "../outside"  # refused when saving, after sampling with the others
    entries, worker, _, _ = await _run_all(tmp_path, [good[0], bad, good[1]], batch_prompts=3)
    assert [e["status"]["status_str"] for e in entries] == ["success", "error", "success"]
