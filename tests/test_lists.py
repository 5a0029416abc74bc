"""Lists as ComfyUI runs them (OUTPUT_IS_LIST / INPUT_IS_LIST), with model-free fake nodes."""

from __future__ import annotations

import pytest
import torch

from fake_nodes import ALL, workflow
from nodegraph import Engine, Hooks, Int, Node, NodeContext, NodeExecutionError, NodeRegistry, NodeResult, NodeSchema
from nodegraph import Out, Socket, String, ValidationFailed
from nodegraph.lists import ItemList, content_digest, merge_ui

LOG: list[tuple] = []
"""(node id, arguments) of every call that ran."""


class Numbers(Node):
    """A list of integers parsed from text: one declared list output."""

    schema = NodeSchema(type_id="Numbers", category="test", inputs=(String("values", "1,2,3"),),
                        outputs=(Out("INT", "numbers", is_list=True),))

    @classmethod
    def execute(cls, ctx: NodeContext, values: str) -> tuple[list[int]]:
        LOG.append((ctx.node_id, values))
        return ([int(v) for v in values.split(",") if v.strip()],)


class Plus(Node):
    """a + b, where a is a socket and b a widget (or a converted widget fed by a link)."""

    schema = NodeSchema(type_id="Plus", category="test",
                        inputs=(Socket("a", "INT"), Int("b", 0, min=-1000, max=1000)), outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, b: int) -> tuple[int]:
        LOG.append((ctx.node_id, a, b))
        if a == 13:
            raise ValueError("unlucky 13")
        return (a + b,)


class Pair(Node):
    schema = NodeSchema(type_id="Pair", category="test", inputs=(Socket("a", "INT"), Socket("b", "INT")),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, b: int) -> tuple[int]:
        LOG.append((ctx.node_id, a, b))
        return (10 * a + b,)


class Repeat(Node):
    """A list from each item: list in, list out (concatenated over the calls)."""

    schema = NodeSchema(type_id="Repeat", category="test", inputs=(Socket("a", "INT"), Int("times", 2, min=0, max=9)),
                        outputs=(Out("INT", is_list=True), Out("INT", "count")))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, times: int) -> tuple[list[int], int]:
        LOG.append((ctx.node_id, a, times))
        return ([a] * times, times)


class Gather(Node):
    """input_is_list: runs once with whole lists, a widget as a one-element list."""

    schema = NodeSchema(type_id="Gather", category="test", input_is_list=True,
                        inputs=(Socket("a", "INT"), Int("scale", 1, min=0, max=100)), outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: list[int], scale: list[int]) -> tuple[int]:
        LOG.append((ctx.node_id, list(a), list(scale)))
        return (sum(a) * scale[0],)


class Show(Node):
    """Output node showing its value; run once per item, its ui lists are concatenated."""

    schema = NodeSchema(type_id="Show", category="test", inputs=(Socket("value", "INT"),), output_node=True)

    @classmethod
    def execute(cls, ctx: NodeContext, value: int) -> NodeResult:
        LOG.append((ctx.node_id, value))
        return NodeResult(ui={"value": [value], "text": [f"#{value}"]})


class Count(Node):
    """Reports two progress steps per call."""

    schema = NodeSchema(type_id="Count", category="test", inputs=(Socket("a", "INT"),), outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int) -> tuple[int]:
        ctx.progress(1, 2)
        ctx.progress(2, 2)
        return (a,)


class Paths(Node):
    schema = NodeSchema(type_id="Paths", category="test", inputs=(String("paths"),),
                        outputs=(Out("STRING", is_list=True),))

    @classmethod
    def execute(cls, ctx: NodeContext, paths: str) -> tuple[list[str]]:
        return (paths.split("|"),)


class Latents(Node):
    schema = NodeSchema(type_id="Latents", category="test", inputs=(), outputs=(Out("LATENT", is_list=True),))

    @classmethod
    def execute(cls, ctx: NodeContext) -> tuple[list[int]]:
        return ([1],)


@pytest.fixture(autouse=True)
def _clear_log():
    LOG.clear()


def engine() -> Engine:
    return Engine(NodeRegistry((*ALL, Numbers, Plus, Pair, Repeat, Gather, Show, Count, Paths, Latents)))


def calls(node_id: str) -> list[tuple]:
    return [entry[1:] for entry in LOG if entry[0] == node_id]


def test_a_node_runs_once_per_item_and_its_results_are_gathered_into_a_list():
    wf = workflow({"1": ("Numbers", {"values": "1,2,3"}), "2": ("Plus", {"b": 10}), "3": ("Show", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    result = engine().run(wf, outputs=["2", "3"])
    assert calls("2") == [(1, 10), (2, 10), (3, 10)]
    assert isinstance(result.values["2"][0], ItemList) and list(result.values["2"][0]) == [11, 12, 13]
    assert result.ui == {"3": {"value": [11, 12, 13], "text": ["#11", "#12", "#13"]}}  # three calls' ui merged
    assert result.executed == ["1", "2", "3"]


def test_two_lists_run_as_long_as_the_longest_and_a_shorter_one_repeats_its_last_item():
    wf = workflow({"1": ("Numbers", {"values": "1,2,3"}), "2": ("Numbers", {"values": "7,8"}), "3": ("Pair", {})},
                  [("1", 0, "3", "a"), ("2", 0, "3", "b")])
    result = engine().run(wf, outputs=["3"])
    assert calls("3") == [(1, 7), (2, 8), (3, 8)]
    assert list(result.values["3"][0]) == [17, 28, 38]


def test_a_list_and_a_single_value_the_single_value_goes_to_every_call():
    wf = workflow({"1": ("Numbers", {"values": "4,5"}), "2": ("Number", {"value": 6}), "3": ("Pair", {})},
                  [("2", 0, "3", "a"), ("1", 0, "3", "b")])
    assert list(engine().run(wf, outputs=["3"]).values["3"][0]) == [64, 65]


def test_list_outputs_of_several_calls_are_concatenated_and_other_outputs_become_lists():
    wf = workflow({"1": ("Numbers", {"values": "1,2"}), "2": ("Repeat", {"times": 3}), "3": ("Plus", {"b": 1})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "a")])
    result = engine().run(wf, outputs=["2", "3"])
    repeated, counts = result.values["2"]
    assert list(repeated) == [1, 1, 1, 2, 2, 2] and list(counts) == [3, 3]
    assert list(result.values["3"][0]) == [2, 2, 2, 3, 3, 3]


def test_a_single_call_with_a_list_output_still_makes_a_list():
    wf = workflow({"1": ("Number", {"value": 5}), "2": ("Repeat", {"times": 2})}, [("1", 0, "2", "a")])
    repeated, count = engine().run(wf, outputs=["2"]).values["2"]
    assert list(repeated) == [5, 5] and count == 2  # not a list: one call of a node fed single values


def test_input_is_list_gets_whole_lists_and_widgets_as_one_element_lists():
    wf = workflow({"1": ("Numbers", {"values": "1,2,3"}), "2": ("Plus", {"b": 10}), "3": ("Gather", {"scale": 2}),
                   "4": ("Number", {"value": 9}), "5": ("Gather", {"scale": 1})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "a"), ("4", 0, "5", "a")])
    result = engine().run(wf, outputs=["3", "5"])
    assert calls("3") == [([11, 12, 13], [2])]  # one call, the whole list
    assert result.values["3"] == (72,)  # a single call's output is a single value
    assert calls("5") == [([9], [1])]  # a single linked value arrives as a one-element list


def test_each_item_is_cached_on_its_own():
    """Changing one item re-runs only that item's calls, down a chain of mapped nodes."""
    eng = engine()
    nodes = {"1": ("Numbers", {"values": "1,2,3"}), "2": ("Plus", {"b": 20}), "3": ("Plus", {"b": 100}),
             "4": ("Show", {})}
    links = [("1", 0, "2", "a"), ("2", 0, "3", "a"), ("3", 0, "4", "value")]
    first = eng.run(workflow(nodes, links))
    assert first.ui["4"]["value"] == [121, 122, 123]
    LOG.clear()
    again = eng.run(workflow(nodes, links))  # unchanged: nothing runs at all
    assert LOG == [] and again.ui == first.ui and again.executed == []
    nodes["1"] = ("Numbers", {"values": "1,5,3"})
    changed = eng.run(workflow(nodes, links))
    assert calls("1") == [("1,5,3",)]
    assert calls("2") == [(5, 20)] and calls("3") == [(25, 100)] and calls("4") == [(125,)]
    assert changed.ui["4"]["value"] == [121, 125, 123]
    LOG.clear()
    nodes["3"] = ("Plus", {"b": 200})  # a widget of a mapped node: every one of its calls re-runs
    eng.run(workflow(nodes, links))
    assert calls("2") == [] and [c[0] for c in calls("3")] == [21, 25, 23]


def test_a_failing_item_names_the_node_and_the_item():
    wf = workflow({"1": ("Numbers", {"values": "1,13,3"}), "2": ("Plus", {"b": 0})}, [("1", 0, "2", "a")])
    with pytest.raises(NodeExecutionError) as caught:
        engine().run(wf, outputs=["2"])
    error = caught.value
    assert error.node_id == "2" and error.item == 1
    assert "node 2 (Plus) failed on list item 1" in str(error) and "unlucky 13" in str(error)
    assert error.exception_message == "list item 1: unlucky 13"


def test_linked_values_are_checked_item_by_item():
    wf = workflow({"1": ("Numbers", {"values": "1,2000"}), "2": ("Number", {"value": 1}), "3": ("Plus", {})},
                  [("2", 0, "3", "a"), ("1", 0, "3", "b")])
    with pytest.raises(NodeExecutionError, match=r"linked value for 'b' item 1: Value 2000 bigger than max"):
        engine().run(wf, outputs=["3"])


def test_an_empty_list_is_an_error_naming_the_input():
    wf = workflow({"1": ("Numbers", {"values": ""}), "2": ("Plus", {"b": 0})}, [("1", 0, "2", "a")])
    with pytest.raises(NodeExecutionError, match="input 'a' received an empty list"):
        engine().run(wf, outputs=["2"])


def test_validation_still_checks_the_type_of_a_list_output():
    wf = workflow({"1": ("Latents", {}), "2": ("Plus", {})}, [("1", 0, "2", "a")])
    with pytest.raises(ValidationFailed) as caught:
        engine().run(wf, outputs=["2"])
    assert [issue.type for issue in caught.value.issues] == ["return_type_mismatch"]
    assert "received_type(LATENT) mismatch input_type(INT)" in caught.value.issues[0].details


def test_a_node_run_several_times_reports_one_start_one_end_and_progress_that_only_grows():
    events = []

    class Recorder(Hooks):
        def node_start(self, run, node_id, node_type):
            events.append(("start", node_id))

        def node_end(self, run, node_id, node_type, *, cached, ui, seconds):
            events.append(("end", node_id))

        def progress(self, run, node_id, value, total, preview=None):
            events.append(("progress", node_id, value, total))

    wf = workflow({"1": ("Numbers", {"values": "1,2"}), "2": ("Count", {})}, [("1", 0, "2", "a")])
    engine().run(wf, outputs=["2"], hooks=[Recorder()])
    assert [e for e in events if e[1] == "2"] == [("start", "2"), ("progress", "2", 1, 4), ("progress", "2", 2, 4),
                                                  ("progress", "2", 3, 4), ("progress", "2", 4, 4), ("end", "2")]


def test_item_identity_is_by_content_for_list_outputs():
    a = ItemList([torch.ones(2, 3), "x"], [("n:0:0",), ("n:0:1",)])
    b = ItemList([torch.ones(2, 3), "y"], [("m:0:0",), ("m:0:1",)])
    assert a.identity(0) == b.identity(0) and a.identity(1) != b.identity(1)
    assert content_digest(torch.ones(2, 3)) != content_digest(torch.ones(3, 2))  # shape is part of it
    assert content_digest(torch.ones(2)) != content_digest(torch.ones(2, dtype=torch.float64))
    assert content_digest(object()) is None
    odd = ItemList([object()], [("n:0:0",)])
    assert odd.identity(0) == "at:n:0:0"  # not digestible: known by where it came from


def test_merge_ui_concatenates_key_by_key():
    assert merge_ui([{"images": [1]}, {"images": [2, 3], "text": ["t"]}]) == {"images": [1, 2, 3], "text": ["t"]}


def test_a_file_reading_node_fed_a_list_of_paths_fingerprints_each_file(tmp_path):
    """FileValue's fingerprint names its linked path: each item's file is digested, so editing one file
    re-runs only the call that reads it."""
    import fake_nodes

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("1")
    second.write_text("2")
    eng = engine()
    wf = workflow({"1": ("Paths", {"paths": f"{first}|{second}"}), "2": ("FileValue", {})}, [("1", 0, "2", "path")])
    assert list(eng.run(wf, outputs=["2"]).values["2"][0]) == [1, 2]
    second.write_text("7")
    import os
    os.utime(second, ns=(1, 1))  # a different mtime: the digest memo looks again
    fake_nodes.CALLS.clear()
    assert list(eng.run(wf, outputs=["2"]).values["2"][0]) == [1, 7]
    assert fake_nodes.CALLS == ["2"]  # one call: the edited file's


def test_object_info_and_the_ui_format_say_which_outputs_are_lists():
    from nodegraph.formats.ui_export import GRID_SHAPE, to_ui
    from nodegraph.server.object_info import node_info

    repeat = node_info(Repeat, None)
    assert repeat["output_is_list"] == [True, False] and repeat["input_is_list"] is False
    assert node_info(Gather, None)["input_is_list"] is True and node_info(Gather, None)["output_is_list"] == [False]
    wf = workflow({"1": ("Number", {"value": 1}), "2": ("Repeat", {"times": 2})}, [("1", 0, "2", "a")])
    saved = {str(node["id"]): node for node in to_ui(wf, engine().registry)["nodes"]}
    assert [output.get("shape") for output in saved["2"]["outputs"]] == [GRID_SHAPE, None]


def test_an_item_list_survives_copy_and_pickle():
    import copy
    import pickle

    items = ItemList([1, "a"], ["k:0", ("n:0:1",)])
    for clone in (copy.deepcopy(items), pickle.loads(pickle.dumps(items))):
        assert isinstance(clone, ItemList) and list(clone) == [1, "a"] and clone.origins == items.origins
        assert clone.identity(1) == items.identity(1)
