"""ComfyUI's per-user files and settings: /users, /settings, /userdata (list, read, write, delete, move) and
/v2/userdata, as `app/user_manager.py` and `app/app_settings.py` of current ComfyUI answer them.

One folder, `DATA_DIR/user/default/`, holds them (ComfyUI's `user/default/`): the frontend's saved workflows
under `workflows/`, its settings in `comfy.settings.json`. Both front ends use this one store. There is one
user: ComfyUI's `--multi-user` mode (a `comfy-user` header picking a folder) is not offered.

ComfyUI's frontend always sends a file's folders as `%2F` inside one path segment
(`/userdata/workflows%2Fa.json`); the request guard lets `%2F` through on these routes only, and every name is
resolved (symlinks included) inside the user's folder or refused: 400 for a malformed name (`..`, absolute,
control characters, a double-encoded separator), 403 for one that resolves outside. Errors are our JSON error
shape where ComfyUI answers plain text; the frontend reads only their status.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from ..paths import atomic_write_bytes
from . import jsonsafe
from .files import INLINE_TYPES, resolve_in
from .responses import ApiError, json_response, read_json

USER = "default"
SETTINGS_FILE = "comfy.settings.json"
WORKFLOWS = "workflows"
STARTUP_FOLDERS = (WORKFLOWS, "subgraphs")
DEFAULT_FILES = {"user.css": ("", "text/css; charset=utf-8"), "comfy.templates.json": ("[]", "application/json"),
                 "workflows/.index.json": ('{"favorites": []}', "application/json")}
"""Files the frontend reads at start-up and when its workflow browser opens: until the user saves one, the empty
stylesheet, the empty list of node templates and no bookmarked workflows (ComfyUI answers 404, which the
browser logs as an error each time)."""
SAFE_TYPES = frozenset({".json", ".png", ".jpg", ".jpeg", ".webp", ".txt"})
"""Served with their own content type (still as an attachment); anything else as application/octet-stream."""


class UserStore:
    """The user's folder and the lock that keeps read-modify-write of its settings file whole.

    Args:
        user_dir: ComfyUI's `user/` folder; this user's files are in `user_dir/default`.
    """

    def __init__(self, user_dir: Path) -> None:
        self.root = Path(user_dir) / USER
        self.settings_lock = asyncio.Lock()

    def create(self) -> None:
        """The user's folder and the folders the frontend lists at start-up, so its first listings are empty
        lists rather than 404s."""
        for folder in STARTUP_FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """`name` (folders with `/`) inside the user's folder, resolved; ApiError 400/403 otherwise."""
        if not name:
            raise ApiError(400, "invalid_path", "A file name is required")
        self.root.mkdir(parents=True, exist_ok=True)
        return resolve_in(self.root, "", name)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root.resolve()).as_posix()

    def info(self, path: Path, relative_to: Path | None = None) -> dict[str, Any]:
        """ComfyUI's FileInfo: path (relative, `/`), size in bytes, modified and created in epoch milliseconds."""
        stat = path.stat()
        base = (relative_to or self.root).resolve()
        return {"path": path.relative_to(base).as_posix(), "size": stat.st_size,
                "modified": int(stat.st_mtime * 1000), "created": int(stat.st_ctime * 1000)}

    def read_settings(self) -> dict[str, Any]:
        path = self.root / SETTINGS_FILE
        if not path.is_file():
            return {}
        try:
            data = jsonsafe.loads(path.read_bytes())
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def write_settings(self, settings: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / SETTINGS_FILE, jsonsafe.dumps(settings).encode())


USER_STORE = web.AppKey("nodegraph_user_store", UserStore)


def _store(request: web.Request) -> UserStore:
    return request.app[USER_STORE]


def _flag(request: web.Request, name: str, default: str) -> bool:
    return request.query.get(name, default).lower() == "true"


async def get_users(request: web.Request) -> web.Response:
    """As ComfyUI without --multi-user: settings live on the server, and the user's folder exists (migrated)."""
    return json_response({"storage": "server", "migrated": _store(request).root.is_dir()})


async def get_settings(request: web.Request) -> web.Response:
    """Every setting as one object (ComfyUI: `{}` before the first save)."""
    return json_response(await asyncio.to_thread(_store(request).read_settings))


async def get_setting(request: web.Request) -> web.Response:
    """One setting's value, or null when unset (as ComfyUI)."""
    settings = await asyncio.to_thread(_store(request).read_settings)
    return json_response(settings.get(request.match_info["id"]))


async def post_settings(request: web.Request) -> web.Response:
    """Merge an object of settings into the stored ones; an empty 200 as ComfyUI."""
    values = await read_json(request)
    if not isinstance(values, dict):
        raise ApiError(400, "invalid_request", "Settings must be a JSON object", f"got {type(values).__name__}")
    store = _store(request)
    async with store.settings_lock:
        settings = await asyncio.to_thread(store.read_settings)
        await asyncio.to_thread(store.write_settings, {**settings, **values})
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    """Store one setting (the body is its JSON value); an empty 200 as ComfyUI."""
    value = await read_json(request)
    store = _store(request)
    async with store.settings_lock:
        settings = await asyncio.to_thread(store.read_settings)
        settings[request.match_info["id"]] = value
        await asyncio.to_thread(store.write_settings, settings)
    return web.Response(status=200)


async def list_userdata(request: web.Request) -> web.Response:
    """GET /userdata?dir=&recurse=&full_info=&split=: the files (never folders, never hidden ones) under `dir`,
    as ComfyUI: relative paths; with full_info FileInfo objects; with split `[path, *parts]` lists."""
    store = _store(request)
    directory = request.query.get("dir", "")
    if not directory:
        raise ApiError(400, "invalid_request", "dir is required", "e.g. ?dir=workflows")
    folder = store.path(directory)
    if not folder.is_dir():
        raise ApiError(404, "not_found", "Directory not found", directory)
    recurse, full_info, split = _flag(request, "recurse", ""), _flag(request, "full_info", ""), _flag(request, "split", "")

    def listing() -> list[Any]:
        found = []
        for path in sorted(folder.rglob("*") if recurse else folder.glob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if full_info:
                found.append(store.info(path, folder))
            elif split:
                found.append([relative.as_posix(), *relative.parts])
            else:
                found.append(relative.as_posix())
        return found

    return json_response(await asyncio.to_thread(listing))


async def list_userdata_v2(request: web.Request) -> web.Response:
    """GET /v2/userdata?path=: everything under `path` (default the user's folder), folders first then files by
    name, each `{name, path, type}` and for files `size` and `modified` (epoch seconds), as ComfyUI."""
    store = _store(request)
    requested = request.query.get("path", "")
    folder = store.path(requested) if requested else store.root
    if not folder.exists():
        if not requested:
            return json_response([])
        raise ApiError(404, "not_found", "Requested path not found", requested)
    if not folder.is_dir():
        raise ApiError(400, "invalid_path", "Requested path is not a directory", requested)

    def listing() -> list[dict[str, Any]]:
        root = store.root.resolve()
        entries: list[dict[str, Any]] = []
        for current, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in dirs:
                entries.append({"name": name, "path": (Path(current) / name).relative_to(root).as_posix(),
                                "type": "directory"})
            for name in sorted(f for f in files if not f.startswith(".")):
                path = Path(current) / name
                stat = path.stat()
                entries.append({"name": name, "path": path.relative_to(root).as_posix(), "type": "file",
                                "size": stat.st_size, "modified": stat.st_mtime})
        entries.sort(key=lambda entry: (entry["type"] != "directory", entry["name"].lower()))
        return entries

    return json_response(await asyncio.to_thread(listing))


async def get_userdata(request: web.Request) -> web.StreamResponse:
    """One file, never rendered as a page (attachment, nosniff), except the user's stylesheet; a missing file of
    `DEFAULT_FILES` is its default (ComfyUI: 404)."""
    store = _store(request)
    name = request.match_info["file"]
    path = store.path(name)
    if name in DEFAULT_FILES:
        default, content_type = DEFAULT_FILES[name]
        headers = {"Content-Type": content_type, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        if not path.is_file():
            return web.Response(text=default, headers=headers)
        return web.FileResponse(path, headers=headers)
    if not path.is_file():
        raise ApiError(404, "not_found", "File not found", name)
    content_type = INLINE_TYPES.get(path.suffix.lower()) if path.suffix.lower() in SAFE_TYPES else None
    return web.FileResponse(path, headers={
        "Content-Type": content_type or "application/octet-stream", "Content-Disposition": "attachment",
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


async def post_userdata(request: web.Request) -> web.Response:
    """Write the raw body to a file (folders made as needed); `?overwrite=false` refuses an existing one (409).
    Answers the path relative to the user's folder, or with `?full_info=true` its FileInfo, as ComfyUI."""
    store = _store(request)
    name = request.match_info["file"]
    path = store.path(name)
    if path == store.root.resolve() or path.is_dir():
        raise ApiError(409, "name_conflict", "A folder has this name", name)
    if not _flag(request, "overwrite", "true") and path.exists():
        raise ApiError(409, "name_conflict", "File already exists", name)
    body = await request.read()

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, body)

    try:
        await asyncio.to_thread(write)
    except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
        raise ApiError(409, "name_conflict", "A file stands where a folder is needed", str(exc)) from None
    return json_response(store.info(path) if _flag(request, "full_info", "false") else store.relative(path))


async def delete_userdata(request: web.Request) -> web.Response:
    """Delete one file: 204, or 404 when there is none (as ComfyUI)."""
    store = _store(request)
    name = request.match_info["file"]
    path = store.path(name)
    if not path.is_file():
        raise ApiError(404, "not_found", "File not found", name)
    await asyncio.to_thread(path.unlink)
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    """Move or rename a file inside the user's folder; `?overwrite=false` refuses an existing destination (409).
    Answers the new relative path, or with `?full_info=true` its FileInfo, as ComfyUI."""
    store = _store(request)
    source = store.path(request.match_info["file"])
    dest = store.path(request.match_info["dest"])
    if not source.is_file():
        raise ApiError(404, "not_found", "File not found", request.match_info["file"])
    if dest == store.root.resolve() or dest.is_dir():
        raise ApiError(409, "name_conflict", "A folder has this name", request.match_info["dest"])
    if not _flag(request, "overwrite", "true") and dest.exists():
        raise ApiError(409, "name_conflict", "File already exists", request.match_info["dest"])

    def move() -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, dest)

    try:
        await asyncio.to_thread(move)
    except (NotADirectoryError, FileExistsError) as exc:
        raise ApiError(409, "name_conflict", "A file stands where a folder is needed", str(exc)) from None
    return json_response(store.info(dest) if _flag(request, "full_info", "false") else store.relative(dest))

