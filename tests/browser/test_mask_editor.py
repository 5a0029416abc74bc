"""The mask editor: open it from a LoadImage node, paint, undo, invert, clear, save (the mask becomes the image's
alpha through /upload/mask), then run an inpainting workflow and check that only the masked area changed."""

from __future__ import annotations

import io
import json
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from editor_driver import TINY_CHECKPOINT
from files_helpers import drop_at, files_hook, screenshots, wait_files
from PIL import Image

from nodes.latent.files import read_latent_file

pytestmark = pytest.mark.browser
SIZE = 64


def source_image() -> bytes:
    """A 64x64 picture with structure (a gradient and a square), so its latent is not flat."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 4, y * 4, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    rgb[40:56, 40:56] = (250, 250, 20)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def inpaint_workflow(image: str) -> dict:
    """LoadImage -> VAEEncode -> SetLatentNoiseMask(LoadImage's MASK) -> KSampler, saving both latents."""
    def link(a, slot, b, name):
        return {"from_node": a, "from_slot": slot, "to_node": b, "to_input": name}

    nodes = {
        "1": {"type": "LoadImage", "pos": [0, 0], "widgets": {"image": image}},
        "2": {"type": "CheckpointLoaderSimple", "pos": [0, 420], "widgets": {"ckpt_name": TINY_CHECKPOINT}},
        "3": {"type": "VAEEncode", "pos": [340, 0], "widgets": {}},
        "4": {"type": "SetLatentNoiseMask", "pos": [340, 120], "widgets": {}},
        "5": {"type": "CLIPTextEncode", "pos": [340, 240], "widgets": {"text": "a red circle"}},
        "6": {"type": "CLIPTextEncode", "pos": [340, 420], "widgets": {"text": ""}},
        "7": {"type": "KSampler", "pos": [700, 0], "control_after_generate": {"seed": "fixed"},
              "widgets": {"seed": 5, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                          "denoise": 1.0}},
        "8": {"type": "SaveLatent", "pos": [1000, 0], "widgets": {"filename_prefix": "latents/orig"}},
        "9": {"type": "SaveLatent", "pos": [1000, 120], "widgets": {"filename_prefix": "latents/inpainted"}},
    }
    links = [link("1", 0, "3", "pixels"), link("2", 2, "3", "vae"), link("3", 0, "4", "samples"),
             link("1", 1, "4", "mask"), link("2", 1, "5", "clip"), link("2", 1, "6", "clip"),
             link("2", 0, "7", "model"), link("5", 0, "7", "positive"), link("6", 0, "7", "negative"),
             link("4", 0, "7", "latent_image"), link("3", 0, "8", "samples"), link("7", 0, "9", "samples")]
    return {"format": "nodegraph", "version": 1, "nodes": nodes, "links": links, "groups": [], "extra": {}}


def stroke(editor, points: list[tuple[float, float]]) -> None:
    """Paint through points given as fractions of the mask editor's picture."""
    rect = files_hook(editor, "f.maskCanvasRect()")
    absolute = [(rect["x"] + rect["w"] * fx, rect["y"] + rect["h"] * fy) for fx, fy in points]
    mouse = editor.page.mouse
    mouse.move(*absolute[0])
    mouse.down()
    for point in absolute[1:]:
        mouse.move(*point, steps=8)
    mouse.up()


def coverage(editor) -> float:
    return files_hook(editor, "f.maskCoverage()")


def view_input(server, name: str) -> Image.Image:
    folder, _, filename = name.rpartition("/")
    query = urllib.parse.urlencode({"filename": filename, "subfolder": folder, "type": "input"})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=10) as response:
        return Image.open(io.BytesIO(response.read())).copy()


def test_paint_a_mask_save_it_and_inpaint_only_there(editor, server, artifacts, tmp_path):
    page = editor.page
    editor.clear_canvas()
    drop_at(editor, "inpaint_source.png", "image/png", source_image(), editor.canvas_point(0.2, 0.2))
    editor.wait_until("h.nodes().length === 1")
    workflow_file = tmp_path / "inpaint_here.json"
    workflow_file.write_text(json.dumps(inpaint_workflow("inpaint_source.png")))
    with page.expect_file_chooser() as chooser:
        page.locator("[data-action=load]").click()
    chooser.value.set_files(str(workflow_file))
    wait_files(editor, "f.tabs().length === 2 && f.tabs()[1].active")

    # Right-click the LoadImage node: "Open in mask editor".
    editor.click(editor.point("h.titlePoint('1')"), button="right")
    editor.choose_in_menu("Open in mask editor")
    wait_files(editor, "f.maskOpen() && f.maskCanvasRect() && f.maskCanvasRect().w > 0")
    assert coverage(editor) == 0  # an opaque picture: nothing masked yet

    # A stroke across the left middle of the picture.
    stroke(editor, [(0.08, 0.5), (0.2, 0.5), (0.32, 0.5)])
    painted = coverage(editor)
    assert 0.05 < painted < 0.5
    screenshots(editor, artifacts, "mask_editor")
    # A second stroke, undone; invert twice; clear and undo: back to the first stroke each time.
    stroke(editor, [(0.5, 0.9), (0.9, 0.9)])
    assert coverage(editor) > painted
    page.locator("[data-mask=undo]").click()
    assert coverage(editor) == pytest.approx(painted, abs=1e-9)
    page.locator("[data-mask=invert]").click()
    assert coverage(editor) == pytest.approx(1 - painted, abs=1e-6)
    page.locator("[data-mask=invert]").click()
    assert coverage(editor) == pytest.approx(painted, abs=1e-9)
    page.locator("[data-mask=clear]").click()
    assert coverage(editor) == 0
    page.locator("[data-mask=undo]").click()
    assert coverage(editor) == pytest.approx(painted, abs=1e-9)
    # The eraser takes some of it back; undo restores it.
    page.locator("input[name=mask-tool][value=eraser]").check()
    stroke(editor, [(0.3, 0.5), (0.34, 0.5)])
    assert coverage(editor) < painted
    page.locator("[data-mask=undo]").click()
    page.locator("input[name=mask-tool][value=brush]").check()

    # Save: the node now points at the picture with the mask as its alpha (0 where painted).
    page.locator("[data-mask=save]").click()
    wait_files(editor, "!f.maskOpen()")
    name = editor.node("1")["widgets"]["image"]
    assert name.startswith("clipspace/clipspace-mask-") and name.endswith(".png")
    saved = view_input(server, name)
    assert saved.mode == "RGBA" and saved.size == (SIZE, SIZE)
    alpha = np.asarray(saved.getchannel("A"), dtype=np.float32) / 255
    assert alpha[32, 12] == 0 and alpha[5, 60] == 1 and alpha[60, 60] == 1
    original = np.asarray(Image.open(io.BytesIO(source_image())).convert("RGB"))
    assert (np.asarray(saved.convert("RGB"))[alpha == 1] == original[alpha == 1]).all()  # colours kept
    assert abs((1 - alpha).mean() - painted) < 0.02  # what was painted is what was saved

    # Reopening shows the saved mask again.
    editor.click(editor.point("h.titlePoint('1')"), button="right")
    editor.choose_in_menu("Open in mask editor")
    wait_files(editor, "f.maskOpen() && f.maskCanvasRect().w > 0")
    assert coverage(editor) == pytest.approx(painted, abs=0.02)
    page.locator("[data-mask=cancel]").click()

    # Queue the inpainting workflow: the latent changes where the mask is 1 and nowhere it is 0.
    editor.queue()
    latents = server.output_dir / "latents"
    editor.wait_until("h.lastQueueResult() !== null", timeout=30)
    page.wait_for_function(  # the run is over
        "() => window.nodegraphEditor.events().some(e => e.type === 'executing' && e.node === null)", timeout=120000)
    assert not [e for e in editor.hook("h.events()") if e["type"] == "execution_error"]
    [orig_file] = sorted(latents.glob("orig_*.latent"))
    [inpainted_file] = sorted(latents.glob("inpainted_*.latent"))
    before = read_latent_file(orig_file.read_bytes(), orig_file.name)
    after = read_latent_file(inpainted_file.read_bytes(), inpainted_file.name)
    mask = F.interpolate(torch.from_numpy(1 - alpha)[None, None], size=before.shape[-2:], mode="bilinear",
                         align_corners=False)[0, 0]
    change = (after - before).abs().amax(dim=1)[0]
    assert (mask == 0).sum() >= 20 and (mask > 0.99).sum() >= 3
    assert change[mask == 0].max() < 1e-5, "the unmasked area changed"
    assert change[mask > 0.99].min() > 1e-2, "the masked area did not change"
    screenshots(editor, artifacts, "mask_inpaint_workflow")
