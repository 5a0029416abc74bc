"""Whole-graph validation: every problem reported at once, each naming node, input and value."""

import pytest

from fake_nodes import registry, workflow
from nodegraph import Engine, ValidationFailed
from nodegraph.validation import validate_workflow


def issues_of(wf, **kwargs):
    return validate_workflow(wf, registry(), **kwargs)


def kinds(issues):
    return sorted((i.type, i.node_id, i.input_name) for i in issues)


def test_valid_workflow_has_no_issues():
    wf = workflow({"1": ("Number", {"value": 2}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    assert issues_of(wf) == []


def test_every_problem_is_collected_before_running():
    wf = workflow(
        {
            "1": ("Number", {"value": 5000}),          # above max
            "2": ("Scale", {"factor": -1.0, "mode": "ceil"}),  # below min, not in list; 'a' missing
            "3": ("Nope", {}),                          # unknown type
            "4": ("Collect", {}),
            "5": ("Add", {"b": "seven"}),              # wrong JSON type
        },
        [("1", 0, "4", "value"), ("2", 1, "5", "a")],  # FLOAT into INT socket
    )
    issues = issues_of(wf)
    assert kinds(issues) == sorted([
        ("value_bigger_than_max", "1", "value"),
        ("required_input_missing", "2", "a"),
        ("value_not_in_list", "2", "mode"),
        ("value_smaller_than_min", "2", "factor"),
        ("missing_node_type", "3", None),
        ("invalid_input_type", "5", "b"),
        ("return_type_mismatch", "5", "a"),
    ])
    by_type = {i.type: i for i in issues}
    assert by_type["value_bigger_than_max"].received_value == 5000
    assert "1000" in by_type["value_bigger_than_max"].message
    assert "'ceil' not in ['floor', 'round']" in by_type["value_not_in_list"].details
    assert "received_type(FLOAT) mismatch input_type(INT)" in by_type["return_type_mismatch"].details
    assert "Nope" in by_type["missing_node_type"].message
    text = str(by_type["invalid_input_type"])
    assert "node 5 (Add)" in text and "'b'" in text and "'seven'" in text


@pytest.mark.parametrize("links, expected", [
    ([("9", 0, "2", "value")], "Linked node '9' does not exist"),
    ([("1", 3, "2", "value")], "has no output slot 3"),
    ([("1", 0, "2", "value"), ("1", 0, "2", "value")], "More than one link"),
    ([("1", 0, "7", "value")], "which does not exist"),
])
def test_bad_links_are_named(links, expected):
    wf = workflow({"1": ("Number", {}), "2": ("Collect", {})}, links)
    issues = [i for i in issues_of(wf) if i.type == "bad_linked_input"]
    assert len(issues) == 1 and expected in issues[0].message


def test_unknown_input_and_literal_for_socket():
    wf = workflow({"1": ("Number", {"value": 1, "colour": "red"}), "2": ("Collect", {"value": 3})}, [])
    assert kinds(issues_of(wf)) == sorted([("unknown_input", "1", "colour"), ("invalid_input_type", "2", "value")])


@pytest.mark.parametrize("widget, value, kind", [
    ("value", 1.5, "invalid_input_type"),
    ("value", True, "invalid_input_type"),
    ("value", "3", "invalid_input_type"),
    ("value", -1001, "value_smaller_than_min"),
])
def test_int_values(widget, value, kind):
    wf = workflow({"1": ("Number", {widget: value}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    assert [i.type for i in issues_of(wf)] == [kind]


def test_integral_float_is_accepted_for_int_and_defaults_fill_in():
    wf = workflow({"1": ("Number", {"value": 3.0}), "2": ("Scale", {}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    graph = Engine(registry()).compile(wf)
    assert graph.nodes["1"].widgets == {"value": 3}
    assert graph.nodes["2"].widgets == {"factor": 1.0, "mode": "floor"}


def test_cycle_names_its_nodes():
    wf = workflow({"1": ("Passthrough", {}), "2": ("Passthrough", {}), "3": ("Passthrough", {}), "4": ("Sink", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "a"), ("3", 0, "1", "a"), ("3", 0, "4", "a")])
    issues = [i for i in issues_of(wf) if i.type == "dependency_cycle"]
    assert len(issues) == 1
    assert issues[0].extra["cycle"] == ["1", "2", "3"] and "1, 2, 3" in issues[0].details


def test_no_output_node():
    wf = workflow({"1": ("Number", {})}, [])
    assert [i.type for i in issues_of(wf)] == ["prompt_no_outputs"]


def test_validation_failed_message_lists_every_issue():
    wf = workflow({"1": ("Number", {"value": "x"}), "2": ("Collect", {})}, [])
    with pytest.raises(ValidationFailed) as info:
        Engine(registry()).run(wf)
    message = str(info.value)
    assert "2 problems" in message and "node 1 (Number), input 'value'" in message
    assert "node 2 (Collect), input 'value'" in message


def test_muted_node_is_dropped_and_bypassed_node_passes_through():
    wf = workflow({"1": ("Number", {"value": 4}), "2": ("Add", {"b": 10}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    bypassed = wf.model_copy(update={"nodes": {**wf.nodes, "2": wf.nodes["2"].model_copy(update={"mode": "bypass"})}})
    result = Engine(registry()).run(bypassed)
    assert result.ui["3"] == {"value": [4]}
    muted = wf.model_copy(update={"nodes": {**wf.nodes, "2": wf.nodes["2"].model_copy(update={"mode": "never"})}})
    assert kinds(issues_of(muted)) == [("required_input_missing", "3", "value")]


def test_linked_widget_value_is_checked_when_it_arrives():
    wf = workflow({"1": ("Number", {"value": 999}), "2": ("Number", {}), "3": ("Collect", {})},
                  [("1", 0, "2", "value"), ("2", 0, "3", "value")])
    assert issues_of(wf) == []  # the linked value is only known at run time
    wf_bad = workflow({"1": ("Number", {"value": 5}), "2": ("Scale", {}), "3": ("Scale", {}), "4": ("Collect", {})},
                      [("1", 0, "2", "a"), ("2", 1, "3", "factor"), ("1", 0, "3", "a"), ("3", 0, "4", "value")])
    wf_bad = wf_bad.with_widget("2", "factor", 3.0)  # 5*3 = 15.0 > factor max of 10
    from nodegraph import NodeExecutionError

    with pytest.raises(NodeExecutionError, match="node 3 .*bigger than max"):
        Engine(registry()).run(wf_bad)


def test_requested_outputs_must_exist():
    wf = workflow({"1": ("Number", {}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    issues = issues_of(wf, outputs=["9"])
    assert [(i.type, i.node_id) for i in issues] == [("prompt_no_outputs", "9")]
    assert issues_of(wf, outputs=["1"]) == []  # any node may be a target, e.g. to preview an intermediate


def _wildcard_registry():
    from nodegraph import Node, NodeResult, NodeSchema, Socket
    from nodegraph.schema import ANY_TYPE

    class Show(Node):
        schema = NodeSchema(type_id="Show", category="test", inputs=(Socket("source", ANY_TYPE),), output_node=True)

        @classmethod
        def execute(cls, ctx, source):
            return NodeResult(ui={"shown": [repr(source)]})

    reg = registry()
    reg.register(Show)
    return reg


def test_wildcard_input_accepts_any_output_type_and_still_needs_a_link():
    reg = _wildcard_registry()
    wf = workflow({"1": ("Number", {"value": 3}), "2": ("Text", {"value": "hi"}), "3": ("Show", {}), "4": ("Show", {})},
                  [("1", 0, "3", "source"), ("2", 0, "4", "source")])
    assert validate_workflow(wf, reg) == []
    result = Engine(reg).run(wf)
    assert result.ui["3"] == {"shown": ["3"]} and result.ui["4"] == {"shown": ["'hi'"]}
    unlinked = workflow({"1": ("Show", {})}, [])
    assert kinds(validate_workflow(unlinked, reg)) == [("required_input_missing", "1", "source")]
    literal = workflow({"1": ("Show", {"source": 5})}, [])
    assert kinds(validate_workflow(literal, reg)) == [("invalid_input_type", "1", "source")]


def test_only_the_exact_wildcard_is_a_type_name():
    from pydantic import ValidationError

    from nodegraph import InputSpec

    assert InputSpec(name="source", type="*").type == "*"
    for bad in ("**", "any", "*INT"):
        with pytest.raises(ValidationError, match="upper-case name"):
            InputSpec(name="source", type=bad)
