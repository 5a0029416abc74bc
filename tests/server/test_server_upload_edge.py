"""Hostile uploads (reliability issue, items 15-17): each is a 4xx naming the problem, never a 500, and nothing
is written to input/ unless it is an image we can decode."""

import io
import os

import aiohttp
from PIL import Image
from server_helpers import serve


def png(size=(4, 4), color=(255, 0, 0, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def form(data: bytes, filename: str = "pic.png", **fields: str) -> aiohttp.FormData:
    result = aiohttp.FormData()
    result.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        result.add_field(key, value)
    return result


def raw_multipart(filename: bytes, data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand: aiohttp's client refuses to send a NUL in a header, an attacker won't."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"" + filename + b"\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=b"}


async def refused(response, status=(400,)):
    assert response.status in status, (response.status, await response.text())
    error = (await response.json())["error"]
    assert set(error) == {"type", "message", "details", "extra_info"}
    return error


async def test_item15_nul_byte_in_an_upload_file_name_is_a_400(tmp_path):
    async with serve(tmp_path) as client:
        for path in ("/upload/image", "/upload/mask"):
            body, headers = raw_multipart(b"a\x00b.png", png())
            error = await refused(await client.post(path, data=body, headers=headers))
            assert error["message"] == "Malformed multipart body"
        assert list((tmp_path / "input").iterdir()) == []


async def test_item16_overwrite_onto_a_symlink_pointing_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"keep me")
    async with serve(tmp_path) as client:
        input_dir = tmp_path / "input"
        os.symlink(outside / "secret.png", input_dir / "link.png")
        os.symlink(outside, input_dir / "dirlink.png")
        (input_dir / "folder.png").mkdir()
        for name, status in (("link.png", 403), ("dirlink.png", 403), ("folder.png", 409)):
            error = await refused(await client.post("/upload/image", data=form(png(), name, overwrite="true")),
                                  (status,))
            assert error["type"] in ("forbidden_path", "name_conflict"), name
        assert (outside / "secret.png").read_bytes() == b"keep me" and os.listdir(outside) == ["secret.png"]
        assert sorted(os.listdir(input_dir)) == ["dirlink.png", "folder.png", "link.png"]
        reply = await (await client.post("/upload/image", data=form(png(), "link.png"))).json()
        assert reply["name"] == "link (1).png"  # without overwrite: the next free name, as before
