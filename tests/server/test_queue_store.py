"""The SQLite queue: order, history paging, and what a crash leaves behind."""

from pathlib import Path

import pytest

from nodegraph.server.queue_store import DuplicatePrompt, QueueStore, StoreLocked


def _add(store: QueueStore, prompt_id: str, **kwargs):
    return store.add(prompt_id, {"1": {"class_type": "Number", "inputs": {}}}, {"client_id": "c"}, ["1"],
                     client_id="c", **kwargs)


def test_order_front_and_explicit_number(tmp_path):
    store = QueueStore(tmp_path / "q.db")
    assert _add(store, "a") == (1.0, 1)
    assert _add(store, "b") == (2.0, 2)
    assert _add(store, "c", front=True)[0] == -3.0
    _add(store, "d", number=1.5)
    running, pending = store.queue()
    assert running == [] and [item.prompt_id for item in pending] == ["c", "a", "d", "b"]
    assert pending[0].as_comfy() == [-3, "c", {"1": {"class_type": "Number", "inputs": {}}}, {"client_id": "c"}, ["1"]]
    assert store.claim_next().prompt_id == "c"
    running, pending = store.queue()
    assert [i.prompt_id for i in running] == ["c"] and store.remaining() == 4


def test_duplicate_id_refused_while_queued_and_once_finished(tmp_path):
    """A reused prompt_id would get the earlier prompt's results back: refused as long as the id is known."""
    store = QueueStore(tmp_path / "q.db")
    _add(store, "a")
    with pytest.raises(DuplicatePrompt, match="already pending"):
        _add(store, "a")
    store.claim_next()
    store.finish("a", {}, {"status_str": "success", "completed": True, "messages": []}, {})
    with pytest.raises(DuplicatePrompt, match="already ran"):
        _add(store, "a")
    assert store.state("a") == "done" and list(store.history()) == ["a"]
    store.delete_history(["a"])
    _add(store, "a")  # forgotten: the id is free again
    assert store.state("a") == "pending"


def test_history_pages_like_comfyui(tmp_path):
    store = QueueStore(tmp_path / "q.db")
    for name in "abcde":
        _add(store, name)
        store.claim_next()
        store.finish(name, {"1": {"value": [name]}}, {"status_str": "success", "completed": True, "messages": []}, {})
    assert list(store.history()) == list("abcde")
    assert list(store.history(max_items=2)) == ["d", "e"]  # the latest, oldest first
    assert list(store.history(max_items=2, offset=1)) == ["b", "c"]
    assert store.history_item("c")["outputs"] == {"1": {"value": ["c"]}}
    assert store.delete_history(["a", "zz"]) == 1 and list(store.history()) == list("bcde")
    assert store.delete_history() == 4 and store.history() == {}


def test_crash_recovery_requeues_once_then_fails_with_reason(tmp_path):
    path = tmp_path / "q.db"
    store = QueueStore(path)
    _add(store, "crashy")
    _add(store, "waiting")
    _add(store, "done")
    store.claim_next()  # "crashy" starts ... and the process dies
    store.close()

    store = QueueStore(path)  # restart 1
    assert store.recover(max_attempts=2) == (["crashy"], [])
    item = store.claim_next()
    assert (item.prompt_id, item.attempts) == ("crashy", 2)
    store.close()  # dies again

    store = QueueStore(path)  # restart 2: no attempt left
    assert store.recover(max_attempts=2) == ([], ["crashy"])
    entry = store.history_item("crashy")
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    event, data = entry["status"]["messages"][0]
    assert event == "execution_error" and "2 time(s)" in data["exception_message"]
    assert [i.prompt_id for i in store.queue()[1]] == ["waiting", "done"]


def test_finished_prompt_is_never_claimed_again(tmp_path):
    path = tmp_path / "q.db"
    store = QueueStore(path)
    _add(store, "a")
    store.claim_next()
    store.finish("a", {}, {"status_str": "success", "completed": True, "messages": []}, {})
    store.close()
    store = QueueStore(path)
    assert store.recover(max_attempts=2) == ([], []) and store.claim_next() is None


def test_release_does_not_count_the_attempt(tmp_path):
    store = QueueStore(tmp_path / "q.db")
    _add(store, "a")
    store.claim_next()
    store.release("a")
    assert store.claim_next().attempts == 1


def test_clear_and_delete_pending_leave_the_running_one(tmp_path):
    store = QueueStore(tmp_path / "q.db")
    for name in "abc":
        _add(store, name)
    store.claim_next()
    assert store.delete_pending(["b"]) == 1
    assert store.delete_pending() == 1
    running, pending = store.queue()
    assert [i.prompt_id for i in running] == ["a"] and pending == []


def test_one_server_per_data_dir(tmp_path):
    store = QueueStore(tmp_path / "q.db")
    with pytest.raises(StoreLocked):
        QueueStore(tmp_path / "q.db")
    store.close()
    QueueStore(tmp_path / "q.db").close()


def test_only_queueing_is_fsynced_and_a_killed_writer_loses_nothing(tmp_path):
    """Claiming and finishing commit without an fsync (WAL keeps them through a process crash); the
    commit that acknowledges a prompt stays FULL, and the connection is left FULL after each relaxed one."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "queue.sqlite"
    script = textwrap.dedent(f"""
        import os
        from nodegraph.server.queue_store import QueueStore
        store = QueueStore({str(path)!r})
        store.add("a", {{"1": {{}}}}, {{}}, [])
        store.add("b", {{"1": {{}}}}, {{}}, [])
        item = store.claim_next()
        store.finish(item.prompt_id, {{"1": {{"x": 1}}}}, {{"status_str": "success"}}, {{}})
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        store.claim_next()
        os._exit(0)  # no close, no checkpoint: as a kill would leave it
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2])
    store = QueueStore(path)
    assert store.state("a") == "done" and store.history_item("a")["outputs"] == {"1": {"x": 1}}
    assert store.state("b") == "running"
    assert store.recover(max_attempts=3) == (["b"], [])
    store.close()
