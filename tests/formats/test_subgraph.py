"""Subgraphs flattened correctly: inputs and outputs of the instance wired to inner nodes, or refused."""

import copy

import pytest

from comfy_schemas import comfy_registry
from corpus_util import ui
from nodegraph.formats import map_models, ui_to_api
from nodegraph.formats.ui import from_ui
from nodegraph.validation import validate_workflow
from nodegraph.workflow import WorkflowFormatError

REGISTRY = comfy_registry()
SUB = "5f1e0c6a-0000-4000-8000-000000000001"


def _graph(mode=0, widgets_values=(7,)):
    """Outer: loader -> [subgraph: KSampler fed by its inputs model/latent and a promoted seed] -> VAEDecode."""
    definition = {
        "id": SUB, "version": 1, "name": "Sampler block", "state": {},
        "inputs": [{"id": "a", "name": "model", "type": "MODEL", "linkIds": [1]},
                   {"id": "b", "name": "latent", "type": "LATENT", "linkIds": [2]},
                   {"id": "c", "name": "seed", "type": "INT", "linkIds": [3]}],
        "outputs": [{"id": "d", "name": "LATENT", "type": "LATENT", "linkIds": [4]}],
        "nodes": [{"id": 1, "type": "KSampler", "mode": 0,
                   "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                              {"name": "positive", "type": "CONDITIONING", "link": None},
                              {"name": "negative", "type": "CONDITIONING", "link": None},
                              {"name": "latent_image", "type": "LATENT", "link": 2},
                              {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 3}],
                   "widgets_values": [0, "fixed", 20, 8, "euler", "normal", 1]}],
        "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "MODEL"},
                  {"id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 1, "target_slot": 3, "type": "LATENT"},
                  {"id": 3, "origin_id": -10, "origin_slot": 2, "target_id": 1, "target_slot": 4, "type": "INT"},
                  {"id": 4, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"}],
    }
    return {"version": 0.4, "last_node_id": 4, "last_link_id": 3, "definitions": {"subgraphs": [definition]},
            "nodes": [{"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["tiny-sd.safetensors"]},
                      {"id": 2, "type": "EmptyLatentImage", "widgets_values": [64, 64, 1]},
                      {"id": 3, "type": SUB, "mode": mode, "widgets_values": list(widgets_values),
                       "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                                  {"name": "latent", "type": "LATENT", "link": 2},
                                  {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}]},
                      {"id": 4, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": 3},
                                                                {"name": "vae", "type": "VAE", "link": None}]}],
            "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "LATENT"], [3, 3, 0, 4, 0, "LATENT"]]}


def test_instance_inputs_outputs_and_promoted_widgets_are_wired_inside():
    api = ui_to_api(_graph(), REGISTRY)
    assert set(api) == {"1", "2", "3:1", "4"}
    sampler = api["3:1"]["inputs"]
    assert sampler["model"] == ["1", 0] and sampler["latent_image"] == ["2", 0] and sampler["seed"] == 7
    assert api["4"]["inputs"]["samples"] == ["3:1", 0]


def test_bypassed_instance_passes_inputs_of_the_same_type_and_muted_one_runs_nothing():
    assert ui_to_api(_graph(mode=4), REGISTRY)["4"]["inputs"]["samples"] == ["2", 0]
    muted = ui_to_api(_graph(mode=2), REGISTRY)
    assert "3:1" not in muted and "samples" not in muted["4"]["inputs"]


def test_corpus_subgraph_validates_and_keeps_its_bypass():
    wf = from_ui(ui("ui_subgraph_text_to_image.json"), REGISTRY)
    assert wf.nodes["83:11"].mode == "bypass"
    assert {"83:3", "83:8", "83:27", "83:28", "83:29", "83:30", "83:13", "83:33", "60"} <= set(wf.nodes)
    assert validate_workflow(wf, REGISTRY) == []


def test_a_link_from_a_missing_subgraph_input_is_refused_by_name():
    data = copy.deepcopy(_graph())
    data["definitions"]["subgraphs"][0]["links"][0]["origin_slot"] = 9
    with pytest.raises(WorkflowFormatError, match="subgraph 'Sampler block' \\(node 3\\).*input 9"):
        from_ui(data, REGISTRY)


def test_missing_models_are_listed_and_map_model_fixes_them():
    wf = from_ui(ui("ui_img2img.json"), REGISTRY)
    broken = map_models(wf, {"v1-5-pruned-emaonly-fp16.safetensors": "gone.safetensors"})
    issues = validate_workflow(broken, REGISTRY)
    assert [(i.node_id, i.type) for i in issues] == [("13", "value_not_in_list")]
    assert "'v1-5-pruned-emaonly-fp16.safetensors'" in str(issues[0])  # the names that are available
    assert validate_workflow(map_models(broken, {"gone.safetensors": "tiny-sd.safetensors"}), REGISTRY) == []
