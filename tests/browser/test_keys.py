"""ComfyUI's keyboard habits in the editor: queue (Ctrl+Enter), queue at the front (Ctrl+Shift+Enter), cancel
the running prompt (Ctrl+Alt+Enter or the toolbar's Cancel) and a queued one (its Cancel in the queue panel),
Space+drag pans, Ctrl+A / Delete / Ctrl+G / Ctrl+M / Ctrl+B / Alt+C / Ctrl+D / Ctrl+S / Ctrl+O, and the help
overlay lists them. One page for the module."""

from __future__ import annotations

import pytest
from shared_page import screenshots, server_json, shared_editor

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def editor(browser, server):
    with shared_editor(browser, server.url) as driver:
        yield driver


def build_slow_source(editor, steps: int) -> tuple[str, str]:
    """An image source taking `steps` x 50 ms into a saver, built from the palette."""
    editor.clear_canvas()
    source = editor.add_node("test image", editor.canvas_point(0.12, 0.2))
    save = editor.add_node("save image", editor.canvas_point(0.55, 0.2), pick="TestSaveImage")
    editor.connect(source, 0, save, "images")
    editor.type_into_widget(source, "steps", str(steps))
    return source, save


def queued_id(editor, before: str | None) -> str:
    """The prompt id of the queue the user just asked for (the answer to its POST /prompt)."""
    return editor.wait_until("h.lastQueueResult() && h.lastQueueResult().prompt_id !== args[0]"
                             " && h.lastQueueResult().prompt_id", before)


def test_queue_front_and_cancel_running_and_queued(editor, server, artifacts):
    source, _ = build_slow_source(editor, 120)  # 6 s a prompt
    editor.click(editor.canvas_point(0.5, 0.9))
    editor.key("Control+Enter")
    first = queued_id(editor, None)
    editor.wait_until("h.running().node === args[0]", source)
    editor.key("Control+Enter")
    second = queued_id(editor, first)
    editor.key("Control+Shift+Enter")  # at the front: runs before `second`
    front = queued_id(editor, second)
    pending = [item[1] for item in sorted(server_json(server.url, "/queue")["queue_pending"])]
    assert pending == [front, second]

    editor.key("q")  # the queue panel lists the pending ones in the order they will run
    panel = editor.page.locator("#queue-panel")
    rows = panel.locator(".pending-item")
    rows.nth(1).wait_for()
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.promptId)") == [front, second]
    screenshots(editor, artifacts, "keys_queue_panel")
    panel.locator(f".pending-item[data-prompt-id='{second}'] button").click()  # cancel a queued prompt
    panel.locator(f".pending-item[data-prompt-id='{second}']").wait_for(state="detached")
    assert [item[1] for item in server_json(server.url, "/queue")["queue_pending"]] == [front]

    editor.click(editor.canvas_point(0.5, 0.9))
    editor.key("Control+Alt+Enter")  # cancel the running prompt: the front one starts
    editor.wait_until("h.events().filter(e => e.type === 'execution_interrupted').length === 1")
    editor.wait_until("h.running().node === args[0]", source)
    editor.page.locator("#cancel-button").click()  # the toolbar's Cancel stops it too
    editor.wait_until("h.events().filter(e => e.type === 'execution_interrupted').length === 2")
    queue = server_json(server.url, "/queue")
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
    history = server_json(server.url, "/history")
    assert second not in history  # cancelled before it ran
    assert all(history[p]["status"]["status_str"] != "success" for p in (first, front) if p in history)
    editor.key("q")


def test_edit_keys_as_comfyui_defines_them(editor, artifacts):
    editor.clear_canvas()
    a = editor.add_node("test image", editor.canvas_point(0.15, 0.2))
    b = editor.add_node("concatenate", editor.canvas_point(0.55, 0.2))
    editor.click(editor.canvas_point(0.5, 0.92))
    editor.key("Control+a")
    assert sorted(editor.hook("h.selection()")) == sorted([a, b])
    editor.key("Control+m")
    assert {n["mode"] for n in editor.nodes()} == {"never"}
    editor.key("Control+m")
    editor.key("Control+b")
    assert {n["mode"] for n in editor.nodes()} == {"bypass"}
    editor.key("Control+b")
    editor.key("Alt+c")
    assert all(n["collapsed"] for n in editor.nodes())
    editor.key("Alt+c")
    editor.key("Control+g")
    [group] = editor.hook("h.groups()")
    gx, gy, gw, gh = group["bounding"]
    for node in editor.nodes():  # the group frames every selected node
        x, y = node["pos"]
        assert gx <= x and gy <= y and x + node["size"][0] <= gx + gw and y + node["size"][1] <= gy + gh

    # Space+drag over a node pans the canvas instead of moving the node
    view = editor.hook("h.view()")
    pos = editor.node(a)["pos"]
    title = editor.point("h.titlePoint(args[0])", a)
    editor.page.keyboard.down(" ")
    editor.drag(title, (title[0] + 120, title[1] + 50))
    editor.page.keyboard.up(" ")
    assert editor.node(a)["pos"] == pos
    panned = editor.hook("h.view()")["offset"]
    assert panned == [pytest.approx(view["offset"][0] + 120, abs=1), pytest.approx(view["offset"][1] + 50, abs=1)]
    editor.drag(title := editor.point("h.titlePoint(args[0])", a), (title[0] + 30, title[1]))  # no Space: it moves
    assert editor.node(a)["pos"][0] > pos[0]

    editor.click(editor.point("h.titlePoint(args[0])", b))
    editor.key("Delete")
    assert [n["id"] for n in editor.nodes()] == [a]

    editor.key("Control+s")  # Ctrl+S saves: an unsaved tab first asks for a name (the files room's "workflow.save")
    field = editor.page.locator(".name-dialog input")
    field.wait_for()
    field.press("Escape")
    field.wait_for(state="detached")
    with editor.page.expect_file_chooser() as chooser:  # Ctrl+O opens
        editor.key("Control+o")
    assert chooser.value is not None
    editor.key("Escape")

    editor.key("Control+d")  # the default workflow
    editor.wait_until("h.nodes().length === 7")
    assert "KSampler" in {n["type"] for n in editor.nodes()}

    editor.key("F1")
    help_text = editor.page.locator("#help").inner_text()
    for keys in ("Ctrl+Enter", "Ctrl+Shift+Enter", "Ctrl+Alt+Enter", "Ctrl+D", "Ctrl+G", "Alt+C", "Space"):
        assert keys in help_text, keys
    screenshots(editor, artifacts, "keys_help")
    editor.key("Escape")
    assert not editor.page.locator("#help").is_visible()
