"""Errors and widgets as a user meets them: an out-of-range entry is kept and marked (not clamped), the server's
validation error shows in a compact list that jumps to the node, and clears the moment the input is fixed;
seeds follow "control after generate" (fixed / increment / decrement / randomize), and every fresh browser
starts with a seed of its own."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from shared_page import screenshots, shared_editor

pytestmark = pytest.mark.browser

TEMPLATE_SEED = 156680208700286  # the seed written in the default workflow's template


@pytest.fixture(scope="module")
def editor(browser, server):
    with shared_editor(browser, server.url) as driver:
        yield driver


def red_border_pixels(editor, node_id: str, widget: str) -> int:
    """How many strongly red pixels the widget row shows (its outline turns red when marked)."""
    rect = editor.hook("h.widgetRect(args[0], args[1])", node_id, widget)
    png = editor.page.screenshot(clip={"x": rect["x"], "y": rect["y"], "width": rect["w"], "height": rect["h"]})
    with Image.open(io.BytesIO(png)) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)).sum())


def test_out_of_range_is_marked_and_errors_clear_when_fixed(editor, artifacts):
    editor.clear_canvas()
    source = editor.add_node("test image", editor.canvas_point(0.12, 0.2))
    save = editor.add_node("save image", editor.canvas_point(0.55, 0.2), pick="TestSaveImage")
    assert red_border_pixels(editor, source, "steps") == 0
    editor.type_into_widget(source, "steps", "500")  # the declared maximum is 200
    assert editor.node(source)["widgets"]["steps"] == 500  # kept as typed, not silently made 200
    assert any("above the maximum 200" in text for text in editor.toasts())
    assert red_border_pixels(editor, source, "steps") > 20

    editor.click(editor.canvas_point(0.5, 0.92))
    editor.key("Control+Enter")
    editor.wait_until("h.errors(args[0]).length && h.errors(args[1]).length", source, save)
    panel = editor.page.locator("#error-panel")
    assert panel.is_visible()
    rows = panel.locator(".error-item").all_inner_texts()
    assert len(rows) == 2 and any("steps" in row for row in rows) and any("images" in row for row in rows)
    box = panel.bounding_box()
    assert box["height"] < 120 and box["width"] <= 450  # compact: a corner, not a cover over the canvas
    screenshots(editor, artifacts, "errors_panel")

    editor.page.mouse.wheel(0, 600)  # move away, then a click on the row brings the node back into view
    editor.drag(editor.canvas_point(0.5, 0.6), editor.canvas_point(0.05, 0.05))
    panel.locator(".error-item", has_text="steps").click()
    assert editor.hook("h.selection()") == [source]
    rect = editor.hook("h.nodeRect(args[0])", source)
    canvas = editor.page.locator("#canvas").bounding_box()
    assert canvas["x"] <= rect["x"] and rect["x"] + rect["w"] <= canvas["x"] + canvas["width"]

    editor.type_into_widget(source, "steps", "2")  # fixing the input clears its error at once
    assert editor.hook("h.errors(args[0])", source) == []
    assert red_border_pixels(editor, source, "steps") == 0
    assert panel.locator(".error-item").all_inner_texts() == [next(r for r in rows if "images" in r)]
    editor.connect(source, 0, save, "images")  # linking the missing input clears the last one
    assert editor.hook("h.errors(args[0])", save) == []
    assert not panel.is_visible()

    editor.key("Control+Enter")  # dismiss: the × hides the list
    editor.wait_until("h.lastQueueResult() && h.lastQueueResult().prompt_id")
    editor.type_into_widget(source, "width", "8")  # below its minimum 16
    editor.key("Control+Enter")
    panel.wait_for()
    panel.locator("[data-action=close-errors]").click()
    assert not panel.is_visible()
    assert editor.hook("h.errors(args[0])", source) == []


def test_seed_control_modes_and_a_random_first_seed(editor, browser, server):
    nodes = None
    seeds = []
    for _ in range(2):  # two fresh browsers
        with shared_editor(browser, server.url) as fresh:
            nodes = {n["id"]: n for n in fresh.nodes()}
            assert nodes["3"]["controls"] == {"seed": "randomize"}  # ComfyUI's default
            seeds.append(nodes["3"]["widgets"]["seed"])
    assert TEMPLATE_SEED not in seeds and seeds[0] != seeds[1]
    assert all(0 <= seed <= 2**50 for seed in seeds)

    editor.clear_canvas()
    source = editor.add_node("test image", editor.canvas_point(0.12, 0.2))
    save = editor.add_node("save image", editor.canvas_point(0.55, 0.2), pick="TestSaveImage")
    editor.connect(source, 0, save, "images")
    editor.type_into_widget(source, "steps", "1")
    editor.type_into_widget(source, "seed", "1000")
    assert editor.node(source)["controls"]["seed"] == "randomize"
    expected = {"fixed": lambda s: s == 1000, "increment": lambda s: s == 1001,
                "decrement": lambda s: s == 999, "randomize": lambda s: s not in (999, 1000, 1001)}
    last_prompt = None
    for mode in ("fixed", "increment", "decrement", "randomize"):
        editor.type_into_widget(source, "seed", "1000")
        editor.click(editor.widget(source, "seed", "center", "control"))
        editor.choose_in_menu(mode)
        assert editor.node(source)["controls"]["seed"] == mode
        editor.queue()
        last_prompt = editor.wait_until("h.lastQueueResult() && h.lastQueueResult().prompt_id !== args[0]"
                                        " && h.lastQueueResult().prompt_id", last_prompt)
        seed = editor.node(source)["widgets"]["seed"]
        assert expected[mode](seed), f"{mode}: seed {seed}"
    # the arrows of the control row step through the four modes
    editor.click(editor.widget(source, "seed", "right", "control"))
    assert editor.node(source)["controls"]["seed"] == "fixed"
