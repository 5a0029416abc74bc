"""The settings room (kept on the server, so they follow the user to another browser), the minimap, and the
fuzzy node search by name, category and socket type (typing on the canvas opens it; a dragged link filters
it by type). One page for the module; the server's settings are put back at the end."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from shared_page import screenshots, server_json, shared_editor

pytestmark = pytest.mark.browser

DEFAULTS = {"nodegraph.theme": "dark", "nodegraph.linkStyle": "spline", "nodegraph.snapToGrid": False,
            "nodegraph.minimap": True, "nodegraph.previewMode": "auto", "nodegraph.keybindings": {}}


@pytest.fixture(scope="module")
def editor(browser, server):
    try:
        with shared_editor(browser, server.url) as driver:
            yield driver
    finally:
        server_json(server.url, "/settings", DEFAULTS)  # the server is shared by every browser test


def canvas_brightness(editor) -> float:
    """Mean brightness of an empty strip of canvas at the top left."""
    box = editor.page.locator("#canvas").bounding_box()
    png = editor.page.screenshot(clip={"x": box["x"] + 2, "y": box["y"] + 2, "width": 60, "height": 20})
    with Image.open(io.BytesIO(png)) as image:
        return float(np.asarray(image.convert("L")).mean())


def test_settings_apply_at_once_and_follow_the_user(editor, browser, server, artifacts):
    editor.clear_canvas()
    node = editor.add_node("test image", editor.canvas_point(0.3, 0.3))
    assert canvas_brightness(editor) < 60
    editor.page.locator("[data-action=settings]").click()
    dialog = editor.page.locator("#settings")
    dialog.wait_for()
    dialog.locator("select[name='nodegraph.theme']").select_option("light")
    assert editor.page.locator("body").get_attribute("data-theme") == "light"
    dialog.locator("select[name='nodegraph.linkStyle']").select_option("linear")
    dialog.locator("input[name='nodegraph.snapToGrid']").check()
    dialog.locator("select[name='nodegraph.previewMode']").select_option("none")
    dialog.locator("input[name='nodegraph.minimap']").uncheck()
    assert not editor.page.locator("#minimap").is_visible()
    # rebind "fit view" from "." to F
    dialog.locator("tr[data-command='fitView'] .keybind").click()
    editor.key("f")
    assert dialog.locator("tr[data-command='fitView'] .keybind").inner_text() == "F"
    screenshots(editor, artifacts, "settings_light")
    editor.key("Escape")
    assert not dialog.is_visible()
    assert canvas_brightness(editor) > 180  # the light canvas

    title = editor.point("h.titlePoint(args[0])", node)  # snap to grid: a moved node lands on the 20 px grid
    editor.drag(title, (title[0] + 37, title[1] + 23))
    assert all(v % 20 == 0 for v in editor.node(node)["pos"])

    stored = server_json(server.url, "/settings")
    assert stored["nodegraph.theme"] == "light" and stored["nodegraph.linkStyle"] == "linear"
    assert stored["nodegraph.snapToGrid"] is True and stored["nodegraph.previewMode"] == "none"
    assert stored["nodegraph.keybindings"] == {"fitView": ["F"]}

    with shared_editor(browser, server.url) as other:  # another browser: the same settings
        assert other.page.locator("body").get_attribute("data-theme") == "light"
        assert not other.page.locator("#minimap").is_visible()
        other.key("F1")
        assert "F" in [cell.strip() for cell in other.page.locator("#help kbd").all_inner_texts()]
        other.key("Escape")
        other.drag(other.canvas_point(0.5, 0.95), other.canvas_point(0.2, 0.6))  # pan away, then F fits
        panned = other.hook("h.view()")
        other.key("f")
        assert other.hook("h.view()") != panned
    editor.page.locator("[data-action=settings]").click()
    editor.page.locator("[data-action=reset-keys]").click()
    assert editor.page.locator("tr[data-command='fitView'] .keybind").inner_text() == "."
    for name, value in (("nodegraph.theme", "dark"), ("nodegraph.linkStyle", "spline"), ("nodegraph.previewMode", "auto")):
        editor.page.locator(f"select[name='{name}']").select_option(value)
    editor.page.locator("input[name='nodegraph.snapToGrid']").uncheck()
    editor.page.locator("input[name='nodegraph.minimap']").check()
    editor.key("Escape")
    assert server_json(server.url, "/settings")["nodegraph.keybindings"] == {}


def test_minimap_moves_the_view(editor, artifacts):
    editor.click(editor.canvas_point(0.5, 0.95))
    editor.key("Control+d")
    editor.wait_until("h.nodes().length === 7")
    editor.page.mouse.move(*editor.canvas_point(0.5, 0.5))
    editor.page.mouse.wheel(0, -900)  # close in: the view is a small frame on the minimap
    minimap = editor.page.locator("#minimap")
    assert minimap.is_visible()
    box = minimap.bounding_box()
    canvas = editor.page.locator("#canvas").bounding_box()

    def centre_x(node_id: str) -> float:
        rect = editor.hook("h.nodeRect(args[0])", node_id)
        return rect["x"] + rect["w"] / 2

    editor.click((box["x"] + box["width"] * 0.12, box["y"] + box["height"] * 0.5))  # the left end: the loader
    assert canvas["x"] < centre_x("4") < canvas["x"] + canvas["width"]
    left_view = editor.hook("h.view()")
    editor.drag((box["x"] + box["width"] * 0.12, box["y"] + box["height"] * 0.5),
                (box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.5))  # drag to the right end: the saver
    assert editor.hook("h.view()")["offset"][0] < left_view["offset"][0]
    assert canvas["x"] < centre_x("9") < canvas["x"] + canvas["width"]
    screenshots(editor, artifacts, "minimap")


def test_fuzzy_search_by_name_category_and_socket_type(editor, server, artifacts):
    info = server_json(server.url, "/object_info")
    editor.clear_canvas()
    editor.click(editor.canvas_point(0.4, 0.4))
    editor.page.keyboard.type("ksadv")  # typing on the canvas opens the search with what was typed
    search = editor.page.locator(".palette-search")
    assert search.input_value() == "ksadv"
    assert editor.page.locator(".palette-item.active").get_attribute("data-type") == "KSamplerAdvanced"
    editor.key("Escape")

    editor.page.keyboard.type("in:LATENT out:IMAGE")
    found = editor.page.locator(".palette-item").evaluate_all("rows => rows.map(r => r.dataset.type)")
    assert "VAEDecode" in found
    for node_type in found:
        inputs = {**info[node_type]["input"]["required"], **info[node_type]["input"].get("optional", {})}
        assert any(entry[0] == "LATENT" for entry in inputs.values()), node_type
        assert "IMAGE" in info[node_type]["output"], node_type
    screenshots(editor, artifacts, "search_by_type")
    search.fill("conditioning")
    categories = editor.page.locator(".palette-item-category").all_inner_texts()[:5]
    assert categories and all("conditioning" in c for c in categories)
    editor.key("Escape")

    source = editor.add_node("test image", editor.canvas_point(0.1, 0.2))
    editor.drag(editor.point("h.outputPoint(args[0], 0)", source), editor.canvas_point(0.6, 0.6))
    assert "take IMAGE" in editor.page.locator(".palette-heading").inner_text()
    search.type("sav")
    offered = editor.page.locator(".palette-item").evaluate_all("rows => rows.map(r => r.dataset.type)")
    assert offered and offered[0] == "SaveImage" and "CLIPTextEncode" not in offered
    editor.key("Enter")
    saver = next(n["id"] for n in editor.nodes() if n["type"] == "SaveImage")
    assert {"from_node": source, "from_slot": 0, "to_node": saver, "to_input": "images"} in editor.links()
