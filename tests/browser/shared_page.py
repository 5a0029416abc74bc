"""One editor page shared by the tests of a module (browser tests are slow on a small machine), and
screenshots at the three window widths issue #16 asks about."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from editor_driver import EditorPage

WIDTHS = (800, 1024, 1440)
HEIGHT = 860


@contextmanager
def shared_editor(browser: Any, url: str, width: int = 1400) -> Iterator[EditorPage]:
    """A fresh browser context on the editor; uncaught page errors fail the module at the end."""
    context = browser.new_context(viewport={"width": width, "height": HEIGHT}, accept_downloads=True)
    page = context.new_page()
    driver = EditorPage(page, url)
    page.on("pageerror", lambda exc: driver.errors.append(str(exc)))
    driver.open()
    try:
        yield driver
    finally:
        context.close()
    assert not driver.errors, f"uncaught errors in the page: {driver.errors}"


def screenshots(editor: EditorPage, folder: Path, name: str) -> list[Path]:
    """Screenshots at 800, 1024 and 1440 px wide (the viewport comes back to its size after)."""
    size = editor.page.viewport_size
    paths = []
    for width in WIDTHS:
        editor.page.set_viewport_size({"width": width, "height": HEIGHT})
        editor.page.wait_for_timeout(120)  # a resize observer and a frame
        paths.append(editor.screenshot(folder / f"{name}_{width}.png"))
    editor.page.set_viewport_size(size)
    editor.page.wait_for_timeout(120)
    return paths


def server_json(url: str, path: str, body: Any = None) -> Any:
    """GET (or POST `body` to) the server, as the tests' view of what the server holds."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        text = response.read()
    return json.loads(text) if text else None


def big_workflow(chains: int = 100) -> dict:
    """`chains` x 5 nodes (500 by default) in a 10-column grid: a text primitive into a concatenation into Save
    Text, and a test image source into a test saver; three links a chain."""
    nodes: dict[str, dict] = {}
    links: list[dict] = []
    for i in range(chains):
        x0 = (i % 10) * 1500
        y0 = (i // 10) * 380
        ids = [str(i * 5 + k + 1) for k in range(5)]
        nodes[ids[0]] = {"type": "PrimitiveString", "widgets": {"value": f"chain {i}"}, "pos": [x0, y0]}
        nodes[ids[1]] = {"type": "StringConcatenate", "pos": [x0 + 300, y0], "converted_widgets": ["string_a"],
                         "widgets": {"string_a": "", "string_b": f"part {i}", "delimiter": ", "}}
        nodes[ids[2]] = {"type": "SaveText", "widgets": {"filename_prefix": f"chain_{i}"}, "pos": [x0 + 620, y0]}
        nodes[ids[3]] = {"type": "TestImageSource", "pos": [x0 + 920, y0],
                         "widgets": {"prompt": f"image {i}", "seed": i, "width": 64, "height": 64, "steps": 1}}
        nodes[ids[4]] = {"type": "TestSaveImage", "widgets": {"filename_prefix": f"img_{i}"}, "pos": [x0 + 1200, y0]}
        links += [{"from_node": ids[0], "from_slot": 0, "to_node": ids[1], "to_input": "string_a"},
                  {"from_node": ids[1], "from_slot": 0, "to_node": ids[2], "to_input": "text"},
                  {"from_node": ids[3], "from_slot": 0, "to_node": ids[4], "to_input": "images"}]
    return {"format": "nodegraph", "version": 1, "nodes": nodes, "links": links, "groups": []}
