"""File routes: /view, /upload/image, /upload/mask and the editor's static files.

Every user-supplied name is resolved (symlinks included) inside its root or refused with a JSON 400/403/404.
Only images, audio, video and plain text are served inline; anything else (SVG, HTML, ...) is a download
with `nosniff`, so an uploaded page can never run script in our origin.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..paths import UnsafePath, atomic_write_bytes, safe_join
from . import jsonsafe
from .responses import ApiError, json_response
from .state import STATE
from .upload_check import IMAGE_FORMATS, check_image

FOLDER_TYPES = ("output", "input", "temp")
INLINE_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
    ".bmp": "image/bmp", ".avif": "image/avif", ".mp4": "video/mp4", ".webm": "video/webm", ".wav": "audio/wav",
    ".mp3": "audio/mpeg", ".flac": "audio/flac", ".ogg": "audio/ogg", ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}
"""Types a browser shows without running anything; everything else is sent as a download."""
PREVIEWABLE = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".webp": "image/webp", ".jpg": "image/jpeg", ".woff2": "font/woff2", ".woff": "font/woff",
    ".txt": "text/plain; charset=utf-8", ".ttf": "font/ttf", ".eot": "application/vnd.ms-fontobject",
    ".webm": "video/webm",
}
"""The editor's own files (ours, trusted); .py and anything unlisted in the package is never served."""
MAX_FIELD_BYTES = 64 * 1024
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
"""Longer names would fail in the file system (ENAMETOOLONG) rather than be refused."""
_ENCODED = re.compile(r"%(2f|5c|00|25|2e)", re.IGNORECASE)
_ANNOTATION = re.compile(r"^(.*?)\s*\[(input|output|temp)\]$")


def folder_root(env: Any, folder_type: str) -> Path:
    roots = {"output": env.output_dir, "input": env.input_dir, "temp": env.temp_dir}
    if folder_type not in roots:
        raise ApiError(400, "invalid_type", f"Unknown folder type {folder_type!r}", "use input, output or temp")
    return Path(roots[folder_type])


def check_text(value: str, what: str) -> str:
    """Refuse control characters, (double-)encoded separators and lone surrogates in a decoded name."""
    if any(ord(c) < 32 for c in value) or _ENCODED.search(value):
        raise ApiError(400, "invalid_path", f"Invalid {what}", "control characters or encoded separators")
    problem = jsonsafe.value_problem(value)
    if problem is not None:
        raise ApiError(400, "invalid_path", f"Invalid {what}", problem)
    if (len(value.encode()) > MAX_PATH_BYTES
            or any(len(part.encode()) > MAX_NAME_BYTES for part in re.split(r"[\\/]", value))):
        raise ApiError(400, "invalid_path", f"Invalid {what}",
                       f"too long: at most {MAX_NAME_BYTES} bytes a name, {MAX_PATH_BYTES} in all")
    return value


def resolve_in(root: Path, subfolder: str, filename: str) -> Path:
    """The real path of `subfolder/filename` under `root`: 400 for a malformed name, 403 for one that escapes."""
    check_text(subfolder, "subfolder")
    check_text(filename, "filename")
    name = f"{subfolder.strip('/')}/{filename}" if subfolder.strip("/") else filename
    if subfolder.startswith(("/", "\\")):
        raise ApiError(400, "invalid_path", "Invalid subfolder", "absolute paths are not allowed")
    try:
        return safe_join(root, name)
    except UnsafePath as exc:
        status = 403 if "outside" in str(exc) else 400
        raise ApiError(status, "invalid_path" if status == 400 else "forbidden_path", "Path not allowed",
                       str(exc)) from None


def split_annotation(filename: str) -> tuple[str, str | None]:
    """ComfyUI's "name.png [input]" form names the folder inside the file name."""
    match = _ANNOTATION.match(filename)
    return (match.group(1), match.group(2)) if match else (filename, None)


def content_headers(path: Path) -> dict[str, str]:
    content_type = INLINE_TYPES.get(path.suffix.lower())
    disposition = "inline" if content_type else "attachment"
    ascii_name = path.name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return {
        "Content-Type": content_type or "application/octet-stream",
        "Content-Disposition": f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(path.name)}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


async def view(request: web.Request) -> web.StreamResponse:
    """GET /view?filename=&subfolder=&type=output|input|temp[&preview=webp;90][&channel=rgb|a]"""
    env = request.app[STATE].engine.env
    query = request.query
    filename, annotated = split_annotation(query.get("filename", ""))
    if not filename:
        raise ApiError(400, "invalid_request", "filename is required")
    root = folder_root(env, annotated or query.get("type", "output"))
    path = resolve_in(root, query.get("subfolder", ""), filename)
    if not path.is_file():
        raise ApiError(404, "not_found", "File not found", filename)
    headers = content_headers(path)
    preview, channel = query.get("preview"), query.get("channel", "rgba")
    if path.suffix.lower() in PREVIEWABLE and (preview or channel in ("rgb", "a")):
        data, content_type = await asyncio.to_thread(_converted, path, preview, channel)
        headers["Content-Type"] = content_type
        return web.Response(body=data, headers=headers)
    return web.FileResponse(path, headers=headers)


def _converted(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if channel == "a":
                alpha = image.convert("RGBA").getchannel("A")
                image = Image.merge("RGBA", (alpha, alpha, alpha, Image.new("L", alpha.size, 255)))
            elif channel == "rgb" or preview:
                image = image.convert("RGB")
            buffer = io.BytesIO()
            if preview:
                fmt, _, quality = preview.partition(";")
                fmt = "JPEG" if fmt.lower() in ("jpeg", "jpg") else "WEBP"
                image.save(buffer, format=fmt, quality=int(quality) if quality.isascii() and quality.isdigit() else 90)
                return buffer.getvalue(), "image/jpeg" if fmt == "JPEG" else "image/webp"
            image.save(buffer, format="PNG")
            return buffer.getvalue(), "image/png"
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(400, "invalid_image", "Cannot convert this file", str(exc)) from None


async def read_form(request: web.Request, limit: int) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """A multipart form streamed under a size limit: (text fields, files as (filename, bytes))."""
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "invalid_request", "Expected a multipart/form-data body")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.filename is not None:
                files[part.name or ""] = (part.filename, await _read_part(part, limit))
            else:
                fields[part.name or ""] = (await _read_part(part, MAX_FIELD_BYTES)).decode("utf-8", "replace")
    except ApiError:
        raise
    except (ValueError, AssertionError, UnicodeDecodeError, HttpProcessingError) as exc:
        # HttpProcessingError: a part's headers aiohttp refuses, e.g. a NUL byte in the file name
        reason = getattr(exc, "message", "") or str(exc)
        raise ApiError(400, "invalid_request", "Malformed multipart body", reason.strip()) from None
    return fields, files


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", "Upload too large", f"the limit is {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def upload_target(env: Any, fields: dict[str, str], filename: str) -> tuple[str, str, Path]:
    """(folder type, subfolder, folder path) for an upload, checked."""
    folder_type = fields.get("type") or "input"
    subfolder = fields.get("subfolder", "")
    check_text(filename, "filename")
    if (not filename or filename != os.path.basename(filename) or "\\" in filename or filename.startswith(".")
            or len(filename) > 255):
        raise ApiError(400, "invalid_filename", "Invalid file name", "a plain file name, no folders, not hidden")
    folder = resolve_in(folder_root(env, folder_type), subfolder, ".") if subfolder else folder_root(env, folder_type)
    return folder_type, subfolder, folder


def store_upload(folder: Path, filename: str, data: bytes, overwrite: bool) -> str:
    """Write `data` atomically and return the name used: the same name with the same content is reused,
    a different content gets `name (1).ext`, `name (2).ext`, ... (ComfyUI's rule); never a partial file."""
    folder.mkdir(parents=True, exist_ok=True)
    if overwrite:
        try:
            target = safe_join(folder, filename)
        except UnsafePath as exc:  # a symlink pointing out holds this name: never write through it
            raise ApiError(403, "forbidden_path", "Path not allowed", str(exc)) from None
        if target.exists() and not target.is_file():
            raise ApiError(409, "name_conflict", "Cannot overwrite: not a file", filename)
        atomic_write_bytes(target, data)
        return filename
    stem, ext = os.path.splitext(filename)
    for index in range(0, 10000):
        name = filename if index == 0 else f"{stem} ({index}){ext}"
        try:
            target = safe_join(folder, name)
        except UnsafePath:  # a symlink pointing out holds this name: skip it, never read through it
            continue
        if os.path.lexists(folder / name):
            if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
                return name
            continue
        if _create_exclusive(folder, name, data):
            return name
    raise ApiError(409, "name_conflict", "No free file name left", filename)


def _create_exclusive(folder: Path, name: str, data: bytes) -> bool:
    """Write a temporary file, then hard-link it to `name` only if that name is free (atomic, no clobber)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, folder / name)
        except FileExistsError:
            return False
        except OSError:  # no hard links here: claim the name, then move the full file over it
            try:
                os.close(os.open(folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return False
            os.replace(tmp, folder / name)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


async def upload_image(request: web.Request) -> web.Response:
    """POST /upload/image (multipart: image, type, subfolder, overwrite)."""
    state = request.app[STATE]
    fields, files = await read_form(request, state.config.max_upload_bytes)
    if "image" not in files:
        raise ApiError(400, "invalid_request", "No 'image' file in the form")
    filename, data = files["image"]
    return await _save(state.engine.env, fields, filename, data, state.config.max_upload_pixels)


async def _save(env: Any, fields: dict[str, str], filename: str, data: bytes, max_pixels: int) -> web.Response:
    """Check the name, then the image (nothing is written for a refused one), then store it."""
    folder_type, subfolder, folder = upload_target(env, fields, filename)
    await asyncio.to_thread(check_image, data, max_pixels)
    overwrite = fields.get("overwrite", "").lower() in ("true", "1")
    name = await asyncio.to_thread(store_upload, folder, filename, data, overwrite)
    return json_response({"name": name, "subfolder": subfolder, "type": folder_type})


async def upload_mask(request: web.Request) -> web.Response:
    """POST /upload/mask: the uploaded mask's alpha applied to `original_ref`'s image, saved as a new file."""
    state = request.app[STATE]
    env = state.engine.env
    fields, files = await read_form(request, state.config.max_upload_bytes)
    if "image" not in files:
        raise ApiError(400, "invalid_request", "No 'image' file in the form")
    try:
        ref = jsonsafe.loads(fields.get("original_ref", ""))
    except ValueError:  # JsonRefused too: malformed or nested too deeply
        ref = None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str) or not ref["filename"]:
        raise ApiError(400, "invalid_request", "original_ref must be JSON naming the original's filename")
    original_name, annotated = split_annotation(ref["filename"])
    root = folder_root(env, annotated or str(ref.get("type") or "output"))
    original = resolve_in(root, str(ref.get("subfolder") or ""), original_name)
    if not original.is_file():
        raise ApiError(404, "not_found", "Original image not found", original_name)
    filename, mask = files["image"]
    upload_target(env, fields, filename)  # a bad name is refused before any decoding
    await asyncio.to_thread(check_image, mask, state.config.max_upload_pixels, "mask")
    composed = await asyncio.to_thread(_apply_mask, original, mask)
    return await _save(env, fields, filename, composed, state.config.max_upload_pixels)


def _apply_mask(original_path: Path, mask_bytes: bytes) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    try:
        with Image.open(original_path, formats=IMAGE_FORMATS) as original:
            info = PngInfo()
            for key, value in (getattr(original, "text", None) or {}).items():
                info.add_text(key, value)
            rgba = original.convert("RGBA")
        with Image.open(io.BytesIO(mask_bytes), formats=IMAGE_FORMATS) as mask:
            alpha = mask.convert("RGBA").getchannel("A")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(400, "invalid_image", "Not a readable image", str(exc)) from None
    if alpha.size != rgba.size:
        alpha = alpha.resize(rgba.size)
    rgba.putalpha(alpha)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG", compress_level=4, pnginfo=info)
    return buffer.getvalue()


async def static_file(request: web.Request) -> web.StreamResponse:
    """The editor: GET / is index.html, other files by name; hidden, Python and unlisted types are never served."""
    state = request.app[STATE]
    static_dir = state.config.static_dir
    relative = request.match_info.get("path", "") or "index.html"
    check_text(relative, "path")
    parts = relative.split("/")
    suffix = Path(relative).suffix.lower()
    if (static_dir is None or suffix not in STATIC_TYPES or "__pycache__" in parts
            or any(part.startswith(".") for part in parts)):
        return _editor_missing(relative)
    path = resolve_in(Path(static_dir), "", relative)
    if not path.is_file():
        return _editor_missing(relative)
    headers = {"Content-Type": STATIC_TYPES[suffix], "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return web.FileResponse(path, headers=headers)


def _editor_missing(relative: str) -> web.Response:
    if relative == "user.css":  # ComfyUI's frontend links it on every page; the user's own is under /userdata
        return web.Response(text="", headers={"Content-Type": "text/css; charset=utf-8",
                                              "X-Content-Type-Options": "nosniff"})
    if relative == "index.html":  # no editor installed: say what this is instead of a bare 404
        from .. import __version__

        return json_response({"name": "nodegraph", "version": __version__, "editor": False,
                              "api": "/openapi.json"})
    raise ApiError(404, "not_found", "Not found", relative)
