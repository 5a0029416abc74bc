"""The editor in a real browser against a real server: what a user does and sees.

Every action is a real mouse or keyboard event at a place read from the page's read-only test hook.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from nodes.models.embedded import EMBEDDED_NAME
from PIL import Image
from PIL.PngImagePlugin import PngInfo

pytestmark = pytest.mark.browser


def build_source_and_save(editor) -> tuple[str, str]:
    """From an empty canvas: add an image source and a save node from the palette and link them."""
    editor.clear_canvas()
    source = editor.add_node("test image", editor.canvas_point(0.12, 0.2))
    save = editor.add_node("save image", editor.canvas_point(0.55, 0.2), pick="TestSaveImage")
    editor.connect(source, 0, save, "images")
    assert editor.links() == [{"from_node": source, "from_slot": 0, "to_node": save, "to_input": "images"}]
    return source, save


def _overlapping(rects: list[dict]) -> list[tuple[dict, dict]]:
    return [(a, b) for i, a in enumerate(rects) for b in rects[i + 1:]
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]]


def test_default_graph_queues_and_shows_the_image(editor, server, artifacts):
    """The first-open text-to-image graph on a tiny random SD1 checkpoint: queue it, watch it, see the image."""
    nodes = {n["id"]: n for n in editor.nodes()}
    assert sorted(n["type"] for n in nodes.values()) == sorted(
        ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
         "SaveImage"])
    assert not any(n["missing"] for n in nodes.values())
    assert len(editor.links()) == 9
    assert not _overlapping([editor.hook("h.nodeRect(args[0])", node_id) for node_id in nodes])
    assert nodes["4"]["widgets"]["ckpt_name"] == EMBEDDED_NAME  # the shipped model, listed first by the server
    editor.type_into_widget("5", "width", "64")
    editor.type_into_widget("5", "height", "64")
    editor.type_into_widget("3", "steps", "4")
    editor.click(editor.canvas_point(0.5, 0.97))
    editor.key("Control+Enter")
    try:
        editor.wait_until("h.images('9').some(img => img.loaded)", timeout=90)
    except AssertionError:
        raise AssertionError(f"no image on SaveImage; the editor said {editor.toasts()}") from None
    # the image can load before the server, having written the history, says the run is over
    editor.wait_until("h.events().filter(e => e.type === 'executing').pop().node === null")
    events = editor.hook("h.events()")
    assert [e["node"] for e in events if e["type"] == "executing"][-1] is None  # the run is over
    assert [e["value"] for e in events if e["type"] == "progress" and e["node"] == "3"] == [1, 2, 3, 4]
    editor.screenshot(artifacts / "default_graph_with_image.png")
    images = editor.hook("h.images('9')")
    assert len(images) == 4  # the default graph makes a batch of four
    image = images[0]
    with Image.open(server.output_dir / image["subfolder"] / image["filename"]) as png:
        assert png.size == (64, 64)
        assert json.loads(png.text["prompt"])["3"]["inputs"]["steps"] == 4
        assert json.loads(png.text["nodegraph_workflow"])["nodes"]["5"]["pos"] == nodes["5"]["pos"]
        assert json.loads(png.text["workflow"])["nodes"]  # a ComfyUI UI workflow derived from the graph
    # the editor's own workflow travels with the prompt (SaveImage's `nodegraph_workflow` chunk)
    with urllib.request.urlopen(f"{server.url}/history") as response:
        [entry] = [e for e in json.load(response).values() if e["prompt"][2].get("9", {}).get("class_type") == "SaveImage"]
    sent = entry["prompt"][3]["extra_pnginfo"]["nodegraph_workflow"]
    assert sent["format"] == "nodegraph" and sent["nodes"]["5"]["pos"] == nodes["5"]["pos"]

    # dropping the PNG that SaveImage wrote brings its workflow back
    editor.clear_canvas()
    editor.drop_file(server.output_dir / image["subfolder"] / image["filename"], "image/png")
    editor.wait_until("h.nodes().length === 7")
    restored = {n["id"]: n for n in editor.nodes()}
    assert {n["type"] for n in restored.values()} == {n["type"] for n in nodes.values()}
    assert restored["3"]["widgets"]["steps"] == 4 and restored["5"]["widgets"]["width"] == 64
    assert restored["5"]["pos"] == nodes["5"]["pos"]  # the editor's own layout came back, not an auto-arrangement
    assert len(editor.links()) == 9


def test_build_from_empty_canvas_queue_and_see_the_image(editor, server, artifacts):
    source, save = build_source_and_save(editor)
    editor.type_into_widget(source, "width", "160")
    editor.click(editor.widget(source, "height", "right"))  # the arrow steps by the widget's step (16)
    editor.type_into_widget(source, "prompt", "a blue square")
    editor.click(editor.widget(source, "seed", "center", "control"))
    editor.choose_in_menu("fixed")
    widgets = editor.node(source)["widgets"]
    assert (widgets["width"], widgets["height"], widgets["prompt"]) == (160, 112, "a blue square")

    editor.queue()
    editor.wait_until("h.images(args[0]).some(img => img.loaded)", save, timeout=30)
    events = editor.hook("h.events()")
    steps = [e["value"] for e in events if e["type"] == "progress" and str(e["node"]) == source]
    assert steps == [1, 2, 3, 4, 5, 6], f"step progress on the running node: {events}"
    assert editor.hook("h.running()")["node"] is None

    [image] = editor.hook("h.images(args[0])", save)
    path = server.output_dir / image["subfolder"] / image["filename"]
    with Image.open(path) as png:
        assert png.size == (160, 112)
        assert json.loads(png.text["prompt"])[source]["inputs"]["prompt"] == "a blue square"
    editor.screenshot(artifacts / "editor_with_image.png")


def test_mismatched_link_is_refused_and_dropping_on_canvas_offers_compatible_nodes(editor, server):
    editor.clear_canvas()
    loader = editor.add_node("load checkpoint", editor.canvas_point(0.1, 0.2))
    save = editor.add_node("save image", editor.canvas_point(0.5, 0.2), pick="TestSaveImage")
    editor.connect(loader, 0, save, "images")  # MODEL into IMAGE
    assert editor.links() == []
    assert any("Cannot connect" in text for text in editor.toasts())

    source = editor.add_node("test image", editor.canvas_point(0.1, 0.55))
    start = editor.point("h.outputPoint(args[0], 0)", source)
    editor.drag(start, editor.canvas_point(0.6, 0.7))
    offered = editor.page.locator(".palette-item").evaluate_all("rows => rows.map(r => r.dataset.type)")
    with urllib.request.urlopen(f"{server.url}/object_info") as response:
        info = json.load(response)
    takes_image = {name for name, node in info.items()
                   if any(entry[0] in ("IMAGE", "*")  # a wildcard input (PreviewAny) takes any type
                          for entry in {**node["input"]["required"], **node["input"].get("optional", {})}.values())}
    assert set(offered) == takes_image and "TestSaveImage" in offered and "CLIPTextEncode" not in offered
    assert "take IMAGE" in editor.page.locator(".palette-heading").inner_text()
    editor.page.locator(".palette-item[data-type='TestSaveImage']").click()
    new_save = next(n["id"] for n in editor.nodes() if n["id"] not in (loader, save, source))
    assert {"from_node": source, "from_slot": 0, "to_node": new_save, "to_input": "images"} in editor.links()


def test_one_link_per_input_and_moving_a_link(editor):
    editor.clear_canvas()
    first = editor.add_node("String", editor.canvas_point(0.08, 0.15), pick="PrimitiveString")
    second = editor.add_node("String", editor.canvas_point(0.08, 0.5), pick="PrimitiveString")
    saver = editor.add_node("save text", editor.canvas_point(0.5, 0.3))
    editor.connect(first, 0, saver, "text")
    editor.connect(second, 0, saver, "text")
    assert editor.links() == [{"from_node": second, "from_slot": 0, "to_node": saver, "to_input": "text"}]
    # pick the link up off the input and drop it on empty canvas: it is removed
    editor.drag(editor.point("h.inputPoint(args[0], 'text')", saver), editor.canvas_point(0.8, 0.8))
    assert editor.links() == []


def test_undo_redo_and_copy_paste(editor):
    editor.clear_canvas()
    node = editor.add_node("concatenate", editor.canvas_point(0.3, 0.3))
    before = editor.node(node)["pos"]
    title = editor.point("h.titlePoint(args[0])", node)
    editor.drag(title, (title[0] + 200, title[1] + 100))
    moved = editor.node(node)["pos"]
    assert moved[0] > before[0] + 150
    editor.key("Control+c")
    editor.page.mouse.move(*editor.canvas_point(0.2, 0.7))
    editor.key("Control+v")
    assert len(editor.nodes()) == 2
    editor.key("Control+z")  # paste undone
    assert [n["id"] for n in editor.nodes()] == [node]
    editor.key("Control+z")  # move undone
    assert editor.node(node)["pos"] == before
    editor.key("Control+z")  # add undone
    assert editor.nodes() == []
    editor.key("Control+y")
    editor.key("Control+y")
    assert editor.node(node)["pos"] == moved
    editor.key("Control+Shift+z")
    assert len(editor.nodes()) == 2


def test_seed_control_after_queue(editor):
    source, _ = build_source_and_save(editor)
    editor.type_into_widget(source, "steps", "1")
    editor.type_into_widget(source, "seed", "1000")
    assert editor.node(source)["controls"]["seed"] == "randomize"  # ComfyUI's default for new nodes
    editor.queue()
    editor.wait_until("h.lastQueueResult() && h.lastQueueResult().prompt_id")
    randomized = editor.node(source)["widgets"]["seed"]
    assert randomized != 1000 and 0 <= randomized <= 2**50
    editor.click(editor.widget(source, "seed", "center", "control"))
    editor.choose_in_menu("increment")
    editor.queue()
    editor.wait_until("h.nodes().find(n => n.id === args[0]).widgets.seed === args[1] + 1", source, randomized)


def test_validation_errors_are_shown_on_the_node(editor, artifacts):
    editor.clear_canvas()
    save = editor.add_node("save image", editor.canvas_point(0.4, 0.3), pick="TestSaveImage")
    editor.queue()
    errors = editor.wait_until("h.errors(args[0]).length && h.errors(args[0])", save)
    assert errors[0]["input"] == "images"
    assert errors[0]["type"] == "required_input_missing"
    panel = editor.page.locator("#error-panel")
    assert panel.is_visible()
    assert "Required input is missing" in panel.inner_text()
    editor.screenshot(artifacts / "editor_validation_error.png")


def test_mute_bypass_collapse_rename_convert_and_help(editor):
    editor.clear_canvas()
    node = editor.add_node("test image", editor.canvas_point(0.3, 0.3))
    editor.click(editor.point("h.titlePoint(args[0])", node))
    editor.key("Control+m")
    assert editor.node(node)["mode"] == "never"
    editor.key("Control+b")
    assert editor.node(node)["mode"] == "bypass"
    editor.key("Control+b")
    assert editor.node(node)["mode"] == "always"
    editor.key("Alt+c")
    assert editor.node(node)["collapsed"]
    editor.key("Alt+c")
    editor.page.mouse.dblclick(*editor.point("h.titlePoint(args[0])", node))
    editor.page.keyboard.type("My source")
    editor.key("Enter")
    assert editor.node(node)["title"] == "My source"
    rect = editor.hook("h.nodeRect(args[0])", node)
    editor.click((rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] - 4), button="right")
    editor.page.locator(".menu-item", has_text="Convert widget to input").hover()
    editor.choose_in_menu("Convert seed to input")
    assert editor.node(node)["converted"] == ["seed"]
    number = editor.add_node("Int", editor.canvas_point(0.05, 0.75), pick="PrimitiveInt")
    editor.connect(number, 0, node, "seed")
    assert {"from_node": number, "from_slot": 0, "to_node": node, "to_input": "seed"} in editor.links()
    editor.click(editor.canvas_point(0.9, 0.9))
    editor.key("?")
    assert editor.page.locator("#help").is_visible()
    assert "Ctrl+M" in editor.page.locator("#help").inner_text()
    editor.key("Escape")
    assert not editor.page.locator("#help").is_visible()


def test_graph_survives_reload(editor):
    editor.clear_canvas()
    node = editor.add_node("concatenate", editor.canvas_point(0.3, 0.3))
    editor.type_into_widget(node, "delimiter", "--")
    time.sleep(0.5)  # the graph is kept after a short debounce
    editor.open()
    assert [(n["id"], n["widgets"]["delimiter"]) for n in editor.nodes()] == [(node, "--")]


COMFY_V04 = {
    "last_node_id": 12, "last_link_id": 3, "version": 0.4,
    "nodes": [
        {"id": 10, "type": "TestImageSource", "pos": [100, 130], "size": {"0": 300, "1": 200}, "flags": {},
         "mode": 0, "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
         "widgets_values": ["from comfy", 42, "increment", 64, 48, 2], "title": "Comfy source"},
        {"id": 11, "type": "Reroute", "pos": [450, 130], "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "IMAGE", "links": [2]}]},
        {"id": 12, "type": "TestSaveImage", "pos": [600, 130], "mode": 4,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "widgets_values": ["comfy_prefix"]},
        {"id": 13, "type": "Note", "pos": [100, 400], "widgets_values": ["a note"]},
        {"id": 14, "type": "SomeCustomNode", "pos": [100, 500], "widgets_values": [1, "x"],
         "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]},
    ],
    "links": [[1, 10, 0, 11, 0, "*"], [2, 11, 0, 12, 0, "IMAGE"]],
    "groups": [{"title": "Imported group", "bounding": [80, 60, 900, 320], "color": "#3f789e"}],
    "config": {}, "extra": {},
}

COMFY_V1 = {
    "version": 1, "state": {"lastNodeId": 2, "lastLinkId": 1},
    "nodes": [
        {"id": 1, "type": "PrimitiveString", "pos": [0, 0], "size": [300, 80], "mode": 2,
         "outputs": [{"name": "STRING", "type": "STRING", "links": [1]}], "widgets_values": ["v1 text"]},
        {"id": 2, "type": "SaveText", "pos": [400, 0], "size": [300, 100],
         "inputs": [{"name": "text", "type": "STRING", "link": 1}], "widgets_values": ["v1_prefix"]},
    ],
    "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "STRING"}],
    "groups": [], "config": {}, "extra": {},
}


def test_import_comfyui_ui_format_v04_and_v1(editor, tmp_path):
    path = tmp_path / "comfy_v04.json"
    path.write_text(json.dumps(COMFY_V04))
    editor.load_file(path)
    nodes = {n["id"]: n for n in editor.nodes()}
    assert set(nodes) == {"10", "12", "14"}  # the Reroute is resolved away, the Note left out
    assert nodes["14"]["missing"] and not nodes["10"]["missing"]  # a type the server lacks is shown as missing
    assert nodes["10"]["widgets"] == {"prompt": "from comfy", "seed": 42, "width": 64, "height": 48, "steps": 2}
    assert nodes["10"]["controls"] == {"seed": "increment"}
    assert nodes["10"]["title"] == "Comfy source"
    assert nodes["12"]["mode"] == "bypass"
    assert editor.links() == [{"from_node": "10", "from_slot": 0, "to_node": "12", "to_input": "images"}]
    assert editor.hook("h.groups()")[0]["title"] == "Imported group"

    path = tmp_path / "comfy_v1.json"
    path.write_text(json.dumps(COMFY_V1))
    editor.load_file(path)
    nodes = {n["id"]: n for n in editor.nodes()}
    assert nodes["1"]["mode"] == "never" and nodes["1"]["widgets"] == {"value": "v1 text"}
    assert nodes["2"]["widgets"] == {"filename_prefix": "v1_prefix"}
    assert editor.links() == [{"from_node": "1", "from_slot": 0, "to_node": "2", "to_input": "text"}]


def _png_with(path: Path, chunks: dict[str, str]) -> Path:
    info = PngInfo()
    for key, text in chunks.items():
        info.add_text(key, text)
    Image.new("RGB", (32, 24), (20, 120, 200)).save(path, pnginfo=info)
    return path


def test_dropping_png_restores_its_workflow(editor, tmp_path):
    comfy = _png_with(tmp_path / "comfy.png", {"workflow": json.dumps(COMFY_V1), "prompt": "{}"})
    editor.drop_file(comfy, "image/png")
    editor.wait_until("h.nodes().length === 2 && h.links().length === 1")
    assert {n["type"] for n in editor.nodes()} == {"PrimitiveString", "SaveText"}

    api_prompt = {"5": {"class_type": "PrimitiveString", "inputs": {"value": "from api"}},
                  "6": {"class_type": "SaveText", "inputs": {"text": ["5", 0], "filename_prefix": "api"}}}
    only_prompt = _png_with(tmp_path / "api.png", {"prompt": json.dumps(api_prompt)})
    editor.drop_file(only_prompt, "image/png")
    editor.wait_until("h.nodes().some(n => n.id === '5')")
    nodes = {n["id"]: n for n in editor.nodes()}
    assert nodes["5"]["widgets"] == {"value": "from api"}
    assert nodes["6"]["pos"][0] > nodes["5"]["pos"][0]  # laid out left to right
    assert editor.links() == [{"from_node": "5", "from_slot": 0, "to_node": "6", "to_input": "text"}]

    ours = {"format": "nodegraph", "version": 1,
            "nodes": {"1": {"type": "PrimitiveInt", "widgets": {"value": 7}, "pos": [0, 0]}}, "links": []}
    native = _png_with(tmp_path / "ours.png", {"nodegraph_workflow": json.dumps(ours), "workflow": json.dumps(COMFY_V1)})
    editor.load_file(native)  # through the Load button this time
    assert [(n["type"], n["widgets"]) for n in editor.nodes()] == [("PrimitiveInt", {"value": 7})]


def test_queue_panel_cancels_pending_and_running(editor, artifacts):
    source, save = build_source_and_save(editor)
    editor.type_into_widget(source, "steps", "200")  # 10 s: long enough to cancel at leisure
    editor.page.locator("#batch-count").fill("2")
    editor.queue()
    editor.wait_until("h.running().node === args[0]", source)
    editor.page.locator("[data-action=toggle-queue]").click()
    panel = editor.page.locator("#queue-panel")
    editor.wait_until("h.running().progress && h.running().progress.value >= 3")
    editor.screenshot(artifacts / "editor_running_with_queue_panel.png")
    panel.locator(".pending-item button").first.click()
    panel.locator(".queue-pending .queue-empty").wait_for()
    panel.locator(".running-item button").first.click()
    panel.locator(".queue-running .queue-empty").wait_for(timeout=10000)
    editor.wait_until("h.running().node === null")
    assert editor.hook("h.images(args[0])", save) == []


def test_groups_move_their_nodes_and_can_be_renamed(editor):
    editor.clear_canvas()
    a = editor.add_node("concatenate", editor.canvas_point(0.15, 0.3))
    b = editor.add_node("test image", editor.canvas_point(0.45, 0.3))
    editor.drag(editor.canvas_point(0.05, 0.2), editor.canvas_point(0.8, 0.95), modifiers=("Shift",))
    editor.key("Control+g")
    [group] = editor.hook("h.groups()")
    rect = editor.hook("h.groupRect(0)")
    positions = {n["id"]: n["pos"] for n in editor.nodes()}
    title = (rect["x"] + rect["w"] / 2, rect["y"] + 12)
    editor.drag(title, (title[0] + 50, title[1] + 30))
    moved = editor.hook("h.groups()")[0]["bounding"]
    assert moved[0] == pytest.approx(group["bounding"][0] + 50, abs=1)
    for node in editor.nodes():
        assert node["pos"] == [positions[node["id"]][0] + 50, positions[node["id"]][1] + 30]
    rect = editor.hook("h.groupRect(0)")
    editor.page.mouse.dblclick(rect["x"] + rect["w"] / 2, rect["y"] + 12)
    editor.page.keyboard.type("Sources")
    editor.key("Enter")
    assert editor.hook("h.groups()")[0]["title"] == "Sources"
    assert {a, b} == set(positions)


def test_model_lists_refresh_from_the_server(editor, server):
    editor.clear_canvas()
    loader = editor.add_node("load checkpoint", editor.canvas_point(0.3, 0.3))
    assert editor.node(loader)["widgets"]["ckpt_name"] == EMBEDDED_NAME  # a new loader takes the first model
    added = server.models_dir / "checkpoints" / "another_model.safetensors"
    added.write_bytes(b"not a model: only its name is listed")
    try:
        editor.key("r")
        editor.page.locator(".toast", has_text="refreshed").wait_for()
        editor.click(editor.widget(loader, "ckpt_name"))
        editor.choose_in_menu("another_model.safetensors")
        assert editor.node(loader)["widgets"]["ckpt_name"] == "another_model.safetensors"
    finally:
        added.unlink()


def test_save_load_and_export_api_format(editor, tmp_path):
    source, save = build_source_and_save(editor)
    text = editor.add_node("String", editor.canvas_point(0.1, 0.75), pick="PrimitiveString")
    saver = editor.add_node("save text", editor.canvas_point(0.45, 0.75))
    editor.connect(text, 0, saver, "text")
    editor.click(editor.point("h.titlePoint(args[0])", saver))
    editor.key("Control+m")  # muted: left out of the prompt
    with editor.page.expect_download() as download:
        editor.page.locator("[data-action=export-api]").click()
    prompt = json.loads(Path(download.value.path()).read_text())
    assert set(prompt) == {source, save, text}
    assert prompt[save]["class_type"] == "TestSaveImage"
    assert prompt[save]["inputs"] == {"images": [source, 0], "filename_prefix": "editor_test"}
    assert prompt[source]["inputs"]["width"] == 128

    editor.page.locator("[data-command='workflow.export']").click()  # Save writes to the server; see test_workflows_tabs
    with editor.page.expect_download() as download:
        editor.choose_in_menu("nodegraph workflow")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["format"] == "nodegraph" and saved["nodes"][saver]["mode"] == "never"
    editor.clear_canvas()
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    editor.load_file(path)
    assert editor.hook("h.workflow()")["nodes"] == saved["nodes"]
    assert sorted(editor.links(), key=str) == sorted(saved["links"], key=str)
