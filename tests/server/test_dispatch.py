"""Dispatch without Ray: content keys from a prompt, affinity between prompts and fake workers, prompt shapes."""

from __future__ import annotations

from nodegraph.server.dispatch import WorkerSlot, choose, prompt_keys, shape_signature
from tests.batching_helpers import embedded_prompt


def test_keys_follow_content_not_node_order():
    a = embedded_prompt(1, "a red circle")
    b = dict(reversed(list(a.items())))
    assert prompt_keys(a) == prompt_keys(b)


def test_a_new_seed_changes_the_sampler_and_what_follows_only():
    a, b = prompt_keys(embedded_prompt(1, "a red circle")), prompt_keys(embedded_prompt(2, "a red circle"))
    same = {nid for nid in a if a[nid] == b[nid]}
    assert same == {"4", "5", "6", "7"} and a["4"][1] is True and a["6"][1] is False


def test_the_worker_with_the_model_loaded_gets_the_prompt():
    cold, warm = WorkerSlot("cold"), WorkerSlot("warm")
    other = embedded_prompt(1, "x")
    other["4"]["inputs"]["ckpt_name"] = "another.safetensors"
    cold.remember(key for key, _ in prompt_keys(other).values())
    warm.remember(key for key, _ in prompt_keys(embedded_prompt(9, "a blue square")).values())
    assert choose([cold, warm], prompt_keys(embedded_prompt(1, "a red circle"))) is warm


def test_ties_go_to_the_worker_idle_longest_and_busy_or_dead_workers_get_nothing():
    a, b, c = WorkerSlot("a", last_busy=5.0), WorkerSlot("b", last_busy=1.0), WorkerSlot("c", last_busy=0.0)
    c.alive = False
    keys = prompt_keys(embedded_prompt(1, "a red circle"))
    assert choose([a, b, c], keys) is b
    b.busy = True
    assert choose([a, b, c], keys) is a
    a.busy = True
    assert choose([a, b, c], keys) is None


def test_a_worker_remembers_a_bounded_number_of_keys(monkeypatch):
    import nodegraph.server.dispatch as dispatch

    monkeypatch.setattr(dispatch, "KEYS_REMEMBERED", 3)
    slot = WorkerSlot("w")
    slot.remember(["k1", "k2", "k3", "k4"])
    assert list(slot.keys) == ["k2", "k3", "k4"]


def test_prompts_of_one_shape_differ_only_downstream():
    base = shape_signature(embedded_prompt(1, "a red circle"))
    assert shape_signature(embedded_prompt(7, "a green star", steps=9)) == base
    other_model = embedded_prompt(1, "a red circle")
    other_model["4"]["inputs"]["ckpt_name"] = "another.safetensors"
    assert shape_signature(other_model) != base
    rewired = embedded_prompt(1, "a red circle")
    rewired["3"]["inputs"]["negative"] = ["6", 0]
    assert shape_signature(rewired) != base


def test_broken_prompts_do_not_break_dispatch():
    cyclic = {"1": {"class_type": "A", "inputs": {"x": ["2", 0]}}, "2": {"class_type": "B", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "C", "inputs": {"x": ["9", 0]}}, "4": "not a node"}
    assert prompt_keys(cyclic) == {}
    assert isinstance(shape_signature(cyclic), str)


def test_serve_refuses_bad_worker_options(tmp_path, capsys):
    from nodegraph.cli import main

    base = ["serve", "--data-dir", str(tmp_path / "data"), "--port", "0"]
    assert main([*base, "--batch-prompts", "0"]) == 2
    assert "--batch-prompts 0: must be at least 1" in capsys.readouterr().err
    assert main([*base, "--workers", "0", "--nodes-module", "node_pack:register"]) == 2
    assert "--workers 0: must be at least 1" in capsys.readouterr().err
