"""Informational routes: /object_info, /system_stats, /embeddings, /models, /features, and /free."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from typing import Any

from aiohttp import web

from .. import __version__
from ..environment import MODEL_FOLDERS
from ..models import ModelManager, host_memory
from .config import ServerConfig
from .models import FreeRequest
from .object_info import node_info, object_info
from .prompts import parse_body
from .responses import ApiError, json_response, read_json_object
from .state import STATE

COMFYUI_COMPATIBLE_VERSION = f"nodegraph-{__version__}"
"""What we answer where ComfyUI gives its version (clients only show it)."""


def features(config: ServerConfig) -> dict[str, Any]:
    """Server feature flags, for GET /features and the WebSocket's feature_flags reply."""
    return {"supports_preview_metadata": True, "max_upload_size": config.max_upload_bytes,
            "preview_format": "jpeg", "nodegraph_version": __version__}


async def get_object_info(request: web.Request) -> web.Response:
    engine = request.app[STATE].engine
    return json_response(await asyncio.to_thread(object_info, engine.registry, engine.env))


async def get_object_info_node(request: web.Request) -> web.Response:
    """One node type; `{}` for an unknown one, as ComfyUI answers."""
    engine = request.app[STATE].engine
    node_cls = engine.registry.get(request.match_info["node_class"])
    if node_cls is None:
        return json_response({})
    return json_response({node_cls.schema.type_id: await asyncio.to_thread(node_info, node_cls, engine.env)})


def memory() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    return host_memory()


def system_stats(device: str, manager: ModelManager | None = None) -> dict[str, Any]:
    ram_total, ram_free = memory()
    devices: list[dict[str, Any]] = []
    torch_version = "not installed"
    try:
        import torch

        torch_version = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(index)
                reserved = torch.cuda.memory_reserved(index)
                allocated = torch.cuda.memory_allocated(index)
                devices.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                                "index": index, "vram_total": total, "vram_free": free,
                                "torch_vram_total": reserved, "torch_vram_free": reserved - allocated})
    except ImportError:
        pass
    if not devices:  # on CPU, ComfyUI reports system RAM as the device's memory
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                        "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    return {
        "system": {"os": os.name, "platform": platform.platform(), "python_version": sys.version,
                   "embedded_python": False, "comfyui_version": COMFYUI_COMPATIBLE_VERSION,
                   "nodegraph_version": __version__, "pytorch_version": torch_version,
                   "ram_total": ram_total, "ram_free": ram_free,
                   # ComfyUI's frontend looks for manager flags in argv; the real one could hold --token.
                   "argv": ["nodegraph", "serve"]},
        "devices": devices,
        "models": manager.stats() if manager is not None else None,
    }


async def get_system_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    env = state.engine.env
    manager = getattr(env, "model_manager", None)
    stats = await asyncio.to_thread(system_stats, str(getattr(env, "device", "cpu")), manager)
    stats["workers"] = state.workers_info()
    return json_response(stats)


def model_folders(env: Any) -> list[str]:
    """ComfyUI's model folder names, then any folder only a node pack's built-in files use."""
    return list(dict.fromkeys([*MODEL_FOLDERS, *env.models.builtin]))


async def get_embeddings(request: web.Request) -> web.Response:
    env = request.app[STATE].engine.env
    names = await asyncio.to_thread(env.models.list, "embeddings")
    return json_response([os.path.splitext(name)[0] for name in names])


async def get_model_folders(request: web.Request) -> web.Response:
    return json_response(model_folders(request.app[STATE].engine.env))


async def get_models(request: web.Request) -> web.Response:
    env = request.app[STATE].engine.env
    folder = request.match_info["folder"]
    if folder not in model_folders(env):
        raise ApiError(404, "not_found", f"Unknown model folder {folder!r}", ", ".join(model_folders(env)))
    return json_response(await asyncio.to_thread(env.models.list, folder))


async def get_features(request: web.Request) -> web.Response:
    return json_response(features(request.app[STATE].config))


async def post_free(request: web.Request) -> web.Response:
    """{unload_models, free_memory}: done between prompts, never under a running one."""
    state = request.app[STATE]
    action: FreeRequest = parse_body(FreeRequest, await read_json_object(request, required=False))
    state.worker.free(action.unload_models, action.free_memory)
    return json_response({"scheduled": action.unload_models or action.free_memory})
