"""/view, uploads and the editor's files: content types, de-duplication, and every way out refused."""

import io
import json
import os

import aiohttp
from PIL import Image
from server_helpers import png, serve, upload_form


async def test_view_serves_images_inline_and_the_rest_as_downloads(tmp_path):
    async with serve(tmp_path) as client:
        out = tmp_path / "output"
        (out / "sub").mkdir()
        (out / "sub" / "a.png").write_bytes(png())
        (out / "evil.svg").write_text("<svg onload=alert(1)></svg>")
        (out / "page.html").write_text("<script>alert(1)</script>")
        response = await client.get("/view", params={"filename": "a.png", "subfolder": "sub", "type": "output"})
        assert response.status == 200 and response.headers["Content-Type"] == "image/png"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Disposition"].startswith("inline")
        assert await response.read() == png()
        for name in ("evil.svg", "page.html"):
            response = await client.get("/api/view", params={"filename": name})
            assert response.status == 200 and response.headers["Content-Type"] == "application/octet-stream"
            assert response.headers["Content-Disposition"].startswith("attachment")
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        response = await client.get("/view", params={"filename": "a.png", "subfolder": "sub", "preview": "jpeg;80"})
        assert response.headers["Content-Type"] == "image/jpeg" and (await response.read())[:2] == b"\xff\xd8"
        response = await client.get("/view", params={"filename": "sub/a.png [output]", "type": "input"})
        assert response.status == 200  # ComfyUI's "[output]" annotation names the folder
        assert (await client.get("/view", params={"filename": "missing.png"})).status == 404
        assert (await client.get("/view", params={"filename": "a.png", "type": "models"})).status == 400
        assert (await client.get("/view")).status == 400


async def test_view_refuses_every_way_out(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    async with serve(tmp_path) as client:
        os.symlink(secret, tmp_path / "output" / "link.txt")
        os.symlink(tmp_path, tmp_path / "output" / "linkdir")
        attempts = [
            {"filename": "../secret.txt"},
            {"filename": "secret.txt", "subfolder": ".."},
            {"filename": "secret.txt", "subfolder": "../"},
            {"filename": str(secret)},
            {"filename": "secret.txt", "subfolder": str(tmp_path)},
            {"filename": "..%2Fsecret.txt"},  # arrives decoded once: a literal %2F
            {"filename": "%2e%2e/secret.txt"},
            {"filename": "..\\secret.txt"},
            {"filename": "secret.txt\x00.png"},
            {"filename": "link.txt"},
            {"filename": "secret.txt", "subfolder": "linkdir"},
        ]
        for params in attempts:
            response = await client.get("/view", params=params)
            assert response.status in (400, 403, 404), params
            body = await response.json()
            assert body["error"]["type"] and "secret" not in (await response.text()).replace("secret.txt", ""), params
        for raw in ("/view?filename=..%2Fsecret.txt", "/view?filename=..%252Fsecret.txt", "/view%2F..%2Fsecret.txt",
                    "/..%2F..%2Fsecret.txt", "/view?filename=%2E%2E%5Csecret.txt", "/view?filename=a%00.png"):
            response = await client.get(raw)
            assert response.status in (400, 403, 404), raw
            assert (await response.json())["error"]


async def test_upload_reuses_same_content_and_renames_different(tmp_path):
    async with serve(tmp_path) as client:
        first = await (await client.post("/upload/image", data=upload_form(png()))).json()
        assert first == {"name": "pic.png", "subfolder": "", "type": "input"}
        again = await (await client.post("/upload/image", data=upload_form(png()))).json()
        assert again["name"] == "pic.png"
        other = await (await client.post("/upload/image", data=upload_form(png((0, 255, 0, 255))))).json()
        assert other["name"] == "pic (1).png"
        assert (tmp_path / "input" / "pic (1).png").read_bytes() == png((0, 255, 0, 255))
        blue = png((0, 0, 255, 255))
        replaced = await (await client.post("/upload/image", data=upload_form(blue, overwrite="true"))).json()
        assert replaced["name"] == "pic.png" and (tmp_path / "input" / "pic.png").read_bytes() == blue
        sub = await (await client.post("/upload/image", data=upload_form(png(), subfolder="masks", type="temp"))).json()
        assert sub == {"name": "pic.png", "subfolder": "masks", "type": "temp"}
        assert (tmp_path / "temp" / "masks" / "pic.png").is_file()
        assert not [p for p in (tmp_path / "input").iterdir() if p.name.startswith(".")]  # no temp file left


async def test_upload_limits_and_bad_names(tmp_path):
    async with serve(tmp_path, max_upload_bytes=1000) as client:
        response = await client.post("/upload/image", data=upload_form(b"x" * 5000))
        assert response.status == 413 and (await response.json())["error"]["type"] == "too_large"
        for filename, fields in (("../x.png", {}), ("x.png", {"subfolder": "../.."}), (".hidden", {}),
                                 ("x.png", {"subfolder": "/etc"}), ("x.png", {"type": "models"}),
                                 ("a\\b.png", {}), ("x.png", {"subfolder": "..%2F"})):
            response = await client.post("/upload/image", data=upload_form(b"abc", filename=filename, **fields))
            assert response.status in (400, 403), (filename, fields)
            assert (await response.json())["error"]
        response = await client.post("/upload/image", data=b"not multipart")
        assert response.status == 400
        form = aiohttp.FormData()
        form.add_field("type", "input")
        assert (await client.post("/upload/image", data=form)).status == 400
        assert list((tmp_path / "input").iterdir()) == []


async def test_upload_mask_applies_alpha_to_the_original(tmp_path):
    async with serve(tmp_path) as client:
        original = io.BytesIO()
        Image.new("RGB", (4, 4), (10, 20, 30)).save(original, format="PNG")
        (tmp_path / "input" / "orig.png").write_bytes(original.getvalue())
        mask = png((0, 0, 0, 77))
        ref = json.dumps({"filename": "orig.png", "subfolder": "", "type": "input"})
        response = await client.post("/upload/mask", data=upload_form(mask, filename="clipspace-mask.png", original_ref=ref,
                                                                 type="input", subfolder="clipspace"))
        body = await response.json()
        assert response.status == 200 and body == {"name": "clipspace-mask.png", "subfolder": "clipspace",
                                                   "type": "input"}
        with Image.open(tmp_path / "input" / "clipspace" / "clipspace-mask.png") as result:
            assert result.mode == "RGBA" and result.getpixel((1, 1)) == (10, 20, 30, 77)
        bad_ref = json.dumps({"filename": "../secret.png", "type": "input"})
        response = await client.post("/upload/mask", data=upload_form(mask, original_ref=bad_ref))
        assert response.status in (400, 403)
        response = await client.post("/upload/mask", data=upload_form(mask, original_ref=json.dumps({"filename": "no.png"})))
        assert response.status == 404
        response = await client.post("/upload/mask", data=upload_form(b"not an image", original_ref=ref))
        assert response.status == 400


async def test_editor_files(tmp_path):
    static = tmp_path / "static"
    (static / "js").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>editor</title>")
    (static / "js" / "app.js").write_text("export const x = 1;")
    (static / "style.css").write_text("body{}")
    (static / "__init__.py").write_text("SECRET = 1")
    (static / ".env").write_text("x")
    async with serve(tmp_path, static_dir=static) as client:
        response = await client.get("/")
        assert response.status == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "editor" in await response.text()
        response = await client.get("/js/app.js")
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert (await client.get("/style.css")).headers["Content-Type"] == "text/css; charset=utf-8"
        for path in ("/__init__.py", "/.env", "/js/../__init__.py", "/..%2F..%2Fsecret", "/js/missing.js"):
            response = await client.get(path)
            assert response.status in (400, 403, 404), path
            assert (await response.json())["error"]


async def test_root_without_editor_says_what_this_is(tmp_path):
    async with serve(tmp_path, static_dir=tmp_path / "none") as client:
        response = await client.get("/")
        assert response.status == 200 and (await response.json())["name"] == "nodegraph"
