"""The routes ComfyUI's own frontend calls, in ComfyUI's shapes: users, settings, the user's files (with the `%2F`
separators the frontend sends, and every way out of the user's folder refused), templates, model listings,
logs, jobs, and `--front-end comfyui` itself."""

from __future__ import annotations

import json
import os
import struct

import pytest
from yarl import URL
from server_helpers import api_prompt, serve, submit, wait_history

from nodegraph.server import ServerConfig, create_app
from nodegraph.server.comfy_frontend import FrontEndMissing, comfyui_static_dir
from nodegraph.server.templates import template_names


def raw(client, method, path, **kwargs):
    """Send `path` exactly as written: no client-side decoding of `%2E` or folding of `..`."""
    return client.session.request(method, URL(f"http://127.0.0.1:{client.port}{path}", encoded=True), **kwargs)


def user_root(tmp_path):
    return tmp_path / "data" / "user" / "default"


async def test_users_and_settings_persist_under_the_data_dir(tmp_path):
    async with serve(tmp_path) as client:
        assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}
        assert await (await client.get("/api/settings")).json() == {}
        assert await (await client.get("/api/settings/Comfy.Locale")).json() is None
        response = await client.post("/api/settings/Comfy.Locale", json="fr")
        assert response.status == 200 and await response.read() == b""
        assert (await client.post("/api/settings", json={"A.B": 3, "C": [1, {"d": None}]})).status == 200
        assert (await client.post("/api/settings", json={"A.B": 4})).status == 200  # a merge, not a replace
        expected = {"Comfy.Locale": "fr", "A.B": 4, "C": [1, {"d": None}]}
        assert await (await client.get("/api/settings")).json() == expected
        assert await (await client.get("/api/settings/C")).json() == [1, {"d": None}]
        assert (await client.post("/api/settings", json=[1])).status == 400
    assert json.loads((user_root(tmp_path) / "comfy.settings.json").read_text()) == expected
    async with serve(tmp_path) as client:  # a restart keeps them
        assert await (await client.get("/settings")).json() == expected


async def test_userdata_write_list_read_move_delete_with_encoded_separators(tmp_path):
    async with serve(tmp_path) as client:
        workflow = json.dumps({"nodes": [], "links": []}).encode()
        response = await client.post("/api/userdata/workflows%2Fmine%2Fa.json?overwrite=false&full_info=true",
                                     data=workflow)
        info = await response.json()
        assert response.status == 200 and info["path"] == "workflows/mine/a.json" and info["size"] == len(workflow)
        assert isinstance(info["modified"], int) and info["modified"] > 1_600_000_000_000  # milliseconds
        assert (user_root(tmp_path) / "workflows" / "mine" / "a.json").read_bytes() == workflow
        again = await client.post("/api/userdata/workflows%2Fmine%2Fa.json?overwrite=false", data=b"{}")
        assert again.status == 409
        plain = await client.post("/userdata/workflows%2Fb.json", data=b"{}")  # overwrite defaults to true
        assert await plain.json() == "workflows/b.json"

        listed = await (await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true"})).json()
        assert listed == ["b.json", "mine/a.json"]
        flat = await (await client.get("/api/userdata", params={"dir": "workflows"})).json()
        assert flat == ["b.json"]
        split = await (await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true",
                                                                  "split": "true"})).json()
        assert split == [["b.json", "b.json"], ["mine/a.json", "mine", "a.json"]]
        full = await (await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true",
                                                                 "full_info": "true"})).json()
        assert [entry["path"] for entry in full] == ["b.json", "mine/a.json"]
        assert set(full[0]) == {"path", "size", "modified", "created"}
        assert (await client.get("/api/userdata", params={"dir": "nothing-here"})).status == 404
        assert (await client.get("/api/userdata")).status == 400

        read = await client.get("/api/userdata/workflows%2Fmine%2Fa.json")
        assert read.status == 200 and await read.read() == workflow
        assert read.headers["Content-Disposition"] == "attachment" and read.headers["X-Content-Type-Options"] == "nosniff"

        v2 = await (await client.get("/api/v2/userdata", params={"path": "workflows"})).json()
        assert [(e["name"], e["path"], e["type"]) for e in v2] == [
            ("mine", "workflows/mine", "directory"), ("a.json", "workflows/mine/a.json", "file"),
            ("b.json", "workflows/b.json", "file")]
        assert v2[1]["size"] == len(workflow) and isinstance(v2[1]["modified"], float)  # seconds, as ComfyUI

        moved = await client.post("/api/userdata/workflows%2Fmine%2Fa.json/move/workflows%2Fc.json?overwrite=false")
        assert moved.status == 200 and await moved.json() == "workflows/c.json"
        assert (await client.post("/api/userdata/workflows%2Fc.json/move/workflows%2Fb.json?overwrite=false")).status == 409
        assert (await client.post("/api/userdata/workflows%2Fnone.json/move/workflows%2Fd.json")).status == 404
        assert (await client.delete("/api/userdata/workflows%2Fc.json")).status == 204
        assert (await client.delete("/api/userdata/workflows%2Fc.json")).status == 404
        assert sorted(p.name for p in (user_root(tmp_path) / "workflows").rglob("*.json")) == ["b.json"]


async def test_startup_files_answer_without_404(tmp_path):
    """The frontend reads these on every load: empty defaults until the user saves their own."""
    async with serve(tmp_path) as client:
        css = await client.get("/api/userdata/user.css")
        assert css.status == 200 and css.headers["Content-Type"].startswith("text/css") and await css.text() == ""
        templates = await client.get("/api/userdata/comfy.templates.json")
        assert templates.status == 200 and await templates.json() == []
        bookmarks = await client.get("/api/userdata/workflows%2F.index.json")
        assert await bookmarks.json() == {"favorites": []}
        assert await (await client.get("/api/userdata", params={"dir": "subgraphs"})).json() == []
        await client.post("/api/userdata/user.css", data=b"body { color: red }")
        assert await (await client.get("/api/userdata/user.css")).text() == "body { color: red }"


TRAVERSALS = [
    "..%2Fqueue.sqlite3", "..%2F..%2Fsecret.txt", "workflows%2F..%2F..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd",
    "%2E%2E%2Fsecret.txt", "..%5Csecret.txt", "%252E%252E%252Fsecret.txt", "workflows%252F..%252F..%252Fsecret.txt",
    "a%00b", "C:%2Fsecret.txt",
]
"""Ways out of the user's folder: dot-dot (plain, encoded, double-encoded), absolute, backslash, NUL, a drive."""


async def test_userdata_refuses_every_way_out(tmp_path):
    secret = tmp_path / "data" / "secret.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    async with serve(tmp_path) as client:
        os.symlink(outside, user_root(tmp_path) / "link")  # a folder link pointing out
        for name in (*TRAVERSALS, "link%2Fx.json"):
            for method, path in (("GET", f"/api/userdata/{name}"), ("POST", f"/api/userdata/{name}"),
                                 ("DELETE", f"/api/userdata/{name}"),
                                 ("POST", f"/api/userdata/{name}/move/workflows%2Fz.json"),
                                 ("POST", f"/api/userdata/workflows%2Fz.json/move/{name}")):
                if path.endswith("move/workflows%2Fz.json"):
                    (user_root(tmp_path) / "workflows" / "z.json").write_text("{}")
                response = await raw(client, method, path, data=b"overwritten")
                assert response.status in (400, 403, 404), (method, path, response.status)
                if response.status != 404:
                    body = await response.json()
                    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
        for params in ({"dir": "../"}, {"dir": "../data"}, {"dir": "/etc"}, {"dir": "link"}):
            assert (await client.get("/api/userdata", params=params)).status in (400, 403), params
        for params in ({"path": ".."}, {"path": "/"}, {"path": "link"}, {"path": "workflows/../../"}):
            assert (await client.get("/api/v2/userdata", params=params)).status in (400, 403), params
        for setting in ("%2E%2E%2F%2E%2E%2Fx", "%2E%2E", "a%2Fb"):
            assert (await raw(client, "POST", f"/api/settings/{setting}", json=1)).status == 400
    assert secret.read_text() == "secret" and list(outside.iterdir()) == []
    assert not (tmp_path / "data" / "x").exists()


async def test_encoded_separators_stay_refused_outside_userdata(tmp_path):
    async with serve(tmp_path) as client:
        for path in ("/view%2F..%2Fx", "/models%2Fcheckpoints", "/api/templates/..%2F..%2Fpyproject.toml",
                     "/settings/a%2Fb"):
            assert (await raw(client, "GET", path)).status == 400, path


async def test_small_frontend_routes_answer_as_comfyui(tmp_path):
    static = tmp_path / "static"
    (static / "extensions" / "core").mkdir(parents=True)
    (static / "extensions" / "core" / "a.js").write_text("")
    (static / "extensions" / "core" / "b.css").write_text("")
    async with serve(tmp_path, static_dir=static) as client:
        assert await (await client.get("/api/extensions")).json() == ["/extensions/core/a.js"]
        for path in ("/api/i18n", "/api/workflow_templates", "/api/global_subgraphs", "/api/node_replacements"):
            assert await (await client.get(path)).json() == {}, path
        assert (await client.get("/api/global_subgraphs/nope")).status == 404
        assert (await client.patch("/internal/logs/subscribe", json={"enabled": True, "clientId": "x"})).status == 200
        user_css = await client.get("/user.css")
        assert user_css.status == 200 and await user_css.text() == ""
        stats = await (await client.get("/api/system_stats")).json()
        assert stats["system"]["argv"] == ["nodegraph", "serve"]  # never the real one (it may hold a token)


async def test_model_listings(tmp_path):
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    header = json.dumps({"__metadata__": {"ss_network_dim": "4"}, "w": {"dtype": "F32", "shape": [1],
                                                                          "data_offsets": [0, 4]}}).encode()
    (models / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    bare = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (models / "bare.safetensors").write_bytes(struct.pack("<Q", len(bare)) + bare + b"\0" * 4)
    async with serve(tmp_path) as client:
        folders = await (await client.get("/api/experiment/models")).json()
        by_name = {entry["name"]: entry["folders"] for entry in folders}
        assert by_name["checkpoints"] == [str(models)]
        files = await (await client.get("/api/experiment/models/checkpoints")).json()
        assert [(f["name"], f["pathIndex"], f["size"]) for f in files] == [
            ("bare.safetensors", 0, len(bare) + 12), ("m.safetensors", 0, len(header) + 12)]
        assert (await client.get("/api/experiment/models/nope")).status == 404
        assert (await (await client.get("/internal/folder_paths")).json())["checkpoints"] == [str(models)]
        meta = await client.get("/api/view_metadata/checkpoints", params={"filename": "m.safetensors"})
        assert await meta.json() == {"ss_network_dim": "4"}
        for params in ({"filename": "bare.safetensors"}, {"filename": "../m.safetensors"}, {"filename": "x.ckpt"}, {}):
            assert (await client.get("/api/view_metadata/checkpoints", params=params)).status == 404, params


async def test_internal_files_and_logs(tmp_path):
    async with serve(tmp_path) as client:
        output = tmp_path / "output"
        (output / "old.png").write_bytes(b"x")
        os.utime(output / "old.png", (1_000_000, 1_000_000))
        (output / "new.webp").write_bytes(b"x")
        (output / "notes.py").write_bytes(b"x")
        assert await (await client.get("/internal/files/output")).json() == ["new.webp", "old.png"]
        assert (await client.get("/internal/files/elsewhere")).status == 400
        import logging

        logging.getLogger("nodegraph.test").warning("a line for the terminal panel")
        raw = await (await client.get("/internal/logs/raw")).json()
        assert any("a line for the terminal panel" in entry["m"] for entry in raw["entries"])
        assert set(raw["entries"][-1]) == {"t", "m"} and set(raw["size"]) == {"cols", "rows"}
        assert "a line for the terminal panel" in await (await client.get("/internal/logs")).json()


async def test_shipped_workflows_are_the_templates(tmp_path):
    names = template_names()
    assert names[0] == "txt2img" and {"img2img", "inpaint", "lora"} <= set(names)
    async with serve(tmp_path) as client:
        index = await (await client.get("/templates/index.json")).json()
        (category,) = index
        assert category["moduleName"] == "default"
        assert [t["name"] for t in category["templates"]] == names
        for template in category["templates"]:
            assert template["mediaType"] == "image" and template["mediaSubtype"] == "png" and template["title"]
            workflow = await client.get(f"/templates/{template['name']}.json")
            assert workflow.status == 200 and "nodes" in await workflow.json()
            thumbnail = await client.get(f"/templates/{template['name']}-1.png")
            assert thumbnail.status == 200 and (await thumbnail.read())[:8] == b"\x89PNG\r\n\x1a\n"
        assert await (await client.get("/templates/index.fr.json")).json() == index
        assert await (await client.get("/templates/index_logo.json")).json() == {}
        for name in ("nope.json", "..json", "txt2img.png", "index.html"):
            assert (await client.get(f"/templates/{name}")).status == 404, name


async def test_jobs_list_the_queue_and_the_history(tmp_path):
    async with serve(tmp_path) as client:
        done = (await submit(client, api_prompt(2), extra_data={"extra_pnginfo": {"workflow": {"id": "wf-1"}}}))
        await wait_history(client, done["prompt_id"])
        failed = (await submit(client, api_prompt(3, fail=True)))["prompt_id"]
        await wait_history(client, failed)
        body = await (await client.get("/api/jobs", params={"status": "completed,failed,cancelled",
                                                            "limit": "1", "offset": "0"})).json()
        assert body["pagination"] == {"offset": 0, "limit": 1, "total": 2, "has_more": True}
        (newest,) = body["jobs"]
        assert newest["id"] == failed and newest["status"] == "failed"
        assert newest["execution_error"]["exception_message"] == "boom"
        everything = await (await client.get("/api/jobs")).json()
        jobs = {job["id"]: job for job in everything["jobs"]}
        first = jobs[done["prompt_id"]]
        assert first["status"] == "completed" and first["workflow_id"] == "wf-1" and first["create_time"] > 0
        assert first["execution_end_time"] >= first["execution_start_time"] > 0
        only = await (await client.get("/api/jobs", params={"workflow_id": "wf-1"})).json()
        assert [job["id"] for job in only["jobs"]] == [done["prompt_id"]]
        detail = await (await client.get(f"/api/jobs/{done['prompt_id']}")).json()
        assert detail["workflow"]["prompt"]["1"]["class_type"] == "Number" and "3" in detail["outputs"]
        assert (await client.get("/api/jobs/nope")).status == 404
        assert (await client.get("/api/jobs", params={"status": "sleeping"})).status == 400
        assert await (await client.get("/api/jobs", params={"status": "pending,in_progress"})).json() == {
            "jobs": [], "pagination": {"offset": 0, "limit": 0, "total": 0, "has_more": False}}


def _engine(tmp_path):
    from server_helpers import make_engine

    return make_engine(tmp_path)


def test_comfyui_front_end_serves_the_installed_package(tmp_path):
    pytest.importorskip("comfyui_frontend_package")
    app = create_app(_engine(tmp_path), ServerConfig(data_dir=tmp_path / "data", front_end="comfyui", durable=False))
    from nodegraph.server.state import STATE

    static = app[STATE].config.static_dir
    assert static == comfyui_static_dir() and (static / "index.html").is_file()


def test_unknown_front_end_is_refused(tmp_path):
    with pytest.raises(ValueError, match="front_end 'litegraph'"):
        create_app(_engine(tmp_path), ServerConfig(data_dir=tmp_path / "data", front_end="litegraph"))


def test_comfyui_front_end_without_the_extra_names_it(tmp_path, monkeypatch, capsys):
    import sys

    from nodegraph.cli import main

    monkeypatch.setitem(sys.modules, "comfyui_frontend_package", None)  # import fails as if not installed
    with pytest.raises(FrontEndMissing, match=r"nodegraph\[comfyui-frontend\]"):
        comfyui_static_dir()
    status = main(["serve", "--front-end", "comfyui", "--data-dir", str(tmp_path / "data"), "--port", "0",
                   "--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "out")])
    assert status == 2 and "pip install 'nodegraph[comfyui-frontend]'" in capsys.readouterr().err
