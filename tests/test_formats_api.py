"""ComfyUI API format in and out."""

import pytest

from fake_nodes import registry, workflow
from nodegraph import Engine
from nodegraph.formats import to_workflow
from nodegraph.formats.api import from_api, to_api
from nodegraph.workflow import WorkflowFormatError

PROMPT = {
    "1": {"class_type": "Number", "inputs": {"value": 4}, "_meta": {"title": "Start"}},
    "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3}},
    "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}},
}


def test_api_prompt_runs_and_round_trips():
    wf = to_workflow(PROMPT, registry())
    assert wf.nodes["1"].title == "Start" and len(wf.links) == 2
    assert Engine(registry()).run(wf).ui["3"] == {"value": [7]}
    again = to_api(wf, registry())
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in again.items()} == {
        k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in PROMPT.items()}


def test_list_values_are_wrapped_and_unwrapped():
    wf = from_api({"1": {"class_type": "Collect", "inputs": {"value": {"__value__": [1, 2, 3]}}}})
    assert wf.nodes["1"].widgets == {"value": [1, 2, 3]}
    assert to_api(wf, registry())["1"]["inputs"]["value"] == {"__value__": [1, 2, 3]}


def test_export_drops_muted_and_wires_bypassed_nodes():
    wf = workflow({"1": ("Number", {"value": 4}), "2": ("Add", {"b": 3}), "3": ("Collect", {})},
                  [("1", 0, "2", "a"), ("2", 0, "3", "value")])
    wf.nodes["2"].mode = "bypass"
    assert to_api(wf, registry())["3"]["inputs"]["value"] == ["1", 0] and "2" not in to_api(wf, registry())


def test_malformed_api_prompt_is_a_clear_error():
    with pytest.raises(WorkflowFormatError, match="node 2 has no class_type"):
        from_api({"2": {"class_type": "", "inputs": {}}})


def test_map_models_substitutes_names():
    from nodegraph.formats import map_models

    wf = from_api({"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}}})
    mapped = map_models(wf, {"v1-5-pruned-emaonly.safetensors": "tiny.safetensors"})
    assert mapped.nodes["4"].widgets == {"ckpt_name": "tiny.safetensors"}
    assert wf.nodes["4"].widgets == {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}  # original untouched
