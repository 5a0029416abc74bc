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


def test_preview_frames_of_both_kinds_are_read(editor):
    """ComfyUI's two binary preview frames, built byte by byte: type 1 (format id, image) and type 4
    (metadata length, metadata JSON naming the node, image); both give the image, type 4 its node too."""
    parsed = editor.page.evaluate("""async () => {
        const { parsePreviewFrame } = await import("/previews.js");
        const canvas = document.createElement("canvas");
        canvas.width = 12; canvas.height = 7;
        const png = new Uint8Array(await (await new Promise((ok) => canvas.toBlob(ok, "image/png"))).arrayBuffer());
        const meta = new TextEncoder().encode(JSON.stringify({ node_id: "17", display_node_id: "17", prompt_id: "p1", image_type: "image/png" }));
        const frame = (head, body) => {
            const bytes = new Uint8Array(8 + body.length);
            new DataView(bytes.buffer).setUint32(0, head[0]);
            new DataView(bytes.buffer).setUint32(4, head[1]);
            bytes.set(body, 8);
            return bytes.buffer;
        };
        const withMeta = new Uint8Array(meta.length + png.length);
        withMeta.set(meta); withMeta.set(png, meta.length);
        const size = async (blob) => { const b = await createImageBitmap(blob); return [b.width, b.height]; };
        const one = parsePreviewFrame(frame([1, 2], png));
        const four = parsePreviewFrame(frame([4, meta.length], withMeta));
        return { one: { mime: one.mime, meta: one.meta, size: await size(one.blob) },
                 four: { mime: four.mime, meta: four.meta, size: await size(four.blob) },
                 text: parsePreviewFrame(frame([3, 0], png)), short: parsePreviewFrame(new ArrayBuffer(4)) };
    }""")
    assert parsed["one"] == {"mime": "image/png", "meta": None, "size": [12, 7]}
    assert parsed["four"]["mime"] == "image/png" and parsed["four"]["size"] == [12, 7]
    assert parsed["four"]["meta"]["node_id"] == "17" and parsed["four"]["meta"]["prompt_id"] == "p1"
    assert parsed["text"] is None and parsed["short"] is None  # not previews: ignored
