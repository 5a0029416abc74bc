"""Tabs, Save / Save As to the server's user-data store (ComfyUI's format and folder), the saved-workflow and
template browsers, and exports — each by clicking what a user clicks and checking what they see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from files_helpers import files_hook, get_json, saved_workflow, screenshots, wait_files
from PIL import Image

pytestmark = pytest.mark.browser

COMFY_UI_WITH_NOTES = {
    "last_node_id": 4, "last_link_id": 2, "version": 0.4,
    "nodes": [
        {"id": 1, "type": "EmptyLatentImage", "pos": [0, 0], "size": [315, 106], "mode": 0,
         "widgets_values": [64, 64, 1], "inputs": [],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [1], "slot_index": 0}]},
        {"id": 2, "type": "Reroute", "pos": [360, 20], "size": [75, 26], "mode": 0,
         "inputs": [{"name": "", "type": "*", "link": 1}], "outputs": [{"name": "", "type": "LATENT", "links": [2]}],
         "properties": {"showOutputText": False, "horizontal": False}},
        {"id": 3, "type": "VAEDecode", "pos": [480, 0], "size": [210, 46], "mode": 0,
         "inputs": [{"name": "samples", "type": "LATENT", "link": 2}, {"name": "vae", "type": "VAE", "link": None}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [], "slot_index": 0}]},
        {"id": 4, "type": "Note", "pos": [0, 200], "size": [300, 120], "mode": 0, "inputs": [], "outputs": [],
         "widgets_values": ["Keep me: a note for whoever opens this"], "properties": {}},
    ],
    "links": [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "LATENT"]],
    "groups": [{"title": "Latents", "bounding": [-20, -60, 740, 200], "color": "#8A8"}],
    "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
}


def tab_labels(editor) -> list[str]:
    return editor.page.locator(".workflow-tab .tab-label").all_inner_texts()


def save_as(editor, name: str, button: str = "[data-command='workflow.saveAs']") -> None:
    editor.page.locator(button).click()
    field = editor.page.locator(".name-dialog input")
    field.wait_for()
    field.fill(name)
    field.press("Enter")
    wait_files(editor, f"f.tabs().some(t => t.active && t.name === {json.dumps(name)} && !t.dirty)")


def test_tabs_save_open_templates_and_exports(editor, server, artifacts, tmp_path):
    page = editor.page
    # One tab to start with, clean.
    assert tab_labels(editor) == ["Unsaved workflow"]
    assert page.locator(".workflow-tab .tab-dirty").inner_text() == ""
    # Moving a node marks the tab as changed.
    start = editor.point("h.titlePoint('5')")
    editor.drag(start, (start[0] + 60, start[1] + 40))
    wait_files(editor, "f.tabs()[0].dirty")
    assert page.locator(".workflow-tab.active .tab-dirty").inner_text() == "•"

    # A seed's "control after generate" mode set here is what ComfyUI's editor will read.
    editor.click(editor.widget("3", "seed", "center", "control"))
    editor.choose_in_menu("increment")
    # Ctrl+S on an unsaved tab asks for a name, then writes ComfyUI's UI format under workflows/.
    editor.click(editor.canvas_point(0.5, 0.97))
    editor.key("Control+s")
    field = page.locator(".name-dialog input")
    field.wait_for()
    field.fill("first flow")
    field.press("Enter")
    wait_files(editor, "f.tabs()[0].name === 'first flow' && !f.tabs()[0].dirty")
    assert page.locator(".workflow-tab.active .tab-dirty").inner_text() == ""
    saved = saved_workflow(server, "first flow")
    assert isinstance(saved["nodes"], list) and saved["links"], "saved in ComfyUI's UI format"
    assert sorted(n["type"] for n in saved["nodes"]) == sorted(
        ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
         "SaveImage"])
    latent = next(n for n in saved["nodes"] if n["type"] == "EmptyLatentImage")
    assert latent["widgets_values"][:2] == [128, 128]
    sampler = next(n for n in saved["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"][1] == "increment"

    # A ComfyUI file with a Note, a Reroute and a group opens in a new tab; Save As keeps all three.
    source = tmp_path / "from_comfyui.json"
    source.write_text(json.dumps(COMFY_UI_WITH_NOTES))
    with page.expect_file_chooser() as chooser:
        page.locator("[data-action=load]").click()
    chooser.value.set_files(str(source))
    wait_files(editor, "f.tabs().length === 2 && f.tabs()[1].active")
    assert tab_labels(editor) == ["first flow", "from_comfyui"]
    assert sorted(n["type"] for n in editor.nodes()) == ["EmptyLatentImage", "VAEDecode"]
    assert editor.node("1")["pos"] == [0, -30]  # ComfyUI's pos is below the title bar; ours is the top-left
    assert [(l["from_node"], l["to_node"]) for l in editor.links()] == [("1", "3")]  # through the Reroute
    assert editor.hook("h.groups()")[0]["title"] == "Latents"
    assert files_hook(editor, "f.notes()") == [{"type": "Note", "text": "Keep me: a note for whoever opens this"}]
    screenshots(editor, artifacts, "comfyui_file_with_note")
    save_as(editor, "with notes")
    kept = saved_workflow(server, "with notes")
    types = sorted(n["type"] for n in kept["nodes"])
    assert types == ["EmptyLatentImage", "Note", "Reroute", "VAEDecode"]
    note = next(n for n in kept["nodes"] if n["type"] == "Note")
    assert note["widgets_values"] == ["Keep me: a note for whoever opens this"]
    assert next(n for n in kept["nodes"] if n["type"] == "EmptyLatentImage")["pos"] == [0, 0]  # back where it was
    assert kept["groups"][0]["title"] == "Latents" and kept["groups"][0]["color"] == "#8A8"

    # Switching tabs shows each tab's own graph.
    page.locator(".workflow-tab", has_text="first flow").click()
    wait_files(editor, "f.tabs()[0].active")
    assert len(editor.nodes()) == 7
    page.locator(".workflow-tab", has_text="with notes").click()
    wait_files(editor, "f.tabs()[1].active")
    assert len(editor.nodes()) == 2

    # The saved-workflow browser lists both; closing a tab and clicking its entry opens it again.
    page.locator("[data-command='library.toggle']").click()
    entries = page.locator(".workflow-entry")
    entries.first.wait_for()
    assert sorted(entries.evaluate_all("els => els.map(e => e.dataset.path)")) == ["first flow.json", "with notes.json"]
    page.locator(".library-search").first.fill("notes")
    assert entries.evaluate_all("els => els.map(e => e.dataset.path)") == ["with notes.json"]
    page.locator(".library-search").first.fill("")
    screenshots(editor, artifacts, "workflow_browser")
    # Ctrl+S on a saved tab writes its file again without asking.
    page.locator(".workflow-tab", has_text="first flow").click()
    wait_files(editor, "f.tabs()[0].active")
    editor.type_into_widget("5", "width", "192")
    wait_files(editor, "f.tabs()[0].dirty")
    editor.click(editor.canvas_point(0.5, 0.97))
    editor.key("Control+s")
    wait_files(editor, "!f.tabs()[0].dirty")
    assert page.locator(".name-dialog").count() == 0
    resaved = next(n for n in saved_workflow(server, "first flow")["nodes"] if n["type"] == "EmptyLatentImage")
    assert resaved["widgets_values"][:2] == [192, 128]
    # Closing a tab with unsaved changes asks first: dismissed, it stays; accepted, it closes.
    start = editor.point("h.titlePoint('9')")
    editor.drag(start, (start[0] + 30, start[1] + 30))
    wait_files(editor, "f.tabs()[0].dirty")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator(".workflow-tab", has_text="first flow").locator(".tab-close").click()
    page.wait_for_timeout(200)
    assert len(files_hook(editor, "f.tabs()")) == 2
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".workflow-tab", has_text="first flow").locator(".tab-close").click()
    wait_files(editor, "f.tabs().length === 1")
    page.locator(".workflow-entry[data-path='first flow.json']").click()
    wait_files(editor, "f.tabs().length === 2 && f.tabs()[1].name === 'first flow' && f.tabs()[1].active")
    assert len(editor.nodes()) == 7
    assert editor.node("5")["widgets"]["width"] == 192  # as saved, not as left unsaved
    assert editor.node("3")["controls"] == {"seed": "increment"}

    # Templates: the shipped workflows with thumbnails; a click opens one in a new tab.
    page.locator(".library-tab[data-section=templates]").click()
    card = page.locator(".template-card[data-name=txt2img]")
    card.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('.template-card img')].some(i => i.naturalWidth > 0)")
    screenshots(editor, artifacts, "templates_browser")
    card.click()
    wait_files(editor, "f.tabs().length === 3 && f.tabs()[2].active")
    assert "KSampler" in {n["type"] for n in editor.nodes()}
    assert not any(n["missing"] for n in editor.nodes())

    # Exports: ComfyUI UI JSON, API JSON, and a PNG carrying the workflow that our reader opens again.
    page.locator(".library-close").click()
    page.locator("[data-command='workflow.export']").click()
    with page.expect_download() as download:
        page.locator(".menu-item", has_text="ComfyUI workflow").click()
    ui = json.loads(open(download.value.path()).read())
    assert isinstance(ui["nodes"], list) and {n["type"] for n in ui["nodes"]} >= {"KSampler", "SaveImage"}
    page.locator("[data-command='workflow.export']").click()
    with page.expect_download() as download:
        page.locator(".menu-item", has_text="API prompt").click()
    api = json.loads(open(download.value.path()).read())
    assert {entry["class_type"] for entry in api.values()} >= {"KSampler", "SaveImage"}
    page.locator("[data-command='workflow.export']").click()
    with page.expect_download() as download:
        page.locator(".menu-item", has_text="PNG with workflow").click()
    png_path = download.value.path()
    with Image.open(png_path) as image:
        chunks = dict(image.text)
    assert json.loads(chunks["workflow"])["nodes"] and json.loads(chunks["prompt"])
    from nodegraph.formats import to_workflow  # the same file opens with `nodegraph run`'s reader
    from nodegraph.registry import NodeRegistry
    import nodes as node_library

    registry = NodeRegistry()
    node_library.register(registry)
    workflow = to_workflow(json.loads(chunks["workflow"]), registry)
    assert {n.type for n in workflow.nodes.values()} >= {"KSampler", "SaveImage"}
    # ... and dropping that PNG on the canvas opens its workflow in a new tab.
    # (the template's tab is untouched and unsaved, so the PNG's workflow replaces it, as in ComfyUI)
    editor.drop_file(png_path, "image/png")
    wait_files(editor, f"f.tabs().length === 3 && f.tabs()[2].active && f.tabs()[2].name === {json.dumps(Path(png_path).stem)}")
    assert "KSampler" in {n["type"] for n in editor.nodes()}
    # Save As an existing name asks before replacing that file.
    page.once("dialog", lambda dialog: dialog.accept())
    save_as(editor, "with notes")
    assert "KSampler" in {n["type"] for n in saved_workflow(server, "with notes")["nodes"]}
    listing = get_json(server, "/userdata?dir=workflows&recurse=true&split=false&full_info=true")
    assert sorted(entry["path"] for entry in listing) == ["first flow.json", "with notes.json"]
    # A reload brings the same tabs back, with their names, files and unsaved markers.
    start = editor.point("h.titlePoint('3')")
    editor.drag(start, (start[0] + 20, start[1] + 20))  # an unsaved change in the active tab
    wait_files(editor, "f.tabs().find(t => t.active).dirty")
    before = files_hook(editor, "f.tabs()")
    editor.open()
    wait_files(editor, f"f.tabs().length === {len(before)}")
    assert files_hook(editor, "f.tabs()") == before
    assert editor.page.locator(".workflow-tab.active .tab-dirty").inner_text() == "•"
    screenshots(editor, artifacts, "workflow_tabs")
