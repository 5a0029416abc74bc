"""Shared steps for the file-feature browser tests: read the files hook, fetch from the server, screenshots."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

WIDTHS = (800, 1024, 1440)


def files_hook(editor, expression: str) -> Any:
    """Evaluate `expression` on `f` = window.nodegraphFiles (read-only state of tabs, mask editor)."""
    return editor.page.evaluate(f"() => {{ const f = window.nodegraphFiles; return {expression}; }}")


def wait_files(editor, expression: str, timeout: float = 15.0) -> Any:
    editor.page.wait_for_function(f"() => {{ const f = window.nodegraphFiles; return {expression}; }}",
                                  timeout=timeout * 1000)
    return files_hook(editor, expression)


def get_json(server, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=10) as response:
        return json.load(response)


def saved_workflow(server, name: str) -> Any:
    return get_json(server, "/userdata/" + urllib.parse.quote(f"workflows/{name}.json", safe=""))


def screenshots(editor, artifacts: Path, stem: str) -> None:
    """The page at each width the issue asks for (height kept), then back to the test viewport."""
    page = editor.page
    size = page.viewport_size
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": size["height"]})
        page.wait_for_timeout(120)
        page.screenshot(path=str(artifacts / f"{stem}_{width}.png"))
    page.set_viewport_size(size)


def drop_at(editor, name: str, mime: str, data: bytes, point: tuple[float, float]) -> None:
    """A file dropped at a client point (the DragEvent a real drop sends, with its coordinates)."""
    editor.page.evaluate(
        """([name, mime, bytes, x, y]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: mime }));
            const canvas = document.getElementById("canvas");
            for (const type of ["dragenter", "dragover", "drop"]) {
                canvas.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true,
                                                           clientX: x, clientY: y }));
            }
        }""",
        [name, mime, list(data), point[0], point[1]],
    )
