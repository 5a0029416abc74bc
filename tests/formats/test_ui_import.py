"""Importing ComfyUI UI-format files: every corpus file, widget mapping on known values, editor-only nodes."""

import copy

import pytest

from comfy_schemas import comfy_registry
from corpus_util import UI_FILES, ui
from nodegraph.formats import to_workflow, ui_to_api
from nodegraph.formats.ui import KEY, from_ui, is_ui_format
from nodegraph.validation import validate_workflow
from nodegraph.workflow import WorkflowFormatError

REGISTRY = comfy_registry()
EXPECTED_ISSUES = {"value_not_in_list", "prompt_no_outputs", "required_input_missing"}
"""Model names not installed here, and the frontend's test graphs without outputs or with loose inputs."""


@pytest.mark.parametrize("name", UI_FILES)
def test_every_corpus_file_imports_and_validates_cleanly(name):
    data = ui(name)
    assert is_ui_format(data)
    workflow = to_workflow(data, REGISTRY, name)
    assert workflow.nodes
    issues = validate_workflow(workflow, REGISTRY)
    unexpected = [str(i) for i in issues if i.type not in EXPECTED_ISSUES]
    assert not unexpected, unexpected  # no unknown inputs, bad links, wrong value types: the mapping is right
    if name.startswith("png_") or name.startswith("ui_default") or name in ("ui_img2img.json",
                                                                              "ui_subgraph_text_to_image.json"):
        assert not [i for i in issues if i.type == "required_input_missing"]


def test_default_graph_widgets_map_by_declared_order():
    wf = from_ui(ui("ui_default_graph.json"), REGISTRY)
    sampler = wf.nodes["3"]
    assert sampler.widgets == {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
                               "scheduler": "normal", "denoise": 1}
    assert sampler.model_extra[KEY]["control"] == {"seed": True}  # legacy boolean control slot, kept for export
    assert wf.nodes["6"].widgets == {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"}
    assert wf.nodes["5"].widgets == {"width": 512, "height": 512, "batch_size": 1}
    assert wf.nodes["4"].widgets == {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}
    assert ("4", 1, "6", "clip") in {(l.from_node, l.from_slot, l.to_node, l.to_input) for l in wf.links}


def test_upload_slot_and_control_value_are_kept_apart_from_widgets():
    wf = from_ui(ui("ui_img2img.json"), REGISTRY)
    load = wf.nodes["18"]
    assert load.widgets == {"image": "example.png"} and load.model_extra[KEY]["upload"] == {"image": "image"}
    assert wf.nodes["16"].model_extra[KEY]["control"] == {"seed": "randomize"}
    assert wf.nodes["16"].widgets["sampler_name"] == "euler" and wf.nodes["16"].widgets["scheduler"] == "simple"


def test_primitive_nodes_are_inlined_into_the_widgets_they_feed():
    wf = from_ui(ui("png_sdxl_refiner_primitives.json"), REGISTRY)
    base, refiner = wf.nodes["10"], wf.nodes["11"]
    assert (base.widgets["steps"], base.widgets["end_at_step"]) == (25, 20)
    assert (refiner.widgets["steps"], refiner.widgets["start_at_step"]) == (25, 20)
    assert sorted(base.converted_widgets) == ["end_at_step", "steps"]
    assert base.widgets["noise_seed"] == 6767725640732 and base.widgets["add_noise"] == "enable"
    editor = {n["id"]: n["type"] for n in wf.extra[KEY]["editor_nodes"]}
    assert editor[45] == editor[47] == "PrimitiveNode" and editor[36] == "Note"
    assert not {"45", "47", "36", "48"} & set(wf.nodes)
    assert not [l for l in wf.links if l.from_node in ("45", "47")]


def test_reroute_chains_resolve_to_the_real_source():
    wf = from_ui(ui("ui_reroute_nodes.json"), REGISTRY)
    assert set(wf.nodes) == {"4", "5", "6", "7"}
    edges = {(l.from_node, l.from_slot, l.to_node, l.to_input) for l in wf.links}
    assert edges == {("4", 1, "6", "clip"), ("4", 1, "7", "clip")}  # 4 -> Reroute 11 -> Reroute 14 -> 6 and 7
    assert len(wf.extra[KEY]["editor_nodes"]) == 8


def test_notes_are_never_validated_or_run():
    wf = from_ui(ui("ui_default_template.json"), REGISTRY)
    assert "MarkdownNote" not in {n.type for n in wf.nodes.values()}
    assert [n["title"] for n in wf.extra[KEY]["editor_nodes"]][0] == "Note: Prompt"


def test_bypassed_lora_passes_model_and_clip_through():
    """Derived from the real LoRA file: its LoraLoader (node 10) bypassed (mode 4), as the editor saves it."""
    data = copy.deepcopy(ui("png_lora.json"))
    next(n for n in data["nodes"] if n["id"] == 10)["mode"] = 4
    wf = from_ui(data, REGISTRY)
    assert wf.nodes["10"].mode == "bypass"
    prompt = ui_to_api(data, REGISTRY)
    assert "10" not in prompt
    assert prompt["3"]["inputs"]["model"] == ["4", 0]
    assert prompt["6"]["inputs"]["clip"] == ["4", 1] and prompt["7"]["inputs"]["clip"] == ["4", 1]


def test_muted_node_does_not_run():
    data = copy.deepcopy(ui("png_hiresfix_latent.json"))
    for node in data["nodes"]:
        if node["id"] in (10, 11, 12, 13):  # mute the hires pass
            node["mode"] = 2
    wf = from_ui(data, REGISTRY)
    assert wf.nodes["11"].mode == "never"
    assert set(ui_to_api(data, REGISTRY)) == {"3", "5", "6", "7", "8", "9", "16"}
    assert validate_workflow(wf, REGISTRY, outputs=["9"]) == [] or all(
        i.type == "value_not_in_list" for i in validate_workflow(wf, REGISTRY))


def test_unknown_node_types_are_validation_errors_with_raw_values_kept():
    data = copy.deepcopy(ui("ui_default_graph.json"))
    data["nodes"][3]["type"] = "FancySampler"  # node 3, the KSampler
    data["nodes"][2]["type"] = "FancyLatent"  # node 5
    wf = from_ui(data, REGISTRY)
    assert wf.nodes["3"].model_extra[KEY]["widgets_values"] == [156680208700286, True, 20, 8, "euler", "normal", 1]
    missing = [i for i in validate_workflow(wf, REGISTRY) if i.type == "missing_node_type"]
    assert sorted((i.node_id, i.class_type) for i in missing) == [("3", "FancySampler"), ("5", "FancyLatent")]


def test_version_1_link_objects_and_stale_target_slots():
    data = {"version": 1, "state": {"lastNodeId": 2, "lastLinkId": 1},
            "nodes": [{"id": 1, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [64, 64, 1],
                       "outputs": [{"name": "LATENT", "type": "LATENT", "links": [1]}]},
                      {"id": 2, "type": "VAEDecode", "mode": 0,
                       "inputs": [{"name": "vae", "type": "VAE", "link": None},
                                  {"name": "samples", "type": "LATENT", "link": 1}]}],
            "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0,
                       "type": "LATENT"}]}
    wf = to_workflow(data, REGISTRY)
    assert [(l.from_node, l.to_node, l.to_input) for l in wf.links] == [("1", "2", "samples")]
    assert wf.nodes["1"].widgets == {"width": 64, "height": 64, "batch_size": 1}


def test_legacy_group_nodes_are_refused_by_name():
    data = {"version": 0.4, "links": [], "nodes": [{"id": 7, "type": "workflow>Sampler"}],
            "extra": {"groupNodes": {"Sampler": {}}}}
    with pytest.raises(WorkflowFormatError, match="node 7 is a legacy group node"):
        from_ui(data, REGISTRY)
