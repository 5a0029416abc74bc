"""Workflows in PNG text chunks: written with png_info, read back preferring native, then UI, then API."""

import json

import pytest
from PIL import Image

from comfy_schemas import comfy_registry
from corpus_util import raw
from fake_nodes import registry as fake_registry, workflow as fake_workflow
from nodegraph.formats import load_workflow_file, ui_from_native
from nodegraph.formats.png import png_info, png_texts, read_png_workflow
from nodegraph.formats.api import to_api
from nodegraph.workflow import WorkflowFormatError, dump_workflow

REGISTRY = comfy_registry()


def _png(path, info=None):
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, pnginfo=info)
    return path


def test_png_info_writes_all_three_chunks_and_native_wins(tmp_path):
    wf = fake_workflow({"1": ("Number", {"value": 4}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    path = _png(tmp_path / "out.png", png_info(to_api(wf, fake_registry()), ui_from_native(wf, fake_registry()),
                                               dump_workflow(wf)))
    assert set(png_texts(path)) >= {"prompt", "workflow", "nodegraph_workflow"}
    back = read_png_workflow(path, fake_registry())
    assert back == wf


def test_ui_chunk_is_used_when_there_is_no_native_one(tmp_path):
    wf = fake_workflow({"1": ("Number", {"value": 4}), "2": ("Collect", {})}, [("1", 0, "2", "value")])
    wf.nodes["1"].title = "Start"
    path = _png(tmp_path / "ui.png", png_info(None, ui_from_native(wf, fake_registry()), None))
    back = read_png_workflow(path, fake_registry())
    assert back.nodes["1"].widgets == {"value": 4} and back.nodes["1"].title == "Start"


@pytest.mark.parametrize("name", ["png_lora.json", "png_sdxl_refiner_primitives.json"])
def test_png_with_comfyui_chunks_opens(tmp_path, name):
    """A PNG carrying the very chunks ComfyUI wrote into a saved image (corpus), made here with Pillow."""
    chunks = raw(name)
    info = png_info(None, None, None)
    info.add_text("prompt", chunks["prompt"])
    info.add_text("workflow", chunks["workflow"])
    path = _png(tmp_path / "comfy.png", info)
    wf = load_workflow_file(path, REGISTRY)
    assert set(wf.nodes) == {str(n["id"]) for n in json.loads(chunks["workflow"])["nodes"]
                             if n["type"] not in ("Note", "PrimitiveNode", "Reroute")}

    api_only = png_info(json.loads(chunks["prompt"]), None, None)
    wf_api = read_png_workflow(_png(tmp_path / "api.png", api_only), REGISTRY)
    assert set(wf_api.nodes) == set(json.loads(chunks["prompt"]))


def test_png_without_a_workflow_is_a_clear_error(tmp_path):
    path = _png(tmp_path / "plain.png")
    with pytest.raises(WorkflowFormatError, match="carries no workflow"):
        read_png_workflow(path, REGISTRY)
    bad = png_info(None, None, None)
    bad.add_text("workflow", "{not json")
    with pytest.raises(WorkflowFormatError, match="'workflow' text chunk is not valid JSON"):
        read_png_workflow(_png(tmp_path / "bad.png", bad), REGISTRY)
