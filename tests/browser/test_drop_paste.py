"""Dropping and pasting images: a plain picture becomes an uploaded LoadImage node where it lands, a pasted one
at the mouse, and copying/pasting nodes with Ctrl+C / Ctrl+V still works beside it."""

from __future__ import annotations

import io
import urllib.parse
import urllib.request

import pytest
from files_helpers import drop_at, screenshots, wait_files
from PIL import Image

pytestmark = pytest.mark.browser


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def new_nodes(editor, before: set[str], count: int = 1) -> list[dict]:
    editor.wait_until("h.nodes().length >= args[0]", len(before) + count)
    return [n for n in editor.nodes() if n["id"] not in before]


def view_status(server, name: str) -> tuple[int, bytes]:
    query = urllib.parse.urlencode({"filename": name.split("/")[-1], "subfolder": "/".join(name.split("/")[:-1]),
                                    "type": "input"})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=10) as response:
        return response.status, response.read()


def test_drop_and_paste_images_make_load_image_nodes(editor, server, artifacts):

    page = editor.page
    editor.clear_canvas()
    # A plain PNG dropped on the canvas: uploaded, and a LoadImage node showing it appears where it landed.
    point = editor.canvas_point(0.3, 0.4)
    before = {n["id"] for n in editor.nodes()}
    drop_at(editor, "red square.png", "image/png", png_bytes((220, 20, 20)), point)
    [node] = new_nodes(editor, before)
    assert node["type"] == "LoadImage" and node["widgets"]["image"] == "red square.png"
    rect = editor.hook("h.nodeRect(args[0])", node["id"])
    assert abs(rect["x"] - point[0]) < 4 and abs(rect["y"] - point[1]) < 4
    status, body = view_status(server, "red square.png")
    with Image.open(io.BytesIO(body)) as image:
        assert status == 200 and image.size == (24, 16) and image.convert("RGB").getpixel((3, 3)) == (220, 20, 20)
    page.wait_for_function("() => [...document.querySelectorAll('.toast')].some(t => t.textContent.includes('Uploaded red square.png'))")

    # A JPEG too (no workflow to look for).
    before = {n["id"] for n in editor.nodes()}
    drop_at(editor, "blue.jpg", "image/jpeg", png_bytes((20, 20, 220), fmt="JPEG"), editor.canvas_point(0.6, 0.4))
    [jpeg_node] = new_nodes(editor, before)
    assert jpeg_node["type"] == "LoadImage" and jpeg_node["widgets"]["image"] == "blue.jpg"

    # An image pasted from the clipboard lands at the mouse.
    page.mouse.move(*editor.canvas_point(0.4, 0.75))
    before = {n["id"] for n in editor.nodes()}
    page.evaluate(
        """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "image.png", { type: "image/png" }));
            document.getElementById("canvas").dispatchEvent(
                new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
        }""",
        list(png_bytes((20, 200, 20))),
    )
    [pasted] = new_nodes(editor, before)
    assert pasted["type"] == "LoadImage" and pasted["widgets"]["image"].startswith("image")
    rect = editor.hook("h.nodeRect(args[0])", pasted["id"])
    target = editor.canvas_point(0.4, 0.75)
    assert abs(rect["x"] - target[0]) < 4 and abs(rect["y"] - target[1]) < 4

    # Ctrl+C / Ctrl+V of nodes still works with an empty system clipboard.
    editor.click(editor.point("h.titlePoint(args[0])", node["id"]))
    editor.key("Control+c")
    page.mouse.move(*editor.canvas_point(0.7, 0.7))
    before = {n["id"] for n in editor.nodes()}
    editor.key("Control+v")
    [copy] = new_nodes(editor, before)
    assert copy["type"] == "LoadImage" and copy["widgets"]["image"] == "red square.png"
    assert wait_files(editor, "true")
    screenshots(editor, artifacts, "drop_paste")
