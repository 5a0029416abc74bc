"""Results in a real browser: the side panel narrows the canvas, the gallery lists this session's images and the
history's, and the lightbox shows an image at full size, moves with the arrow keys, zooms, downloads, loads the
image's workflow (with its images back on its nodes) and sends the image to a LoadImage node.

One page serves the whole module (each test goes on from where the previous one left the page)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import VIEWPORT
from editor_driver import EditorPage
from PIL import Image

pytestmark = pytest.mark.browser

SCREEN_WIDTHS = (800, 1024, 1440)


@pytest.fixture(scope="module")
def page(browser, server) -> Iterator[EditorPage]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    driver = EditorPage(context.new_page(), server.url)
    driver.page.on("pageerror", lambda exc: driver.errors.append(str(exc)))
    driver.open()
    yield driver
    context.close()
    assert not driver.errors, f"uncaught errors in the page: {driver.errors}"


def results(page: EditorPage, expression: str, *args):
    """Evaluate `expression` on the results hook `r` (read-only)."""
    return page.page.evaluate(f"(args) => {{ const r = window.nodegraphResults; return {expression}; }}", list(args))


def wait_results(page: EditorPage, expression: str, *args, timeout: float = 30.0):
    page.page.wait_for_function(f"(args) => {{ const r = window.nodegraphResults; return {expression}; }}",
                                arg=list(args), timeout=timeout * 1000)
    return results(page, expression, *args)


def history(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/history") as response:
        return json.load(response)


def input_file(server, name: str) -> bytes:
    query = urllib.parse.urlencode({"filename": name, "subfolder": "", "type": "input"})
    with urllib.request.urlopen(f"{server.url}/view?{query}") as response:
        return response.read()


def test_side_panel_narrows_the_canvas_and_resizes(page, artifacts):
    full = results(page, "r.canvasSize()")
    assert full["css"] == pytest.approx(VIEWPORT["width"], abs=2)
    page.page.locator("[data-action=toggle-queue]").click()
    panel = page.page.locator("#queue-panel")
    panel.wait_for()
    page.page.wait_for_function("() => document.getElementById('canvas').getBoundingClientRect().width < 1200")
    narrowed = results(page, "r.canvasSize()")
    panel_box = panel.bounding_box()
    assert narrowed["css"] == pytest.approx(full["css"] - panel_box["width"], abs=2)  # beside it, not under it
    assert panel_box["x"] == pytest.approx(narrowed["css"], abs=2)
    wait_results(page, "Math.abs(r.canvasSize().logical - args[0]) < 1", narrowed["css"])  # redrawn at its size

    handle = page.page.locator(".side-resizer").bounding_box()
    grip = (handle["x"] + 3, handle["y"] + 200)
    page.drag(grip, (grip[0] - 150, grip[1]))
    page.page.wait_for_function("(w) => document.getElementById('canvas').getBoundingClientRect().width < w - 100",
                                arg=narrowed["css"])
    wider_panel = panel.bounding_box()["width"]
    assert wider_panel == pytest.approx(panel_box["width"] + 150, abs=4)
    assert results(page, "r.canvasSize()")["css"] == pytest.approx(full["css"] - wider_panel, abs=2)
    page.page.locator("[data-action=close-queue]").click()
    page.page.wait_for_function("(w) => document.getElementById('canvas').getBoundingClientRect().width >= w - 2",
                                arg=full["css"])
    page.page.locator("[data-action=toggle-queue]").click()  # open again for the next tests
    panel.wait_for()


def build_and_run_two(page: EditorPage) -> tuple[str, str]:
    """Source -> save, queued twice (the seed moves between the prompts): two images, made this session."""
    page.clear_canvas()
    source = page.add_node("test image", page.canvas_point(0.08, 0.2))
    save = page.add_node("save image", page.canvas_point(0.42, 0.2), pick="TestSaveImage")
    page.connect(source, 0, save, "images")
    page.type_into_widget(source, "width", "160")
    page.type_into_widget(source, "steps", "2")
    page.page.locator("#batch-count").fill("2")
    page.queue()
    wait_results(page, "r.gallery().session.length >= 2")
    page.wait_until("h.running().node === null && h.images(args[0]).some(img => img.loaded)", save)
    page.page.locator("#batch-count").fill("1")
    return source, save


def test_gallery_lightbox_full_size_arrow_keys_zoom_and_download(page, server, artifacts):
    source, save = build_and_run_two(page)
    session = results(page, "r.gallery().session")
    assert [item["nodeId"] for item in session] == [save, save]
    thumbs = page.page.locator(".gallery .gallery-thumb")
    assert thumbs.count() == 2
    assert thumbs.nth(0).get_attribute("data-filename") == session[0]["filename"]  # newest first

    thumbs.nth(1).click()
    box = wait_results(page, "r.lightbox().visible && r.lightbox().complete && r.lightbox().naturalWidth > 0 && r.lightbox()")
    assert box["filename"] == session[1]["filename"] and box["count"] == 2
    with Image.open(server.output_dir / session[1]["subfolder"] / session[1]["filename"]) as png:
        saved_size = png.size
    assert (box["naturalWidth"], box["naturalHeight"]) == saved_size == (160, 96)  # the file itself, full size
    assert page.page.locator(".lightbox-image").get_attribute("src").endswith(f"filename={session[1]['filename']}&subfolder=&type=output")

    graph_before = page.workflow_json()
    page.key("ArrowRight")  # wraps around to the first
    assert results(page, "r.lightbox().filename") == session[0]["filename"]
    page.key("ArrowLeft")
    assert results(page, "r.lightbox().filename") == session[1]["filename"]
    page.key("ArrowLeft")
    assert results(page, "r.lightbox().filename") == session[0]["filename"]
    assert page.workflow_json() == graph_before  # the keys went to the lightbox, not to the editor

    page.key("1")  # actual size
    page.page.wait_for_function("() => window.nodegraphResults.lightbox().complete")
    assert results(page, "r.lightbox().shownWidth") == pytest.approx(160, abs=1)
    page.key("+")
    assert results(page, "r.lightbox().shownWidth") == pytest.approx(240, abs=1)
    page.page.locator(".lightbox [data-action=zoom-out]").click()
    assert results(page, "r.lightbox().zoom") == 1

    with page.page.expect_download() as download:
        page.page.locator(".lightbox [data-action=download]").click()
    assert download.value.suggested_filename == session[0]["filename"]

    for width in SCREEN_WIDTHS:
        page.page.set_viewport_size({"width": width, "height": 800})
        page.key("0")
        page.screenshot(artifacts / f"results_lightbox_{width}.png")
    page.key("Escape")
    assert results(page, "r.lightbox().visible") is False
    for width in SCREEN_WIDTHS:
        page.page.set_viewport_size({"width": width, "height": 800})
        page.wait_until("true")
        page.screenshot(artifacts / f"results_side_panel_{width}.png")
    page.page.set_viewport_size(VIEWPORT)


def test_load_workflow_from_the_lightbox_restores_graph_and_images(page, server):
    session = results(page, "r.gallery().session")
    before = {n["id"]: (n["type"], n["widgets"]) for n in page.nodes()}
    page.clear_canvas()
    page.page.locator(".gallery .gallery-thumb").nth(1).click()
    wait_results(page, "r.lightbox().visible")
    page.page.locator(".lightbox [data-action=load-workflow]").click()
    page.wait_until("h.nodes().length === 2")
    wait_results(page, "!r.lightbox().visible")
    restored = {n["id"]: (n["type"], n["widgets"]) for n in page.nodes()}
    [prompt_entry] = [e for pid, e in history(server).items() if pid == session[1]["promptId"]]
    seed_then = next(node["inputs"]["seed"] for node in prompt_entry["prompt"][2].values()
                     if node["class_type"] == "TestImageSource")
    source = next(node_id for node_id, (kind, _) in restored.items() if kind == "TestImageSource")
    assert set(restored) == set(before) and restored[source][1]["seed"] == seed_then  # the graph of that run
    assert restored[source][1]["width"] == 160
    save = session[1]["nodeId"]
    page.wait_until("h.images(args[0]).length === 1 && h.images(args[0])[0].loaded", save)
    assert page.hook("h.images(args[0])", save)[0]["filename"] == session[1]["filename"]  # its image came back

    # the queue panel's history rows: a thumbnail opens the viewer, Load brings the run back with its images
    page.clear_canvas()
    row = page.page.locator(f".history-item[data-prompt-id='{session[0]['promptId']}']")
    row.locator(".queue-thumb").click()
    assert wait_results(page, "r.lightbox().visible && r.lightbox().filename") == session[0]["filename"]
    page.key("Escape")
    row.locator("button", has_text="Load").click()
    page.wait_until("h.images(args[0]).length === 1 && h.images(args[0])[0].loaded", save)
    assert page.hook("h.images(args[0])", save)[0]["filename"] == session[0]["filename"]

    page.page.locator(".gallery-tab[data-tab=history]").click()
    wait_results(page, "r.gallery().history.length >= 2")
    names = [item["filename"] for item in results(page, "r.gallery().history")]
    assert names.index(session[0]["filename"]) < names.index(session[1]["filename"])  # newest first
    page.page.locator(".gallery .gallery-thumb").first.click()
    assert wait_results(page, "r.lightbox().visible && r.lightbox().filename") == names[0]
    page.key("Escape")
    page.page.locator(".gallery-tab[data-tab=session]").click()


def test_send_to_load_image_uploads_and_sets_the_node(page, server):
    session = results(page, "r.gallery().session")
    before = {n["id"] for n in page.nodes()}
    page.page.locator(".gallery .gallery-thumb").first.click()
    wait_results(page, "r.lightbox().visible")
    page.page.locator(".lightbox [data-action=send-to-load-image]").click()
    page.wait_until("h.nodes().some(n => n.type === 'LoadImage')")
    [loader] = [n for n in page.nodes() if n["type"] == "LoadImage"]
    assert loader["id"] not in before  # none was there: a new one was made
    name = loader["widgets"]["image"]
    original = server.output_dir / session[0]["subfolder"] / session[0]["filename"]
    assert input_file(server, name) == original.read_bytes()  # in the input folder, as LoadImage reads it
    assert results(page, "r.lightbox().visible") is False

    # a second image goes to the LoadImage node already there (selected after the first send)
    page.page.locator(".gallery .gallery-thumb").nth(1).click()
    wait_results(page, "r.lightbox().visible")
    page.page.locator(".lightbox [data-action=send-to-load-image]").click()
    page.wait_until("h.nodes().find(n => n.id === args[0]).widgets.image !== args[1]", loader["id"], name)
    loaders = [n for n in page.nodes() if n["type"] == "LoadImage"]
    assert len(loaders) == 1
    second = input_file(server, loaders[0]["widgets"]["image"])
    assert second == (server.output_dir / session[1]["subfolder"] / session[1]["filename"]).read_bytes()
