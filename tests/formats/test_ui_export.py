"""Export to ComfyUI's UI format: round trips of the corpus and workflows made here."""

import json

import pytest

from comfy_schemas import comfy_registry
from corpus_util import UI_FILES, raw, structure, ui
from nodegraph.formats import ui_from_native
from nodegraph.formats.api import from_api
from nodegraph.formats.ui import KEY, from_ui

REGISTRY = comfy_registry()
FLAT = [name for name in UI_FILES if name != "ui_subgraph_text_to_image.json"]


def _round_trip(data):
    exported = ui_from_native(from_ui(data, REGISTRY), REGISTRY)
    return json.loads(json.dumps(exported))  # what a file holds


@pytest.mark.parametrize("name", FLAT)
def test_ui_to_native_to_ui_gives_the_same_graph(name):
    original = ui(name)
    exported = _round_trip(original)
    assert structure(exported) == structure(original)
    assert exported["version"] == 0.4 and exported["last_node_id"] == original["last_node_id"]
    assert exported["extra"] == original.get("extra", {})
    assert len(exported["groups"]) == len(original.get("groups", []))


def test_round_trip_keeps_editor_details():
    original = ui("ui_default_template.json")
    exported = _round_trip(original)
    assert (exported["id"], exported["revision"]) == (original["id"], original["revision"])
    assert exported["groups"] == original["groups"]
    loader = next(n for n in exported["nodes"] if n["id"] == 4)
    assert loader["properties"] == original["nodes"][0]["properties"]  # cnr_id, ver, models
    note = next(n for n in exported["nodes"] if n["id"] == 15)
    assert note == original["nodes"][7]
    prompt = next(n for n in exported["nodes"] if n["id"] == 6)
    assert (prompt["color"], prompt["bgcolor"]) == ("#232", "#353")


def test_native_reroutes_keep_their_link_ids():
    original = ui("ui_native_reroutes.json")
    exported = _round_trip(original)
    assert sorted(map(tuple, exported["links"])) == sorted(map(tuple, original["links"]))
    assert exported["extra"]["reroutes"] == original["extra"]["reroutes"]
    assert exported["floatingLinks"] == original["floatingLinks"]


def test_primitive_nodes_and_their_links_come_back():
    original = ui("png_sdxl_refiner_primitives.json")
    exported = _round_trip(original)
    assert structure(exported) == structure(original)
    sampler = next(n for n in exported["nodes"] if n["id"] == 10)
    assert [e["name"] for e in sampler["inputs"] if "widget" in e] == ["steps", "end_at_step"]


def test_flattened_subgraph_exports_a_graph_that_imports_the_same():
    first = from_ui(ui("ui_subgraph_text_to_image.json"), REGISTRY)
    exported = ui_from_native(first, REGISTRY)
    assert all(isinstance(n["id"], int) for n in exported["nodes"])
    again = from_ui(json.loads(json.dumps(exported)), REGISTRY)
    assert sorted((n.type, n.mode, json.dumps(n.widgets)) for n in again.nodes.values()) == sorted(
        (n.type, n.mode, json.dumps(n.widgets)) for n in first.nodes.values())
    assert len(again.links) == len(first.links)


def test_workflow_made_here_gets_what_the_editor_would_give_it():
    wf = from_api(raw("api_default_graph.json"))
    data = ui_from_native(wf, REGISTRY)
    sampler = next(n for n in data["nodes"] if n["id"] == 3)
    assert sampler["widgets_values"] == [156680208700286, "fixed", 20, 8, "euler", "normal", 1]
    assert sampler["properties"] == {"Node name for S&R": "KSampler"}
    assert [e["name"] for e in sampler["inputs"]] == ["model", "positive", "negative", "latent_image"]
    assert all(e["link"] is not None for e in sampler["inputs"])
    loader = next(n for n in data["nodes"] if n["id"] == 4)
    assert [(o["name"], o["slot_index"], len(o["links"])) for o in loader["outputs"]] == [
        ("MODEL", 0, 1), ("CLIP", 1, 2), ("VAE", 2, 1)]
    assert data["last_node_id"] == 9 and data["last_link_id"] == len(data["links"]) == 9
    orders = {n["id"]: n["order"] for n in data["nodes"]}
    assert orders[4] < orders[6] < orders[3] < orders[8] < orders[9]
    again = from_ui(data, REGISTRY)
    assert {k: n.widgets for k, n in again.nodes.items()} == {k: n.widgets for k, n in wf.nodes.items()}
    assert sorted(map(str, again.links)) == sorted(map(str, wf.links))


def test_edits_made_here_win_over_kept_editor_routes():
    wf = from_ui(ui("ui_reroute_nodes.json"), REGISTRY)
    links = [l for l in wf.links if l.to_node != "7"]  # unlink node 7's clip (it came through Reroute 14)
    exported = ui_from_native(wf.model_copy(update={"links": links}), REGISTRY)
    clip7 = next(n for n in exported["nodes"] if n["id"] == 7)["inputs"][0]
    assert clip7["link"] is None
    assert structure(exported)["links"].count(("14", 0, "6", "clip")) == 1
    assert wf.nodes["6"].model_extra[KEY]["routes"]["clip"]["source"] == ["4", 1]


def test_export_leaves_the_workflow_untouched():
    wf = from_ui(ui("png_sdxl_refiner_primitives.json"), REGISTRY)
    before = wf.model_dump()
    changed = wf.with_widget("10", "steps", 30)
    exported = ui_from_native(changed, REGISTRY)
    assert wf.model_dump() == before
    primitive = next(n for n in exported["nodes"] if n["id"] == 45)
    assert primitive["widgets_values"][0] == 30  # the PrimitiveNode shows the value edited here


def test_link_from_a_node_that_is_not_there_is_left_out_of_the_export():
    data = ui("ui_default_graph.json")
    wf = from_ui(data, REGISTRY)
    wf = wf.model_copy(update={"nodes": {k: v for k, v in wf.nodes.items() if k != "4"}})  # loader gone
    exported = ui_from_native(wf, REGISTRY)
    assert not [link for link in exported["links"] if link[1] == 4]
