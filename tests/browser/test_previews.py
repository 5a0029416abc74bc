"""Live step previews in a real browser: the editor asks the server for preview frames over /ws and shows each
new one on the sampling node (which makes room for it) and in the gallery's live tile while the run goes on."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.browser

SCREEN_WIDTHS = (800, 1024, 1440)


def results(editor, expression: str, *args):
    return editor.page.evaluate(f"(args) => {{ const r = window.nodegraphResults; return {expression}; }}", list(args))


def wait_results(editor, expression: str, *args, timeout: float = 60.0):
    editor.page.wait_for_function(f"(args) => {{ const r = window.nodegraphResults; return {expression}; }}",
                                  arg=list(args), timeout=timeout * 1000, polling=50)
    return results(editor, expression, *args)


def test_sampler_preview_changes_during_a_multi_step_run(editor, server, artifacts):
    sampler = "3"  # the default graph's KSampler, on the shipped embedded model
    editor.type_into_widget("5", "width", "128")
    editor.type_into_widget("5", "height", "128")
    editor.type_into_widget("5", "batch_size", "1")
    editor.type_into_widget(sampler, "steps", "400")  # far longer than the test watches: interrupted below
    height_before = editor.hook("h.nodeRect(args[0])", sampler)["h"]
    editor.page.locator("[data-action=toggle-queue]").click()
    editor.queue()

    first = wait_results(editor, "r.preview(args[0])", sampler)
    assert (first["width"], first["height"]) == (16, 16)  # the 128 px image's 16 px latent, projected to RGB
    editor.wait_until("h.nodeRect(args[0]).h > args[1] + 60", sampler, height_before)  # room made for it
    second = wait_results(editor, "r.preview(args[0]) && r.preview(args[0]).seq > args[1] && r.preview(args[0])",
                          sampler, first["seq"])
    third = wait_results(editor, "r.preview(args[0]) && r.preview(args[0]).seq > args[1] && r.preview(args[0])",
                         sampler, second["seq"])
    progress = editor.hook("h.running()")
    assert progress["node"] == sampler and progress["progress"]["value"] < 400  # shown while sampling goes on
    assert len({first["hash"], second["hash"], third["hash"]}) == 3  # three different frames...
    assert first["pixels"] != third["pixels"]  # ...and what is drawn changed as the latent denoised
    assert results(editor, "r.gallery().liveSeq") >= third["seq"]  # the gallery's live tile follows
    assert editor.page.locator(".gallery-live img").evaluate("img => img.naturalWidth") == 16
    for width in SCREEN_WIDTHS:
        editor.page.set_viewport_size({"width": width, "height": 800})
        editor.page.wait_for_timeout(100)
        editor.screenshot(artifacts / f"previews_running_{width}.png")

    log = results(editor, "r.previewLog()")
    assert all(entry["nodeId"] == sampler for entry in log)
    request = urllib.request.Request(f"{server.url}/interrupt", data=json.dumps({}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request).close()
    editor.wait_until("h.running().node === null", timeout=30)
    wait_results(editor, "r.gallery().liveSeq === null")  # the live tile goes once the run ends
    assert results(editor, "r.preview(args[0])", sampler) is not None  # the last preview stays on the node
