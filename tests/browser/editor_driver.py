"""Drive the editor like a user: real mouse and keyboard events at places read from the page's read-only
test hook (`window.nodegraphEditor`), which is never used to change anything."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

CANVAS = "#canvas"
TINY_CHECKPOINT = "tiny_sd1.safetensors"
"""The random SD1 checkpoint the test server lists (see conftest)."""


class EditorPage:
    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []

    # ---- reading state -------------------------------------------------------------------

    def hook(self, expression: str, *args: Any) -> Any:
        """Evaluate `expression` on the hook object `h`, e.g. hook("h.nodes()")."""
        return self.page.evaluate(f"(args) => {{ const h = window.nodegraphEditor; return {expression}; }}", list(args))

    def nodes(self) -> list[dict[str, Any]]:
        return self.hook("h.nodes()")

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.nodes() if n["id"] == node_id)

    def links(self) -> list[dict[str, Any]]:
        return self.hook("h.links()")

    def point(self, expression: str, *args: Any) -> tuple[float, float]:
        found = self.hook(expression, *args)
        return found["x"], found["y"]

    def toasts(self) -> list[str]:
        return self.page.locator(".toast").all_inner_texts()

    def wait_until(self, expression: str, *args: Any, timeout: float = 20.0) -> Any:
        """Poll a hook expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.hook(expression, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression} {args}")
            time.sleep(0.05)

    # ---- acting --------------------------------------------------------------------------

    def open(self) -> None:
        self.page.goto(self.url + "/")
        self.page.wait_for_function("window.nodegraphEditor && window.nodegraphEditor.ready()", timeout=15000)

    def canvas_point(self, fx: float, fy: float) -> tuple[float, float]:
        """A point on the canvas as fractions of its size."""
        box = self.page.locator(CANVAS).bounding_box()
        return box["x"] + box["width"] * fx, box["y"] + box["height"] * fy

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 12,
             modifiers: tuple[str, ...] = ()) -> None:
        mouse = self.page.mouse
        for key in modifiers:
            self.page.keyboard.down(key)
        mouse.move(*start)
        mouse.down()
        mouse.move(*end, steps=steps)
        mouse.up()
        for key in modifiers:
            self.page.keyboard.up(key)

    def click(self, point: tuple[float, float], modifiers: tuple[str, ...] = (), **options: Any) -> None:
        for key in modifiers:
            self.page.keyboard.down(key)
        self.page.mouse.click(*point, **options)
        for key in modifiers:
            self.page.keyboard.up(key)

    def key(self, combo: str) -> None:
        self.page.keyboard.press(combo)

    def clear_canvas(self) -> None:
        """The toolbar's Clear button: an empty canvas at 100% zoom."""
        self.page.locator("[data-action=clear]").click()
        assert self.nodes() == []

    def add_node(self, query: str, at: tuple[float, float], pick: str | None = None) -> str:
        """Double-click the canvas, search the palette, press Enter (or click `pick`); returns the new node's id."""
        before = {n["id"] for n in self.nodes()}
        self.page.mouse.dblclick(*at)
        search = self.page.locator(".palette-search")
        search.wait_for()
        search.type(query)
        if pick:
            self.page.locator(f".palette-item[data-type='{pick}']").click()
        else:
            search.press("Enter")
        added = [n["id"] for n in self.nodes() if n["id"] not in before]
        assert len(added) == 1, f"expected one new node, got {added}"
        return added[0]

    def connect(self, from_id: str, slot: int, to_id: str, to_input: str) -> None:
        start = self.point("h.outputPoint(args[0], args[1])", from_id, slot)
        end = self.point("h.inputPoint(args[0], args[1])", to_id, to_input)
        self.drag(start, end)

    def widget(self, node_id: str, name: str, where: str = "center", kind: str | None = None) -> tuple[float, float]:
        return self.point("h.widgetPoint(args[0], args[1], args[2], args[3])", node_id, name, where, kind)

    def type_into_widget(self, node_id: str, name: str, text: str) -> None:
        """Click a number or text widget, type into the field that opens, confirm with Enter (Ctrl+Enter for text areas)."""
        self.click(self.widget(node_id, name))
        field = self.page.locator(".inline-editor")
        field.wait_for()
        multiline = field.evaluate("el => el.tagName") == "TEXTAREA"
        self.key("Control+a")
        self.page.keyboard.type(text)
        self.key("Control+Enter" if multiline else "Enter")
        field.wait_for(state="detached")

    def choose_in_menu(self, label: str) -> None:
        self.page.locator(".menu-item", has_text=label).first.click()

    def load_file(self, path: Path) -> None:
        """Use the toolbar's Load button and its file dialog; returns once the graph is replaced."""
        loads = "(window.nodegraphFiles ? window.nodegraphFiles.loads() : 0)"  # a file may open in a new tab
        depth = self.hook(f"[h.undoDepth(), {loads}]")
        with self.page.expect_file_chooser() as chooser:
            self.page.locator("[data-action=load]").click()
        chooser.value.set_files(str(path))
        try:
            self.wait_until(f"h.undoDepth() > args[0][0] || {loads} > args[0][1]", depth, timeout=10)
        except AssertionError:
            raise AssertionError(f"{path.name} was not loaded; the editor said: {self.toasts()}") from None

    def drop_file(self, path: Path, mime: str) -> None:
        """Drop a file on the canvas (a DragEvent carrying the file, as the browser sends for a real drop)."""
        data = list(Path(path).read_bytes())
        self.page.evaluate(
            """([name, mime, bytes]) => {
                const transfer = new DataTransfer();
                transfer.items.add(new File([new Uint8Array(bytes)], name, { type: mime }));
                const canvas = document.getElementById("canvas");
                for (const type of ["dragenter", "dragover", "drop"]) {
                    canvas.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
                }
            }""",
            [Path(path).name, mime, data],
        )

    def queue(self) -> None:
        self.page.locator("#queue-button").click()

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path))
        return path

    def workflow_json(self) -> str:
        return json.dumps(self.hook("h.workflow()"))
