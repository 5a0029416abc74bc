"""The model library: folders from the server, a search box, and dragging a model onto the canvas makes its
loader node with that model chosen."""

from __future__ import annotations

import pytest
from editor_driver import TINY_CHECKPOINT
from files_helpers import screenshots

pytestmark = pytest.mark.browser


def drag_model(editor, name: str, fx: float, fy: float) -> dict:
    """Drag a library entry onto the canvas at fractions of its size; returns the node that appeared."""
    before = {n["id"] for n in editor.nodes()}
    box = editor.page.locator("#canvas").bounding_box()
    editor.page.drag_and_drop(f".model-entry[data-name='{name}']", "#canvas",
                              target_position={"x": box["width"] * fx, "y": box["height"] * fy})
    editor.wait_until("h.nodes().length > args[0]", len(before))
    [node] = [n for n in editor.nodes() if n["id"] not in before]
    return node


def test_browse_search_and_drag_models_onto_the_canvas(editor, server, artifacts):
    page = editor.page
    lora = server.models_dir / "loras" / "ink_style.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"not read: only listed")  # the library lists files; nothing loads it in this test
    editor.clear_canvas()
    page.locator("[data-command='library.toggle']").click()
    page.locator(".library-tab[data-section=models]").click()
    page.locator(".model-entry[data-name='%s']" % TINY_CHECKPOINT).wait_for()
    folders = page.locator(".model-folder").evaluate_all("els => els.map(e => e.dataset.folder)")
    assert {"checkpoints", "loras"} <= set(folders)

    search = page.locator(".model-library .library-search")
    search.fill("ink")
    shown = page.locator(".model-entry").evaluate_all("els => els.filter(e => e.offsetParent).map(e => e.dataset.name)")
    assert shown == ["ink_style.safetensors"]
    screenshots(editor, artifacts, "model_library_search")
    search.fill("")

    checkpoint = drag_model(editor, TINY_CHECKPOINT, 0.55, 0.3)
    assert checkpoint["type"] == "CheckpointLoaderSimple"
    assert checkpoint["widgets"]["ckpt_name"] == TINY_CHECKPOINT
    assert not checkpoint["missing"]
    rect = editor.hook("h.nodeRect(args[0])", checkpoint["id"])
    box = page.locator("#canvas").bounding_box()
    assert abs(rect["x"] - (box["x"] + box["width"] * 0.55)) < 6

    loader = drag_model(editor, "ink_style.safetensors", 0.55, 0.65)
    assert loader["type"] == "LoraLoader" and loader["widgets"]["lora_name"] == "ink_style.safetensors"
    assert loader["widgets"]["strength_model"] == 1.0  # the loader's other widgets keep their defaults
    # A model the canvas can use right away: connect the checkpoint into the LoRA loader.
    editor.connect(checkpoint["id"], 0, loader["id"], "model")
    assert any(l["to_node"] == loader["id"] and l["to_input"] == "model" for l in editor.links())
    screenshots(editor, artifacts, "model_library")
