"""UI -> API conversion against what ComfyUI's editor really queued for the same graphs."""

import pytest

from comfy_schemas import comfy_registry
from corpus_util import PNG_FILES, prompt, raw, ui
from nodegraph.formats import map_models, ui_to_api
from nodegraph.formats.api import to_api
from nodegraph.formats.ui import from_ui, with_widget_defaults

REGISTRY = comfy_registry()
EDITOR_ONLY_INPUTS = {"choose file to upload"}
"""Editors of 2023 also sent the upload button's value; the server ignores it."""


def _inputs(api):
    return {nid: (node["class_type"], {k: v for k, v in node["inputs"].items() if k not in EDITOR_ONLY_INPUTS})
            for nid, node in api.items()}


def test_default_graph_converts_to_the_real_api_file_of_the_same_graph():
    """The editor's default graph (frontend asset) and its API export (ComfyUI's CI example) differ only in the
    checkpoint file name, which came from different installs. The asset's SaveImage has no saved widget values:
    the editor gives it the default prefix, and so do we."""
    workflow = with_widget_defaults(from_ui(ui("ui_default_graph.json"), REGISTRY), REGISTRY)
    workflow = map_models(workflow, {"v1-5-pruned-emaonly-fp16.safetensors": "v1-5-pruned-emaonly.ckpt"})
    assert _inputs(to_api(workflow, REGISTRY)) == _inputs(raw("api_default_graph.json"))


@pytest.mark.parametrize("name", PNG_FILES)
def test_ui_chunk_converts_to_the_prompt_chunk_saved_with_it(name):
    """Each PNG ComfyUI saved carries the UI graph and the API prompt its editor made from it: ours must match."""
    assert _inputs(ui_to_api(ui(name), REGISTRY)) == _inputs(prompt(name))


def test_primitives_reroutes_and_notes_leave_no_trace_in_the_prompt():
    api = ui_to_api(ui("png_sdxl_refiner_primitives.json"), REGISTRY)
    assert {node["class_type"] for node in api.values()}.isdisjoint({"PrimitiveNode", "Note", "Reroute"})
    assert api["11"]["inputs"]["start_at_step"] == 20 and api["10"]["inputs"]["end_at_step"] == 20
    reroutes = ui_to_api(ui("ui_reroute_nodes.json"), REGISTRY)
    assert reroutes["6"]["inputs"]["clip"] == ["4", 1]


def test_subgraph_flattens_into_the_prompt_with_unique_ids():
    api = ui_to_api(ui("ui_subgraph_text_to_image.json"), REGISTRY)
    assert api["60"]["inputs"]["images"] == ["83:8", 0]
    assert "83:11" not in api  # ModelSamplingAuraFlow is bypassed inside the subgraph
    assert api["83:3"]["inputs"]["model"] == ["83:28", 0]
    assert api["83:3"]["inputs"]["seed"] == 528562900154240
    assert "84" not in api and "83" not in api


@pytest.mark.parametrize("name", ["api_default_graph.json", "api_sdxl_base_refiner.json"])
def test_api_corpus_files_import_and_validate(name):
    from nodegraph.formats import to_workflow
    from nodegraph.validation import validate_workflow

    wf = to_workflow(raw(name), REGISTRY, name)
    assert set(wf.nodes) == set(raw(name))
    assert {i.type for i in validate_workflow(wf, REGISTRY)} == {"value_not_in_list"}  # checkpoints not here
