"""Cross-prompt batching: prompts run side by side stack their UNet calls, and each gets exactly its own images."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from nodegraph.app import AppConfig, build_engine
from nodegraph.batching import Rendezvous, active, joined
from nodegraph.executor import Engine
from nodegraph.formats.api import from_api
from nodes.models.embedded import EMBEDDED_PATH
from tests.batching_helpers import PROMPTS, embedded_prompt

pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model is not built")


def _run_members(rendezvous: Rendezvous, work: list) -> list:
    results: list = [None] * len(work)

    def member(i: int) -> None:
        with joined(rendezvous):
            results[i] = work[i]()

    threads = [threading.Thread(target=member, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_calls_with_the_same_key_run_as_one_batch():
    rendezvous, batches = Rendezvous(3), []

    def run_batch(payloads):
        batches.append(list(payloads))
        return [p * 10 for p in payloads]

    def work(value):
        return lambda: [active().call("k", value + step, run_batch=run_batch, run_one=lambda p: -p) for step in range(3)]

    results = _run_members(rendezvous, [work(0), work(100), work(200)])
    assert results == [[0, 10, 20], [1000, 1010, 1020], [2000, 2010, 2020]]
    assert sorted(len(b) for b in batches) == [3, 3, 3]
    assert rendezvous.stats["batched_calls"] == 9


def test_a_member_that_stops_calling_does_not_hold_the_others():
    rendezvous = Rendezvous(2)

    def long():
        return [active().call("k", i, run_batch=lambda ps: list(ps), run_one=lambda p: p) for i in range(5)]

    def short():
        time.sleep(0.05)
        return "done early"

    assert _run_members(rendezvous, [long, short]) == [[0, 1, 2, 3, 4], "done early"]


def test_different_keys_run_apart_and_a_failing_batch_fails_only_its_own_call():
    rendezvous = Rendezvous(3)

    def run_batch(payloads):
        raise RuntimeError("stacking failed")

    def run_one(payload):
        if payload == "bad":
            raise ValueError("bad input")
        return payload.upper()

    def member(key, payload):
        def go():
            try:
                return active().call(key, payload, run_batch=run_batch, run_one=run_one)
            except ValueError as exc:
                return f"error: {exc}"
        return go

    results = _run_members(rendezvous, [member("a", "ok"), member("a", "bad"), member("b", "alone")])
    assert results == ["OK", "error: bad input", "ALONE"]


def _engine(tmp_path, name: str) -> Engine:
    root = tmp_path / name
    return build_engine(AppConfig(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                                  models_dir=root / "models"))


def _latents(engine: Engine, prompt: dict) -> torch.Tensor:
    prompt = {k: v for k, v in prompt.items() if k not in ("8", "9")}  # stop at the sampler's latent
    result = engine.run(from_api(prompt), outputs=["3"])
    return result.values["3"][0].samples


def test_stacked_prompts_give_bit_identical_latents_on_the_cpu(tmp_path):
    torch.set_num_threads(1)
    prompts = [embedded_prompt(seed, text, steps=3) for seed, text in zip((11, 22, 33), PROMPTS)]
    alone = _engine(tmp_path, "alone")
    expected = [_latents(alone, p) for p in prompts]
    shared = _engine(tmp_path, "shared")
    engines = [shared] + [Engine(shared.registry, env=shared.env, cache=shared.cache) for _ in prompts[1:]]
    rendezvous = Rendezvous(len(prompts))
    got = _run_members(rendezvous, [lambda e=e, p=p: _latents(e, p) for e, p in zip(engines, prompts)])
    assert rendezvous.stats["batched_calls"] >= 3 * 3, rendezvous.stats  # every step's call stacked
    for want, have in zip(expected, got):
        assert torch.equal(want, have)
