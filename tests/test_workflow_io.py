"""The native workflow format: load/save round trip and readable format errors."""

import json

import pytest

from nodegraph.workflow import WorkflowFormatError, load_workflow, parse_workflow, save_workflow


def test_round_trip_keeps_editor_state(tmp_path):
    data = {
        "format": "nodegraph", "version": 1,
        "nodes": {"1": {"type": "Number", "widgets": {"value": 2}, "title": "Seed", "pos": [10, 20],
                        "size": [200, 80], "mode": "bypass", "color": "#335", "custom_key": {"kept": True}}},
        "links": [{"from_node": "1", "from_slot": 0, "to_node": "2", "to_input": "a"}],
        "groups": [{"title": "G", "bounding": [0, 0, 10, 10], "font_size": 24}],
        "extra": {"ds": {"scale": 1.5}},
    }
    path = tmp_path / "wf.json"
    save_workflow(parse_workflow(data), path)
    again = load_workflow(path)
    assert again.nodes["1"].title == "Seed" and again.nodes["1"].mode == "bypass"
    assert again.nodes["1"].model_extra == {"custom_key": {"kept": True}}
    assert again.groups[0].model_extra == {"font_size": 24} and again.extra == {"ds": {"scale": 1.5}}
    assert json.loads(path.read_text())["links"][0] == data["links"][0]
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


@pytest.mark.parametrize("data, expected", [
    ([1, 2], "expected a JSON object"),
    ({"format": "other"}, "format 'other'"),
    ({"version": 99}, "newer than this nodegraph reads"),
    ({"nodes": {"1": {"widgets": {}}}}, "nodes.1.type: Field required"),
    ({"links": [{"from_node": "1", "from_slot": -1, "to_node": "2", "to_input": "a"}]}, "links.0.from_slot"),
])
def test_format_errors_say_where(data, expected):
    with pytest.raises(WorkflowFormatError, match=expected):
        parse_workflow(data)


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"nodes": {\n  "1": }')
    with pytest.raises(WorkflowFormatError, match="line 2"):
        load_workflow(path)
