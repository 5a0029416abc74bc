"""ComfyUI's own web frontend (`comfyui-frontend-package`) on our server: where its files are, and the small
routes it calls at start-up and in its panels that are not about files or settings (those are in userdata.py).

Each handler's docstring says whether it answers as current ComfyUI does or with the smallest answer the
frontend accepts (a feature we do not have: model previews, logs streaming, cloud-only panels).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from . import jsonsafe
from .files import folder_root
from .responses import ApiError, json_response
from .state import STATE
from .system import model_folders

COMFYUI_FRONTEND_EXTRA = "comfyui-frontend"
COMFYUI_FRONTEND_VERSION = "1.58.1"


class FrontEndMissing(RuntimeError):
    """`--front-end comfyui` without the package installed."""


def comfyui_static_dir() -> Path:
    """The installed `comfyui_frontend_package`'s static files (index.html and its assets)."""
    try:
        import comfyui_frontend_package
    except ImportError:
        raise FrontEndMissing(
            "--front-end comfyui needs ComfyUI's frontend package: install the optional extra with "
            f"pip install 'nodegraph[{COMFYUI_FRONTEND_EXTRA}]' (comfyui-frontend-package=={COMFYUI_FRONTEND_VERSION})"
        ) from None
    static = Path(comfyui_frontend_package.__file__).parent / "static"
    if not (static / "index.html").is_file():
        raise FrontEndMissing(f"comfyui-frontend-package is installed but has no static/index.html in {static}")
    return static


# -- routes the frontend calls that are about neither files nor the queue ---------------------------------


async def get_extensions(request: web.Request) -> web.Response:
    """The front end's own `extensions/**/*.js` as `/extensions/...` URLs, as ComfyUI lists its web root's (the
    frontend imports each at start-up); our node packs ship no browser extensions, so nothing else."""
    static_dir = request.app[STATE].config.static_dir

    def listing() -> list[str]:
        folder = Path(static_dir) / "extensions" if static_dir is not None else None
        if folder is None or not folder.is_dir():
            return []
        return sorted("/" + path.relative_to(static_dir).as_posix() for path in folder.rglob("*.js")
                      if not any(part.startswith(".") for part in path.relative_to(folder).parts))

    return json_response(await asyncio.to_thread(listing))


async def get_i18n(request: web.Request) -> web.Response:
    """Node packs' translations by locale, as ComfyUI merges its custom nodes' `locales/`: ours ship none, so {}."""
    return json_response({})


async def get_workflow_templates(request: web.Request) -> web.Response:
    """Node packs' example workflows, `{pack: [names]}` as ComfyUI lists its custom nodes': none, so {}. Our own
    shipped workflows are the core templates (`/templates/index.json`)."""
    return json_response({})


async def get_global_subgraphs(request: web.Request) -> web.Response:
    """Subgraph blueprints node packs ship, `{id: {name, info, data}}` in ComfyUI: we ship none, so {}."""
    return json_response({})


async def get_global_subgraph(request: web.Request) -> web.Response:
    """One blueprint: none exists, so 404 (the frontend only asks for ids /global_subgraphs listed)."""
    raise ApiError(404, "not_found", "No such subgraph", request.match_info["id"])


async def get_node_replacements(request: web.Request) -> web.Response:
    """ComfyUI's table of deprecated node types and what replaces them: we have no deprecated types, so {}."""
    return json_response({})


def _model_dirs(env: Any) -> dict[str, list[str]]:
    """Each model folder and the directories it is read from (built-in files' folders after the roots)."""
    dirs: dict[str, list[str]] = {}
    for folder in model_folders(env):
        paths = [str(path) for path in env.models.folder_dirs(folder)]
        for builtin in env.models.builtin.get(folder, {}).values():
            if str(Path(builtin).parent) not in paths:
                paths.append(str(Path(builtin).parent))
        dirs[folder] = paths
    return dirs


async def get_folder_paths(request: web.Request) -> web.Response:
    """`{folder: [directories]}` for every model folder, as ComfyUI's /internal/folder_paths."""
    return json_response(_model_dirs(request.app[STATE].engine.env))


async def get_experiment_models(request: web.Request) -> web.Response:
    """`[{name, folders}]` for every model folder, as ComfyUI's /experiment/models."""
    dirs = _model_dirs(request.app[STATE].engine.env)
    return json_response([{"name": name, "folders": paths} for name, paths in dirs.items()])


async def get_experiment_models_folder(request: web.Request) -> web.Response:
    """`[{name, pathIndex, modified, created, size}]` for one folder's files (404 for an unknown folder), as
    ComfyUI's /experiment/models/{folder}; `pathIndex` indexes that folder's list in /experiment/models."""
    env = request.app[STATE].engine.env
    folder = request.match_info["folder"]
    if folder not in model_folders(env):
        raise ApiError(404, "not_found", f"Unknown model folder {folder!r}", ", ".join(model_folders(env)))
    dirs = _model_dirs(env)[folder]

    def listing() -> list[dict[str, Any]]:
        found = []
        for name in env.models.list(folder):
            try:
                path = env.models.resolve(folder, name)
                stat = path.stat()
            except (OSError, ValueError, LookupError):
                continue
            index = next((i for i, d in enumerate(dirs) if Path(d) in path.parents), 0)
            found.append({"name": name, "pathIndex": index, "modified": stat.st_mtime, "created": stat.st_ctime,
                          "size": stat.st_size})
        return found

    return json_response(await asyncio.to_thread(listing))


async def get_view_metadata(request: web.Request) -> web.Response:
    """A .safetensors model's `__metadata__` header object (?filename=), or 404 when it has none, as ComfyUI."""
    env = request.app[STATE].engine.env
    folder, filename = request.match_info["folder"], request.query.get("filename", "")
    if folder not in model_folders(env) or not filename.endswith(".safetensors"):
        raise ApiError(404, "not_found", "No metadata", f"{folder}/{filename}")
    try:
        path = env.models.resolve(folder, filename)
    except (ValueError, LookupError, OSError):
        raise ApiError(404, "not_found", "Model not found", f"{folder}/{filename}") from None
    metadata = await asyncio.to_thread(safetensors_metadata, path)
    if metadata is None:
        raise ApiError(404, "not_found", "No metadata", f"{folder}/{filename}")
    return json_response(metadata)


def safetensors_metadata(path: Path, max_header: int = 1 << 20) -> dict[str, Any] | None:
    """The `__metadata__` object of a safetensors file's JSON header, read without loading tensors."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > max_header:
                return None
            header = jsonsafe.loads(handle.read(size))
    except (OSError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


MEDIA_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".avif", ".mp4", ".webm", ".wav",
                            ".mp3", ".flac", ".ogg"})


async def get_internal_files(request: web.Request) -> web.Response:
    """Names of the images, videos and sounds directly in input, output or temp, newest first, as ComfyUI's
    /internal/files/{type}."""
    env = request.app[STATE].engine.env
    root = folder_root(env, request.match_info["type"])

    def listing() -> list[str]:
        if not root.is_dir():
            return []
        entries = [entry for entry in os.scandir(root) if entry.is_file() and not entry.name.startswith(".")
                   and Path(entry.name).suffix.lower() in MEDIA_SUFFIXES]
        entries.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
        return [entry.name for entry in entries]

    return json_response(await asyncio.to_thread(listing))
