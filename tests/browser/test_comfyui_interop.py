"""One user store, two editors: a workflow saved in our editor opens in ComfyUI's own frontend, and one saved
there opens in ours — both through /userdata/workflows on two servers that share the user store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

pytest.importorskip("comfyui_frontend_package", reason="needs the comfyui-frontend extra")

from editor_driver import EditorPage  # noqa: E402
from files_helpers import wait_files  # noqa: E402
from test_comfyui_frontend import DEFAULT_TYPES, REPO, VIEWPORT, ComfyPage, _load_default, _open_templates  # noqa: E402
from test_comfyui_frontend import comfy  # noqa: E402,F401  (the module fixture: ComfyUI's frontend on our server)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def ours(comfy, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    """Our editor's server sharing the ComfyUI-frontend server's user store."""
    root = tmp_path_factory.mktemp("ours")
    # A data folder is one server's; the user store inside it is what both editors share.
    shared_user = comfy[1] / "user"
    shared_user.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir()
    (root / "data" / "user").symlink_to(shared_user, target_is_directory=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", ""), str(REPO)]))}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "nodegraph.cli", "serve", "--port", str(port), "--data-dir", str(root / "data"),
             "--output-dir", str(root / "output"), "--models-dir", str(root / "models"), "--device", "cpu",
             "--nodes-module", "nodes:register"], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
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
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def our_editor(browser, ours) -> Iterator[EditorPage]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    driver = EditorPage(context.new_page(), ours)
    driver.page.on("pageerror", lambda exc: driver.errors.append(str(exc)))
    driver.open()
    yield driver
    context.close()
    assert not driver.errors, f"uncaught errors in the page: {driver.errors}"


def test_saved_in_ours_opens_in_comfyui_and_back(our_editor, browser, comfy, artifacts):  # noqa: F811
    # Ours: change the default graph a little and save it with Ctrl+S.
    editor = our_editor
    editor.type_into_widget("5", "width", "192")
    editor.click(editor.canvas_point(0.5, 0.97))
    editor.key("Control+s")
    field = editor.page.locator(".name-dialog input")
    field.wait_for()
    field.fill("from nodegraph")
    field.press("Enter")
    wait_files(editor, "f.tabs()[0].name === 'from nodegraph' && !f.tabs()[0].dirty")

    # ComfyUI's frontend lists it in its workflow browser and opens it with our values.
    comfy_page = ComfyPage(browser, comfy[0])
    try:
        comfy_page.open()
        comfy_page.close_dialogs()
        page = comfy_page.page
        page.locator("button[aria-label='Workflows (w)']").first.click()
        listed = page.get_by_text("from nodegraph", exact=True).first
        listed.wait_for(timeout=15_000)
        listed.click()
        page.wait_for_function("window.app.graph.nodes.some(n => n.type === 'EmptyLatentImage')", timeout=15_000)
        assert comfy_page.js("window.app.graph.nodes.map(n => n.type).sort()") == DEFAULT_TYPES
        width = comfy_page.js("window.app.graph.nodes.find(n => n.type === 'EmptyLatentImage')"
                              ".widgets.find(w => w.name === 'width').value")
        assert width == 192
        page.screenshot(path=str(artifacts / "interop_ours_in_comfyui.png"))

        # ComfyUI saves its default template under a new name ...
        _open_templates(page)
        _load_default(page)
        page.mouse.click(VIEWPORT["width"] * 0.6, VIEWPORT["height"] * 0.85)
        page.keyboard.press("Control+s")
        name_box = page.locator("[role='dialog'] input").first
        name_box.wait_for(timeout=10_000)
        name_box.fill("from comfyui")
        name_box.press("Enter")
        saved = comfy[1] / "user" / "default" / "workflows" / "from comfyui.json"
        deadline = time.monotonic() + 10
        while not saved.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert saved.is_file()
        assert comfy_page.errors == []
    finally:
        comfy_page.close()

    # ... and our Library lists it and opens it in a tab with every node known.
    editor.page.locator("[data-command='library.toggle']").click()
    entry = editor.page.locator(".workflow-entry[data-path='from comfyui.json']")
    entry.wait_for()
    entry.click()
    wait_files(editor, "f.tabs().some(t => t.active && t.name === 'from comfyui')")
    nodes = editor.nodes()
    assert sorted(n["type"] for n in nodes) == DEFAULT_TYPES and not any(n["missing"] for n in nodes)
    assert len(editor.links()) == 9
    editor.screenshot(artifacts / "interop_comfyui_in_ours.png")
