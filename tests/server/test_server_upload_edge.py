"""Hostile uploads (reliability issue, items 15-17): each is a 4xx naming the problem, never a 500, and nothing
is written to input/ unless it is an image we can decode."""

import io
import os

from PIL import Image
from server_helpers import png, serve, upload_form


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
            error = await refused(await client.post("/upload/image", data=upload_form(png(), name, overwrite="true")),
                                  (status,))
            assert error["type"] in ("forbidden_path", "name_conflict"), name
        assert (outside / "secret.png").read_bytes() == b"keep me" and os.listdir(outside) == ["secret.png"]
        assert sorted(os.listdir(input_dir)) == ["dirlink.png", "folder.png", "link.png"]
        reply = await (await client.post("/upload/image", data=upload_form(png(), "link.png"))).json()
        assert reply["name"] == "link (1).png"  # without overwrite: the next free name, as before


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming `width`x`height`, then IEND: a few dozen bytes, a huge image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


async def test_item17_only_decodable_images_within_the_pixel_limit_are_stored(tmp_path):
    whole = png(size=(64, 64))
    async with serve(tmp_path, max_upload_pixels=100 * 100) as client:
        cases = {
            "text": (b"just some text\n", 400, "not an image"),
            "html": (b"<html><script>alert(1)</script></html>", 400, "not an image"),
            "empty": (b"", 400, "empty"),
            "truncated": (whole[: len(whole) // 2], 400, "not a readable image"),
            "header bomb": (png_header_only(20000, 20000), 413, "too many pixels"),
            "over the limit": (png(size=(101, 100)), 413, "too many pixels"),
            "eps named png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 400, "not an image"),
        }
        for label, (data, status, words) in cases.items():
            for path, extra in (("/upload/image", {}), ("/upload/mask", {"original_ref": '{"filename": "ok.png", '
                                                                                       '"type": "input"}'})):
                if path == "/upload/mask":
                    (tmp_path / "input" / "ok.png").write_bytes(whole)
                error = await refused(await client.post(path, data=upload_form(data, f"{label}.png", **extra)), (status,))
                assert words in error["message"], (label, path, error)
                assert os.listdir(tmp_path / "input") in ([], ["ok.png"]), label  # nothing, not even a temp file
                (tmp_path / "input" / "ok.png").unlink(missing_ok=True)
        reply = await (await client.post("/upload/image", data=upload_form(png(size=(100, 100)), "fits.png"))).json()
        assert reply["name"] == "fits.png" and (tmp_path / "input" / "fits.png").read_bytes() == png(size=(100, 100))
    async with serve(tmp_path) as client:  # the default limit (64 megapixels) takes ordinary images
        jpeg = io.BytesIO()
        Image.new("RGB", (640, 480), (1, 2, 3)).save(jpeg, format="JPEG")
        reply = await client.post("/upload/image", data=upload_form(jpeg.getvalue(), "photo.jpg"))
        assert reply.status == 200
