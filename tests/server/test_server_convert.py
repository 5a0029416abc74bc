"""POST /nodegraph/workflow/convert: the editor's save and open go through the one converter, so a UI-format
file keeps its Notes, Reroutes, groups and link colours through native and back, and bad input is named."""

from __future__ import annotations

from server_helpers import serve

UI_WORKFLOW = {
    "last_node_id": 4, "last_link_id": 2, "version": 0.4,
    "nodes": [
        {"id": 1, "type": "Number", "pos": [0, 0], "size": [200, 60], "mode": 0, "widgets_values": [7],
         "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [1], "slot_index": 0}]},
        {"id": 2, "type": "Reroute", "pos": [250, 0], "size": [75, 26], "mode": 0,
         "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "INT", "links": [2]}], "properties": {"showOutputText": False}},
        {"id": 3, "type": "Collect", "pos": [400, 0], "size": [200, 60], "mode": 0, "widgets_values": [],
         "inputs": [{"name": "value", "type": "INT", "link": 2}], "outputs": []},
        {"id": 4, "type": "Note", "pos": [0, 200], "size": [300, 100], "mode": 0,
         "widgets_values": ["remember the seven"], "inputs": [], "outputs": []},
    ],
    "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]],
    "groups": [{"title": "Numbers", "bounding": [-10, -40, 700, 160], "color": "#3f789e"}],
    "extra": {"linkExtensions": [], "ds": {"scale": 1, "offset": [0, 0]}},
}


async def post(client, body):
    response = await client.post("/api/nodegraph/workflow/convert", json=body)
    return response.status, await response.json()


async def test_ui_to_native_and_back_keeps_editor_nodes_groups_and_links(tmp_path):
    async with serve(tmp_path) as client:
        status, native = await post(client, {"workflow": UI_WORKFLOW, "to": "native"})
        assert status == 200 and native["format"] == "nodegraph"
        assert sorted(native["nodes"]) == ["1", "3"]  # the Reroute and the Note are editor-only
        assert [(l["from_node"], l["to_node"], l["to_input"]) for l in native["links"]] == [("1", "3", "value")]
        assert native["nodes"]["1"]["widgets"] == {"value": 7}
        status, ui = await post(client, {"workflow": native, "to": "ui"})
        assert status == 200
        by_type = {node["type"]: node for node in ui["nodes"]}
        assert set(by_type) == {"Number", "Reroute", "Collect", "Note"}
        assert by_type["Note"]["widgets_values"] == ["remember the seven"]
        assert ui["groups"][0]["title"] == "Numbers" and ui["groups"][0]["color"] == "#3f789e"
        # the Collect input is still fed through the Reroute, not straight from Number
        collect_link = next(link for link in ui["links"] if link[3] == 3)
        assert collect_link[1] == 2


async def test_api_target_and_refusals(tmp_path):
    async with serve(tmp_path) as client:
        status, prompt = await post(client, {"workflow": UI_WORKFLOW, "to": "api"})
        assert status == 200
        assert prompt["3"]["inputs"]["value"] == ["1", 0] and prompt["1"]["inputs"]["value"] == 7
        status, body = await post(client, {"workflow": UI_WORKFLOW, "to": "svg"})
        assert status == 400 and "'to' must be one of" in body["error"]["message"]
        status, body = await post(client, {"workflow": {"nodes": [{"type": "Number"}], "links": []}, "to": "native"})
        assert status == 400 and "id" in body["error"]["details"]


async def test_a_malformed_kept_entry_is_a_400_not_a_crash(tmp_path):
    native = {"format": "nodegraph", "version": 1, "links": [], "groups": [],
              "nodes": {"1": {"type": "Number", "widgets": {"value": 1}, "comfyui": {"inputs": 5}}},
              "extra": {"comfyui": {"editor_nodes": "not a list of nodes"}}}
    async with serve(tmp_path) as client:
        status, body = await post(client, {"workflow": native, "to": "ui"})
        assert status == 400 and body["error"]["type"] == "invalid_workflow"
        assert body["error"]["message"] == "Could not convert the workflow to ui"
        del native["nodes"]["1"]["comfyui"], native["extra"]["comfyui"]
        status, body = await post(client, {"workflow": native, "to": "ui"})
        assert status == 200 and [n["type"] for n in body["nodes"]] == ["Number"]
