"""Widgets in a real browser: scrubbing numbers, toggles, converting a widget to a socket and back, image
upload, and a bypassed node wired through when the graph is queued and exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.browser


def test_number_scrub_toggle_and_widget_conversion_round_trip(editor):
    editor.clear_canvas()
    number = editor.add_node("Int", editor.canvas_point(0.05, 0.6), pick="PrimitiveInt")
    start = editor.widget(number, "value")
    editor.drag(start, (start[0] + 40, start[1]))  # scrub: one step per 2 pixels
    assert editor.node(number)["widgets"]["value"] == 20
    flag = editor.add_node("Boolean", editor.canvas_point(0.05, 0.85), pick="PrimitiveBoolean")
    editor.click(editor.widget(flag, "value"))
    assert editor.node(flag)["widgets"]["value"] is True

    source = editor.add_node("test image", editor.canvas_point(0.4, 0.1))
    editor.drag(editor.point("h.outputPoint(args[0], 0)", number), editor.widget(source, "seed"))  # onto the widget
    assert editor.node(source)["converted"] == ["seed"]  # dropping a matching link on a widget converts it
    assert {"from_node": number, "from_slot": 0, "to_node": source, "to_input": "seed"} in editor.links()
    rect = editor.hook("h.nodeRect(args[0])", source)
    editor.click((rect["x"] + rect["w"] / 2, rect["y"] + rect["h"] - 4), button="right")
    editor.page.locator(".menu-item", has_text="Convert input to widget").hover()
    editor.choose_in_menu("Convert seed to widget")
    assert editor.node(source)["converted"] == [] and editor.links() == []
    assert editor.widget(source, "seed")  # shown as a widget again


def test_image_upload_button_sets_the_combo(editor, server, tmp_path):
    editor.clear_canvas()
    loader = editor.add_node("load image", editor.canvas_point(0.3, 0.3), pick="LoadImage")
    picture = tmp_path / "upload me.png"
    Image.new("RGB", (20, 10), (0, 200, 0)).save(picture)
    with editor.page.expect_file_chooser() as chooser:
        editor.click(editor.widget(loader, "image", "center", "upload"))
    chooser.value.set_files(str(picture))
    editor.wait_until("h.nodes().find(n => n.id === args[0]).widgets.image === 'upload me.png'", loader)


def test_bypassed_node_is_wired_through(editor, server):
    editor.clear_canvas()
    source = editor.add_node("test image", editor.canvas_point(0.05, 0.1))
    scale = editor.add_node("image scale by", editor.canvas_point(0.35, 0.1), pick="ImageScaleBy")
    save = editor.add_node("save image", editor.canvas_point(0.65, 0.1), pick="TestSaveImage")
    editor.connect(source, 0, scale, "image")
    editor.connect(scale, 0, save, "images")
    editor.type_into_widget(source, "steps", "1")
    editor.click(editor.point("h.titlePoint(args[0])", scale))
    editor.key("Control+b")
    with editor.page.expect_download() as download:
        editor.page.locator("[data-action=export-api]").click()
    prompt = json.loads(Path(download.value.path()).read_text())
    assert scale not in prompt and prompt[save]["inputs"]["images"] == [source, 0]
    editor.queue()
    editor.wait_until("h.images(args[0]).length", save, timeout=30)
    [image] = editor.hook("h.images(args[0])", save)
    with Image.open(server.output_dir / image["subfolder"] / image["filename"]) as png:
        assert png.size == (128, 96)  # not scaled: the bypassed node passed its input through
