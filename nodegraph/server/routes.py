"""The route table: mounted at / and under /api (as ComfyUI does), and described by /openapi.json."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from . import files, prompts, system
from .models import (ClearOrDelete, ErrorResponse, FreeRequest, HistoryEntry, InterruptRequest, ObjectInfoNode,
                     PromptErrorResponse, PromptInfo, PromptRequest, PromptResponse, QueueResponse, SystemStats,
                     UploadResponse)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | str | None = None
    """A model, or a JSON-schema type name ("array", "object") for free-form answers."""
    errors: dict[int, type[BaseModel]] = field(default_factory=dict)
    multipart: tuple[str, ...] = ()
    query: tuple[str, ...] = ()


UPLOAD_ERRORS: dict[int, type[BaseModel]] = {400: ErrorResponse, 403: ErrorResponse, 409: ErrorResponse,
                                             413: ErrorResponse}
"""A bad name or image, a name whose symlink points out, a name held by a folder, too many bytes or pixels."""

ROUTES: tuple[Route, ...] = (
    Route("POST", "/prompt", prompts.post_prompt, "Validate and queue a prompt", PromptRequest, PromptResponse,
          {400: PromptErrorResponse, 413: PromptErrorResponse}),
    Route("GET", "/prompt", prompts.get_prompt, "Prompts pending or running", response=PromptInfo),
    Route("GET", "/queue", prompts.get_queue, "The running and pending prompts", response=QueueResponse),
    Route("POST", "/queue", prompts.post_queue, "Clear the queue or delete pending prompts", ClearOrDelete, "object"),
    Route("GET", "/history", prompts.get_history, "Finished prompts, oldest first", response="object",
          query=("max_items", "offset")),
    Route("GET", "/history/{prompt_id}", prompts.get_history_item, "One finished prompt ({} if unknown)",
          response=HistoryEntry),
    Route("POST", "/history", prompts.post_history, "Clear the history or delete entries", ClearOrDelete, "object"),
    Route("POST", "/interrupt", prompts.post_interrupt, "Stop the running prompt", InterruptRequest, "object"),
    Route("GET", "/view", files.view, "A file from output, input or temp", response="binary",
          errors={400: ErrorResponse, 403: ErrorResponse, 404: ErrorResponse},
          query=("filename", "subfolder", "type", "preview", "channel")),
    Route("POST", "/upload/image", files.upload_image, "Upload an image (multipart)", response=UploadResponse,
          errors=UPLOAD_ERRORS, multipart=("image", "type", "subfolder", "overwrite")),
    Route("POST", "/upload/mask", files.upload_mask, "Apply a mask's alpha to an image (multipart)",
          response=UploadResponse, errors={**UPLOAD_ERRORS, 404: ErrorResponse},
          multipart=("image", "original_ref", "type", "subfolder", "overwrite")),
    Route("GET", "/object_info", system.get_object_info, "Every node type, from its declaration", response="object"),
    Route("GET", "/object_info/{node_class}", system.get_object_info_node, "One node type", response=ObjectInfoNode),
    Route("GET", "/system_stats", system.get_system_stats, "System and device memory", response=SystemStats),
    Route("GET", "/embeddings", system.get_embeddings, "Textual inversion names", response="array"),
    Route("GET", "/models", system.get_model_folders, "Model folder names", response="array"),
    Route("GET", "/models/{folder}", system.get_models, "Files in one model folder", response="array",
          errors={404: ErrorResponse}),
    Route("GET", "/features", system.get_features, "Server feature flags", response="object"),
    Route("POST", "/free", system.post_free, "Free cached outputs and loaded models", FreeRequest, "object"),
    Route("GET", "/ws", prompts.websocket, "WebSocket of events (?clientId=, ?previews=1, ?token=)",
          errors={400: ErrorResponse}),
)

STATIC_ROUTES: tuple[Route, ...] = (
    Route("GET", "/", files.static_file, "The editor (index.html); a JSON note of what this is when none is installed",
          response="file"),
    Route("GET", "/{path:.+}", files.static_file, "The editor's files (a path, slashes allowed); API routes win",
          response="file", errors={404: ErrorResponse}),
)
"""Mounted at / only, after the API: every API route wins over a file name."""


def add_routes(app: web.Application, extra: tuple[Route, ...] = ()) -> None:
    for prefix in ("", "/api"):
        for route in (*ROUTES, *extra):
            if route.method == "GET":
                app.router.add_get(prefix + route.path, route.handler)  # HEAD too
            else:
                app.router.add_route(route.method, prefix + route.path, route.handler)
    for route in STATIC_ROUTES:
        app.router.add_get(route.path, route.handler)
