"""Layout as a user sees it: bypassing or muting a node keeps its size; the toolbar fits 800, 1024 and
1440 px windows (what does not fit is in its ☰ menu); "fit view" of a 500-node graph stays readable; the
node palette opens with nothing preselected (and test nodes last)."""

from __future__ import annotations

import json

import pytest
from shared_page import WIDTHS, big_workflow, screenshots, shared_editor

pytestmark = pytest.mark.browser

READABLE_SCALE = 0.55  # below this the canvas drops node text (canvas.js low detail)


@pytest.fixture(scope="module")
def editor(browser, server):
    with shared_editor(browser, server.url) as driver:
        yield driver


def test_bypass_and_mute_keep_the_node_size(editor, artifacts):
    editor.clear_canvas()
    left = editor.add_node("test image", editor.canvas_point(0.1, 0.2))
    right = editor.add_node("save image", editor.canvas_point(0.1, 0.75), pick="TestSaveImage")
    rect = editor.hook("h.nodeRect(args[0])", left)
    title = editor.point("h.titlePoint(args[0])", right)  # put the neighbour just right of it
    editor.drag(title, (title[0] + rect["x"] + rect["w"] + 12 - editor.hook("h.nodeRect(args[0])", right)["x"], title[1]))
    editor.click(editor.point("h.titlePoint(args[0])", left))
    before = editor.hook("h.nodeRect(args[0])", left)
    for keys, mode in (("Control+b", "bypass"), ("Control+m", "never")):
        editor.key(keys)
        assert editor.node(left)["mode"] == mode
        assert editor.hook("h.nodeRect(args[0])", left) == before
        neighbour = editor.hook("h.nodeRect(args[0])", right)
        assert before["x"] + before["w"] < neighbour["x"]  # it does not grow over its neighbour
        if mode == "bypass":
            screenshots(editor, artifacts, "layout_bypassed_node")
    editor.key("Control+m")


def test_toolbar_fits_every_width_and_the_rest_is_in_its_menu(editor, artifacts):
    editor.clear_canvas()
    editor.add_node("test image", editor.canvas_point(0.3, 0.3))
    toolbar = editor.page.locator("#toolbar")
    for width in WIDTHS:
        editor.page.set_viewport_size({"width": width, "height": 860})
        editor.page.wait_for_timeout(150)
        assert toolbar.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), f"toolbar overflows at {width}px"
        buttons = toolbar.locator("button").evaluate_all("""bs => bs.map(b => ({
            text: b.textContent.trim(), visible: b.offsetParent !== null, right: b.getBoundingClientRect().right,
            action: b.dataset.action || b.id }))""")
        shown = [b for b in buttons if b["visible"]]
        assert all(b["right"] <= width for b in shown)
        assert {"queue", "cancel"} <= {b["action"] for b in shown}  # always at hand
        hidden = [b for b in buttons if not b["visible"] and b["action"] != "toolbar-more"]
        more = editor.page.locator("#toolbar-more")
        assert more.is_visible() == bool(hidden)
        if width == 800:
            assert hidden, "at 800 px some commands should be in the menu"
        if hidden:
            more.click()
            labels = editor.page.locator(".toolbar-menu .menu-item").all_inner_texts()
            assert len(labels) == len(hidden)
            editor.key("Escape")
        editor.screenshot(artifacts / f"layout_toolbar_{width}.png")
    # a command from the menu works: Clear at 800 px
    editor.page.set_viewport_size({"width": 800, "height": 860})
    editor.page.wait_for_timeout(150)
    editor.page.locator("#toolbar-more").click()
    editor.choose_in_menu("Clear")
    assert editor.nodes() == []
    editor.page.set_viewport_size({"width": 1400, "height": 860})
    editor.page.wait_for_timeout(150)


def test_fit_view_of_a_large_graph_is_readable(editor, artifacts, tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big_workflow(100)))
    editor.drop_file(path, "application/json")
    editor.wait_until("h.nodes().length === 500")
    editor.click(editor.canvas_point(0.5, 0.5))
    editor.key(".")
    view = editor.hook("h.view()")
    assert view["scale"] >= READABLE_SCALE
    assert editor.hook("h.nodesInView()") >= 4
    screenshots(editor, artifacts, "layout_fit_large_graph")
    # with a selection, "." fits the selection (two nodes on screen now, picked with click and shift-click)
    canvas = editor.page.locator("#canvas").bounding_box()

    def on_screen(rect):
        return (canvas["x"] <= rect["x"] and rect["x"] + rect["w"] <= canvas["x"] + canvas["width"]
                and canvas["y"] <= rect["y"] and rect["y"] + rect["h"] <= canvas["y"] + canvas["height"])

    picked = [n["id"] for n in editor.nodes() if on_screen(editor.hook("h.nodeRect(args[0])", n["id"]))][:2]
    assert len(picked) == 2
    editor.click(editor.point("h.titlePoint(args[0])", picked[0]))
    editor.click(editor.point("h.titlePoint(args[0])", picked[1]), modifiers=("Shift",))
    assert sorted(editor.hook("h.selection()")) == sorted(picked)
    editor.page.mouse.move(*editor.canvas_point(0.5, 0.5))
    editor.page.mouse.wheel(0, 1500)  # far out: the two are specks somewhere
    editor.key(".")
    for node_id in picked:
        assert on_screen(editor.hook("h.nodeRect(args[0])", node_id))
    assert editor.hook("h.view()")["scale"] >= READABLE_SCALE


def test_palette_opens_with_nothing_preselected(editor, artifacts):
    editor.clear_canvas()
    editor.page.mouse.dblclick(*editor.canvas_point(0.4, 0.4))
    editor.page.locator(".palette-search").wait_for()
    assert editor.page.locator(".palette-item.active").count() == 0
    first_category = editor.page.locator(".palette-category").first.inner_text()
    assert not first_category.lower().startswith(("_for_testing", "test")), first_category
    screenshots(editor, artifacts, "layout_palette")
    editor.key("Enter")  # nothing chosen: nothing added
    assert editor.nodes() == []
    editor.key("ArrowDown")
    assert editor.page.locator(".palette-item.active").count() == 1
    editor.page.locator(".palette-search").type("vae decode")
    assert editor.page.locator(".palette-item.active").get_attribute("data-type") == "VAEDecode"
    editor.key("Enter")
    assert [n["type"] for n in editor.nodes()] == ["VAEDecode"]
