"""ComfyUI's own web frontend (`comfyui-frontend-package`, the `comfyui-frontend` extra) on `nodegraph serve
--front-end comfyui`, driven like a user in Chromium: it starts without page errors and without a 404 or 405
from our server, lists our nodes, runs our default workflow from its templates browser with Ctrl+Enter, and
keeps saved workflows and settings on the server across reloads.

What the page does is read through `window.app` (the object ComfyUI's frontend exposes to its extensions) only
to check what a user sees; keys and clicks do the work, except shrinking the run (steps, batch) to stay fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("comfyui_frontend_package", reason="needs the comfyui-frontend extra")

from nodegraph.formats import load_workflow_file  # noqa: E402
from nodegraph.server.templates import DESCRIPTIONS, template_names  # noqa: E402

pytestmark = pytest.mark.browser

HERE = Path(__file__).parent
REPO = HERE.parent.parent
DOCS = REPO / "docs"
VIEWPORT = {"width": 1400, "height": 860}
DEFAULT_TYPES = sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
                        "VAEDecode", "SaveImage"])
"""Our default workflow (txt2img)."""
READY = "window.app && window.app.graph && window.app.api && !document.getElementById('splash-loader')"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`nodegraph serve --front-end comfyui` with the real node set (the shipped embedded model); (url, data dir)."""
    root = tmp_path_factory.mktemp("comfy-frontend")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", ""), str(REPO)]))}
    port = _free_port()
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "nodegraph.cli", "serve", "--front-end", "comfyui", "--port", str(port),
             "--data-dir", str(root / "data"), "--output-dir", str(root / "output"), "--models-dir",
             str(root / "models"), "--device", "cpu", "--nodes-module", "nodes:register"],
            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/object_info", timeout=5) as response:
                        json.load(response)
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
                    time.sleep(0.2)
            yield url, root / "data"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


class ComfyPage:
    """One tab on ComfyUI's frontend, recording page errors and every answer our server gave."""

    def __init__(self, browser, url: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.answers: list[tuple[int, str, str]] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("response", lambda r: self.answers.append((r.status, r.request.method, r.url))
                     if r.url.startswith(url) else None)

    def open(self) -> None:
        self.answers.clear()
        self.page.goto(self.url + "/")
        self.page.wait_for_function(READY, timeout=60_000)
        self.page.wait_for_load_state("networkidle", timeout=30_000)

    def close_dialogs(self) -> None:
        """A first visit opens the templates browser by itself (as for a new ComfyUI user): close it."""
        overlay = self.page.locator("[data-slot='dialog-overlay']")
        try:
            overlay.first.wait_for(timeout=3_000)
        except Exception:
            return
        self.page.locator("button[aria-label='Close dialog']").first.click()
        overlay.first.wait_for(state="detached", timeout=5_000)

    def refused(self) -> list[tuple[int, str, str]]:
        return [answer for answer in self.answers if answer[0] in (404, 405)]

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def comfy_page(browser, comfy) -> Iterator[ComfyPage]:
    page = ComfyPage(browser, comfy[0])
    yield page
    page.close()
    assert not page.errors, f"uncaught errors in the page: {page.errors}"


def test_starts_cleanly_and_lists_our_nodes(comfy_page, comfy):
    comfy_page.open()
    assert comfy_page.refused() == [], "start-up requests our server refused"
    with urllib.request.urlopen(f"{comfy[0]}/object_info") as response:
        ours = set(json.load(response))
    registered = set(comfy_page.js("Object.keys(window.LiteGraph.registered_node_types)"))
    assert ours <= registered
    page = comfy_page.page
    comfy_page.close_dialogs()
    page.locator("button[aria-label='Node Library (n)']").first.click()
    search = page.get_by_placeholder("Search", exact=False).first
    search.fill("KSampler")
    page.get_by_text("KSampler", exact=True).first.wait_for(timeout=15_000)
    search.fill("Load Checkpoint")
    page.get_by_text("Load Checkpoint", exact=True).first.wait_for(timeout=15_000)


def _open_templates(page) -> None:
    card = page.get_by_text(DESCRIPTIONS["txt2img"][0], exact=True).first
    try:
        card.wait_for(timeout=3_000)  # a first visit may open the templates browser by itself
    except Exception:
        page.locator("button[aria-label='Templates']").first.click()
        card.wait_for(timeout=15_000)


def _load_default(page) -> None:
    """Click our default workflow (txt2img) in the open templates browser; it closes when the graph is loaded."""
    page.get_by_text(DESCRIPTIONS["txt2img"][0], exact=True).first.click()
    page.wait_for_function("window.app.graph.nodes.some(n => n.type === 'SaveImage')", timeout=20_000)
    page.locator("[data-slot='dialog-overlay']").first.wait_for(state="detached", timeout=10_000)


def _find_template(page, title: str) -> None:
    """Wait for a template card; the browser renders its grid as it is scrolled, so scroll on until it shows."""
    card = page.get_by_text(title, exact=True).first
    for _ in range(20):
        try:
            card.wait_for(timeout=1_000)
            return
        except Exception:
            box = page.locator("[role='dialog']").first.bounding_box()
            if box:
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, 600)
    card.wait_for(timeout=5_000)


def test_default_workflow_from_the_templates_runs_with_ctrl_enter(comfy_page, artifacts):
    comfy_page.open()
    page = comfy_page.page
    _open_templates(page)
    for name in template_names():  # every shipped workflow is a template, with its thumbnail
        _find_template(page, DESCRIPTIONS.get(name, (name,))[0])
    _load_default(page)
    types = comfy_page.js("window.app.graph.nodes.map(n => n.type).sort()")
    assert types == DEFAULT_TYPES
    comfy_page.js("""() => {
        const widget = (type, name) => window.app.graph.nodes.find(n => n.type === type).widgets.find(w => w.name === name);
        widget('KSampler', 'steps').value = 8;
        widget('EmptyLatentImage', 'batch_size').value = 1;
        window.__events = [];
        for (const type of ['progress', 'executing', 'executed', 'execution_success', 'execution_error'])
            window.app.api.addEventListener(type, (e) => window.__events.push([type, e.detail]));
    }""")
    page.mouse.click(VIEWPORT["width"] * 0.6, VIEWPORT["height"] * 0.85)  # empty canvas: keys go to the graph
    page.keyboard.press("Control+Enter")
    page.wait_for_function("window.__events.some(([t]) => t === 'execution_success' || t === 'execution_error')",
                           timeout=90_000)
    events = comfy_page.js("window.__events")
    assert not [d for t, d in events if t == "execution_error"], events
    assert [d["value"] for t, d in events if t == "progress" and d["node"] == "3"] == list(range(1, 9))
    save_id = comfy_page.js("String(window.app.graph.nodes.find(n => n.type === 'SaveImage').id)")
    page.wait_for_function("""(id) => {
        const node = window.app.graph.getNodeById(Number(id));
        return node.imgs && node.imgs.length === 1 && node.imgs[0].complete && node.imgs[0].naturalWidth > 0;
    }""", arg=save_id, timeout=20_000)
    (image,) = comfy_page.js(f"window.app.nodeOutputs['{save_id}'].images")
    assert image["type"] == "output" and image["filename"].endswith(".png")
    assert [a for a in comfy_page.answers if a[0] >= 400] == []
    page.screenshot(path=str(artifacts / "comfyui-frontend.png"))
    if os.environ.get("NODEGRAPH_UPDATE_DOCS"):  # the README's picture, refreshed on request only
        page.screenshot(path=str(DOCS / "comfyui-frontend.png"))


def test_saved_workflow_and_settings_survive_a_reload(comfy_page, comfy, browser):
    comfy_page.open()
    page = comfy_page.page
    _open_templates(page)
    _load_default(page)
    page.mouse.click(VIEWPORT["width"] * 0.6, VIEWPORT["height"] * 0.85)
    page.keyboard.press("Control+s")
    name_box = page.locator("[role='dialog'] input").first  # "Save workflow: Enter the filename"
    name_box.wait_for(timeout=10_000)
    name_box.fill("saved in comfy")
    name_box.press("Enter")
    saved = comfy[1] / "user" / "default" / "workflows" / "saved in comfy.json"
    deadline = time.monotonic() + 10
    while not saved.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert saved.is_file(), "the workflow browser did not save through /userdata"
    # the one user store: the saved file is a ComfyUI workflow our own reader (and editor) opens
    assert sorted(n.type for n in load_workflow_file(saved, _registry()).nodes.values()) == DEFAULT_TYPES
    comfy_page.js("window.app.extensionManager.setting.set('Comfy.Graph.ZoomSpeed', 1.3)")
    page.wait_for_timeout(500)

    comfy_page.open()  # a reload
    assert comfy_page.refused() == []
    assert comfy_page.js("window.app.extensionManager.setting.get('Comfy.Graph.ZoomSpeed')") == 1.3
    comfy_page.close_dialogs()
    page.locator("button[aria-label='Workflows (w)']").first.click()
    page.get_by_text("saved in comfy", exact=True).first.wait_for(timeout=15_000)

    other = ComfyPage(browser, comfy[0])  # another browser (no local storage): all of it comes from the server
    try:
        other.open()
        assert other.js("window.app.extensionManager.setting.get('Comfy.Graph.ZoomSpeed')") == 1.3
        other.close_dialogs()
        other.page.locator("button[aria-label='Workflows (w)']").first.click()
        listed = other.page.get_by_text("saved in comfy", exact=True).first
        listed.wait_for(timeout=15_000)
        other.answers.clear()
        listed.click()  # opens it: read back through /userdata
        other.page.wait_for_function("window.app.graph.nodes.some(n => n.type === 'SaveImage')", timeout=15_000)
        assert (200, "GET", f"{comfy[0]}/api/userdata/workflows%2Fsaved%20in%20comfy.json") in other.answers
        assert other.errors == []
    finally:
        other.close()


def _registry():
    from nodes import register

    from nodegraph import NodeRegistry

    registry = NodeRegistry()
    register(registry)
    return registry
