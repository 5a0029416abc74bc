"""Execution: ordering, running only what outputs need, the content cache, hooks, interruption, errors."""

import sys
import threading

import pytest

from fake_nodes import CALLS, chain, registry, workflow
from nodegraph import CancelToken, Engine, Hooks, Interrupted, NodeExecutionError, OutputCache


class Recorder(Hooks):
    def __init__(self):
        self.events = []

    def run_start(self, run):
        self.events.append(("run_start", tuple(run.cached), tuple(run.execute)))

    def node_start(self, run, node_id, node_type):
        self.events.append(("node_start", node_id))

    def node_end(self, run, node_id, node_type, *, cached, ui, seconds):
        self.events.append(("node_end", node_id, cached))

    def progress(self, run, node_id, value, total, preview=None):
        self.events.append(("progress", node_id, value, total))

    def node_error(self, run, error):
        self.events.append(("node_error", error.node_id, error.exception_message))

    def run_end(self, run, status, error=None):
        self.events.append(("run_end", status))


def diamond():
    #   1 -> 2 -> 4 -> 5(Collect)
    #   1 -> 3 ---^ (via Scale's FLOAT? no: Add takes a + b widget) ; 6 is a dangling branch
    return workflow(
        {"1": ("Number", {"value": 3}), "2": ("Add", {"b": 1}), "3": ("Scale", {"factor": 2.0}),
         "4": ("Add", {"b": 0}), "5": ("Collect", {}), "6": ("Add", {"b": 100}), "10": ("Number", {"value": 7})},
        [("1", 0, "2", "a"), ("2", 0, "3", "a"), ("3", 0, "4", "a"), ("4", 0, "5", "value"), ("1", 0, "6", "a")],
    )


def test_runs_in_dependency_order_and_only_what_outputs_need():
    result = Engine(registry()).run(diamond())
    assert CALLS == ["1", "2", "3", "4", "5"]  # 6 and 10 feed no output
    assert result.ui == {"5": {"value": [8]}}


def test_order_is_deterministic_by_node_id():
    wf = workflow({"10": ("Number", {}), "9": ("Number", {}), "2": ("Number", {}),
                   "20": ("Collect", {}), "3": ("Collect", {}), "11": ("Collect", {})},
                  [("10", 0, "20", "value"), ("9", 0, "3", "value"), ("2", 0, "11", "value")])
    Engine(registry()).run(wf)
    assert CALLS == ["2", "9", "3", "10", "11", "20"]


def test_chosen_outputs_run_only_their_ancestors():
    wf = workflow({"1": ("Number", {"value": 1}), "2": ("Collect", {}), "3": ("Number", {"value": 2}),
                   "4": ("Collect", {})}, [("1", 0, "2", "value"), ("3", 0, "4", "value")])
    result = Engine(registry()).run(wf, outputs=["4"])
    assert CALLS == ["3", "4"] and list(result.ui) == ["4"]


def test_cache_reruns_only_downstream_of_a_changed_widget():
    engine = Engine(registry())
    first = engine.run(diamond())
    assert first.executed == ["1", "2", "3", "4", "5"] and first.cached == []
    CALLS.clear()
    again = engine.run(diamond())
    assert CALLS == [] and again.cached == ["5"] and again.ui == first.ui  # outputs cached: nothing upstream needed
    CALLS.clear()
    changed = engine.run(diamond().with_widget("3", "factor", 3.0))
    assert CALLS == ["3", "4", "5"]
    assert changed.cached == ["2"] and changed.ui == {"5": {"value": [12]}}


def test_unchanged_subgraph_hits_even_after_other_nodes_change():
    engine = Engine(registry())
    engine.run(diamond())
    # Renumbered and with an extra node elsewhere: the same content gives the same keys.
    wf = workflow({"a": ("Number", {"value": 3}), "b": ("Add", {"b": 1}), "c": ("Collect", {}),
                   "d": ("Number", {"value": 42}), "e": ("Collect", {})},
                  [("a", 0, "b", "a"), ("b", 0, "c", "value"), ("d", 0, "e", "value")])
    CALLS.clear()
    result = engine.run(wf)
    assert "b" in result.cached and CALLS == ["c", "d", "e"]


def test_cache_hit_returns_the_same_object_without_copying():
    engine = Engine(registry())
    wf = workflow({"1": ("MakeList", {"length": 4})}, [])
    first = engine.run(wf, outputs=["1"]).values["1"][0]
    second = engine.run(wf, outputs=["1"]).values["1"][0]
    assert second is first and CALLS == ["1"]


def test_fingerprint_invalidates_when_the_file_changes(tmp_path):
    path = tmp_path / "value.txt"
    path.write_text("4")
    wf = workflow({"1": ("FileValue", {"path": str(path)}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    engine = Engine(registry())
    assert engine.run(wf).ui["2"] == {"value": [4]}
    CALLS.clear()
    engine.run(wf)
    assert CALLS == []
    path.write_text("9")
    assert engine.run(wf).ui["2"] == {"value": [9]} and CALLS == ["1", "2"]


def test_non_deterministic_node_and_its_downstream_always_run():
    engine = Engine(registry())
    wf = workflow({"1": ("Random", {}), "2": ("Add", {"b": 0}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    first = engine.run(wf).ui["3"]["value"][0]
    CALLS.clear()
    second = engine.run(wf).ui["3"]["value"][0]
    assert CALLS == ["1", "2", "3"] and second == first + 1


def test_cache_is_bounded_by_entries_and_bytes():
    cache = OutputCache(max_entries=3)
    engine = Engine(registry(), cache=cache)
    engine.run(chain(10))
    assert len(cache) == 3
    tiny = OutputCache(max_bytes=64)
    Engine(registry(), cache=tiny).run(chain(10))
    assert tiny.nbytes <= 64


def test_hooks_see_every_event_in_order():
    recorder = Recorder()
    wf = workflow({"1": ("Number", {}), "2": ("Steps", {"steps": 3}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    engine = Engine(registry(), hooks=[recorder])
    engine.run(wf)
    assert recorder.events == [
        ("run_start", (), ("1", "2", "3")),
        ("node_start", "1"), ("node_end", "1", False),
        ("node_start", "2"), ("progress", "2", 1, 3), ("progress", "2", 2, 3), ("progress", "2", 3, 3),
        ("node_end", "2", False),
        ("node_start", "3"), ("node_end", "3", False),
        ("run_end", "success"),
    ]
    recorder.events.clear()
    engine.run(wf)
    assert recorder.events == [("run_start", ("3",), ()), ("node_end", "3", True), ("run_end", "success")]


def test_a_failing_hook_does_not_break_the_run():
    class Broken(Hooks):
        def node_start(self, run, node_id, node_type):
            raise RuntimeError("hook bug")

    wf = workflow({"1": ("Number", {}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    assert Engine(registry(), hooks=[Broken()]).run(wf).ui["2"] == {"value": [1]}


def test_node_error_names_the_node_and_the_engine_stays_usable():
    recorder = Recorder()
    engine = Engine(registry(), hooks=[recorder])
    wf = workflow({"1": ("Number", {}), "2": ("Fail", {"message": "bad seed"}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    with pytest.raises(NodeExecutionError) as info:
        engine.run(wf)
    error = info.value
    assert error.node_id == "2" and error.class_type == "Fail" and error.exception_message == "bad seed"
    assert "node 2 (Fail) failed" in str(error) and "RuntimeError: bad seed" in error.traceback
    assert ("node_error", "2", "bad seed") in recorder.events and recorder.events[-1] == ("run_end", "error")
    fixed = workflow({"1": ("Number", {}), "2": ("Add", {"b": 1}), "3": ("Collect", {})},
                     [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    CALLS.clear()
    assert engine.run(fixed).ui["3"] == {"value": [2]}
    assert CALLS == ["2", "3"]  # node 1's output was cached by the failed run


def test_interruption_stops_within_one_step_and_engine_stays_usable():
    engine = Engine(registry())
    cancel = CancelToken()

    class StopAtStep2(Hooks):
        def progress(self, run, node_id, value, total, preview=None):
            if value == 2:
                cancel.cancel()

    steps = []

    class Count(Hooks):
        def progress(self, run, node_id, value, total, preview=None):
            steps.append(value)

    wf = workflow({"1": ("Number", {}), "2": ("Steps", {"steps": 100}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    with pytest.raises(Interrupted) as info:
        engine.run(wf, hooks=[StopAtStep2(), Count()], cancel=cancel)
    assert info.value.node_id == "2" and steps == [1, 2]
    assert engine.run(wf).ui["3"] == {"value": [1]}  # a new run with a new token is not interrupted


def test_interrupt_from_another_thread():
    engine = Engine(registry())
    cancel = CancelToken()
    wf = workflow({"1": ("Number", {}), "2": ("Steps", {"steps": 1000, "delay": 0.005}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    timer = threading.Timer(0.1, cancel.cancel)
    timer.start()
    with pytest.raises(Interrupted):
        engine.run(wf, cancel=cancel)


def test_ten_thousand_node_chain_validates_and_runs_without_recursion():
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # any recursion over the chain would blow this
    try:
        engine = Engine(registry())
        result = engine.run(chain(10_000))
        assert result.ui == {"10001": {"value": [1]}} and len(result.executed) == 10_002
        again = engine.run(chain(10_000))
        assert again.executed == [] and again.cached == ["10001"]
    finally:
        sys.setrecursionlimit(limit)


def test_reused_plan_still_rechecks_options_read_from_disk(tmp_path):
    from nodegraph import Combo, Node, NodeRegistry, NodeResult, NodeSchema, ValidationFailed

    class PickFile(Node):
        schema = NodeSchema(type_id="PickFile", inputs=(Combo("name", lambda env: sorted(p.name for p in env.iterdir())),),
                            output_node=True)

        @classmethod
        def execute(cls, ctx, name):
            return NodeResult(ui={"name": [name]})

    (tmp_path / "a.txt").write_text("")
    engine = Engine(NodeRegistry([PickFile]), env=tmp_path)
    wf = workflow({"1": ("PickFile", {"name": "a.txt"})}, [])
    assert engine.run(wf).ui["1"] == {"name": ["a.txt"]}
    (tmp_path / "a.txt").unlink()
    with pytest.raises(ValidationFailed, match="value_not_in_list"):
        engine.run(wf.model_copy(deep=True))


def test_run_metadata_reaches_nodes_and_not_the_cache_key():
    from nodegraph import Node, NodeRegistry, NodeResult, NodeSchema

    class ShowMeta(Node):
        schema = NodeSchema(type_id="ShowMeta", inputs=(), output_node=True, deterministic=False)

        @classmethod
        def execute(cls, ctx):
            return NodeResult(ui={"meta": [ctx.metadata.get("prompt")]})

    engine = Engine(NodeRegistry([ShowMeta]))
    wf = workflow({"1": ("ShowMeta", {})}, [])
    assert engine.run(wf, metadata={"prompt": {"x": 1}}).ui["1"] == {"meta": [{"x": 1}]}


def test_linked_value_into_a_file_input_is_fingerprinted_at_run_time(tmp_path):
    """ComfyUI accepts a path fed by a link; the file is fingerprinted once the value is known."""
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("4")
    second.write_text("5")
    def wf(path):
        return workflow({"1": ("Text", {"value": str(path)}), "2": ("FileValue", {}), "3": ("Collect", {})},
                        [("1", 0, "2", "path"), ("2", 0, "3", "value")])
    engine = Engine(registry())
    assert engine.run(wf(first)).ui["3"] == {"value": [4]} and CALLS == ["1", "2", "3"]
    CALLS.clear()
    rerun = engine.run(wf(first))
    assert CALLS == [] and rerun.executed == [] and rerun.cached == ["1", "2", "3"] and rerun.ui["3"] == {"value": [4]}
    first.write_text("7")
    assert engine.run(wf(first)).ui["3"] == {"value": [7]} and CALLS == ["2", "3"]
    CALLS.clear()
    assert engine.run(wf(second)).ui["3"] == {"value": [5]} and CALLS == ["1", "2", "3"]
    first.unlink()
    with pytest.raises(NodeExecutionError, match=r"node 2 \(FileValue\) failed: FileNotFoundError"):
        engine.run(wf(first))


def test_a_reused_run_id_does_not_bring_back_a_non_deterministic_result():
    engine = Engine(registry())
    wf = workflow({"1": ("Random", {}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    first = engine.run(wf, run_id="same").ui["2"]["value"][0]
    assert engine.run(wf, run_id="same").ui["2"]["value"][0] == first + 1


def test_plan_for_default_outputs_is_found_by_their_list():
    engine = Engine(registry())
    graph = engine.compile(diamond())
    assert engine.compile(diamond(), outputs=["5"]) is graph and engine.compile(diamond(), ["5", "5"]) is graph
    assert engine.compile(diamond(), outputs=["4"]) is not graph


def test_an_interruption_raised_inside_a_node_names_that_node():
    """The sampler raises a bare Interrupted(); the run's error and hooks must still say which node stopped."""
    recorder = Recorder()
    engine = Engine(registry())
    wf = workflow({"1": ("Number", {}), "2": ("Stoppable", {}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    ended = []
    recorder.run_end = lambda run, status, error=None: ended.append((status, error))
    with pytest.raises(Interrupted) as caught:
        engine.run(wf, hooks=[recorder])
    assert caught.value.node_id == "2" and str(caught.value) == "interrupted at node 2"
    assert ended == [("interrupted", caught.value)]


def _raising(error, message=""):
    return workflow({"1": ("Number", {"value": 2}), "2": ("Raise", {"error": error, "message": message}),
                     "3": ("Collect", {})}, [("1", 0, "2", "a"), ("2", 0, "3", "value")])


@pytest.mark.parametrize("error, status", [("KeyboardInterrupt", "interrupted"), ("SystemExit", "error")])
def test_run_end_is_called_on_any_base_exception(error, status):
    recorder = Recorder()
    with pytest.raises(BaseException) as caught:
        Engine(registry()).run(_raising(error), hooks=[recorder])
    assert type(caught.value).__name__ == error and recorder.events[-1] == ("run_end", status)


class CountingManager:
    def __init__(self):
        self.frees = 0

    def free(self):
        self.frees += 1
        return 0


@pytest.mark.parametrize("error", ["MemoryError", "OutOfMemoryError"])
def test_out_of_memory_fails_the_node_clearly_frees_memory_and_the_next_run_runs(error):
    from types import SimpleNamespace

    from nodegraph.errors import OutOfMemory

    manager = CountingManager()
    engine = Engine(registry(), env=SimpleNamespace(model_manager=manager))
    engine.run(diamond())
    assert len(engine.cache) > 0
    recorder = Recorder()
    with pytest.raises(OutOfMemory) as caught:
        engine.run(_raising(error, "CUDA out of memory. Tried to allocate 2.00 GiB" if error != "MemoryError" else ""),
                   hooks=[recorder])
    failure = caught.value
    assert failure.node_id == "2" and failure.class_type == "Raise" and failure.exception_type.endswith(error)
    assert "out of memory" in failure.exception_message and "out of memory" in str(failure)
    assert ("node_error", "2", failure.exception_message) in recorder.events and recorder.events[-1] == ("run_end", "error")
    assert manager.frees == 1 and len(engine.cache) == 0
    CALLS.clear()
    assert engine.run(diamond()).ui["5"] == {"value": [8]} and CALLS == ["1", "2", "3", "4", "5"]
