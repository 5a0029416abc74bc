"""The route table: mounted at / and under /api (as ComfyUI does), and described by /openapi.json."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from . import comfy_frontend, convert, files, jobs, logs, prompts, system, templates, userdata
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
    request: type[BaseModel] | str | None = None
    """A model, a JSON-schema type name, "any" (any JSON value) or "binary" (raw bytes)."""
    response: type[BaseModel] | str | None = None
    """A model, or a JSON-schema type name ("array", "object") for free-form answers."""
    errors: dict[int, type[BaseModel]] = field(default_factory=dict)
    multipart: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    ok_status: int = 200


UPLOAD_ERRORS: dict[int, type[BaseModel]] = {400: ErrorResponse, 403: ErrorResponse, 409: ErrorResponse,
                                             413: ErrorResponse}
"""A bad name or image, a name whose symlink points out, a name held by a folder, too many bytes or pixels."""

NOT_FOUND: dict[int, type[BaseModel]] = {404: ErrorResponse}
USER_PATH_ERRORS: dict[int, type[BaseModel]] = {400: ErrorResponse, 403: ErrorResponse, 404: ErrorResponse,
                                                409: ErrorResponse}
"""A malformed user file name, one that resolves outside the user's folder, a missing file, a name in use."""

USER_ROUTES: tuple[Route, ...] = (
    Route("GET", "/users", userdata.get_users, "Where settings are stored (one user)", response="object"),
    Route("GET", "/settings", userdata.get_settings, "Every frontend setting", response="object"),
    Route("POST", "/settings", userdata.post_settings, "Merge settings", "object"),
    Route("GET", "/settings/{id}", userdata.get_setting, "One setting (null when unset)", response="any"),
    Route("POST", "/settings/{id}", userdata.post_setting, "Store one setting (any JSON value)", "any"),
    Route("GET", "/userdata", userdata.list_userdata, "Files under a folder of the user's data",
          response="array", errors=USER_PATH_ERRORS, query=("dir", "recurse", "full_info", "split")),
    Route("GET", "/v2/userdata", userdata.list_userdata_v2, "Folders and files under a path of the user's data",
          response="array", errors=USER_PATH_ERRORS, query=("path",)),
    Route("GET", "/userdata/{file}", userdata.get_userdata, "One user file (folders as %2F)", response="binary",
          errors=USER_PATH_ERRORS),
    Route("POST", "/userdata/{file}", userdata.post_userdata, "Write a user file (the raw body)", "binary", "any",
          USER_PATH_ERRORS, query=("overwrite", "full_info")),
    Route("DELETE", "/userdata/{file}", userdata.delete_userdata, "Delete a user file", errors=USER_PATH_ERRORS,
          ok_status=204),
    Route("POST", "/userdata/{file}/move/{dest}", userdata.move_userdata, "Move or rename a user file",
          response="any", errors=USER_PATH_ERRORS, query=("overwrite", "full_info")),
)
"""ComfyUI's per-user store (userdata.py), shared by both front ends."""

FRONTEND_ROUTES: tuple[Route, ...] = (
    Route("GET", "/extensions", comfy_frontend.get_extensions, "The front end's extension scripts", response="array"),
    Route("GET", "/i18n", comfy_frontend.get_i18n, "Node packs' translations", response="object"),
    Route("GET", "/workflow_templates", comfy_frontend.get_workflow_templates, "Node packs' example workflows",
          response="object"),
    Route("GET", "/templates/{file}", templates.get_template,
          "Shipped workflows as templates: index.json, NAME.json, NAME-1.png", response="binary", errors=NOT_FOUND),
    Route("GET", "/global_subgraphs", comfy_frontend.get_global_subgraphs, "Subgraph blueprints", response="object"),
    Route("GET", "/global_subgraphs/{id}", comfy_frontend.get_global_subgraph, "One subgraph blueprint",
          response="object", errors=NOT_FOUND),
    Route("GET", "/node_replacements", comfy_frontend.get_node_replacements, "Replacements of deprecated node types",
          response="object"),
    Route("GET", "/experiment/models", comfy_frontend.get_experiment_models, "Model folders and their directories",
          response="array"),
    Route("GET", "/experiment/models/{folder}", comfy_frontend.get_experiment_models_folder,
          "One model folder's files with sizes and times", response="array", errors=NOT_FOUND),
    Route("GET", "/view_metadata/{folder}", comfy_frontend.get_view_metadata, "A safetensors model's metadata",
          response="object", errors=NOT_FOUND, query=("filename",)),
    Route("GET", "/internal/folder_paths", comfy_frontend.get_folder_paths, "Model folders' directories",
          response="object"),
    Route("GET", "/internal/files/{type}", comfy_frontend.get_internal_files,
          "Media files in input, output or temp, newest first", response="array"),
    Route("GET", "/internal/logs", logs.get_logs, "The recent server log as text", response="string"),
    Route("GET", "/internal/logs/raw", logs.get_logs_raw, "The recent server log as entries", response="object"),
    Route("PATCH", "/internal/logs/subscribe", logs.patch_logs_subscribe, "Log streaming (not offered)", "object",
          "object"),
    Route("GET", "/jobs", jobs.get_jobs, "Queued, running and finished prompts as jobs", response="object",
          query=("status", "workflow_id", "sort_by", "sort_order", "limit", "offset")),
    Route("GET", "/jobs/{job_id}", jobs.get_job, "One job with its outputs", response="object", errors=NOT_FOUND),
    Route("POST", "/jobs/{job_id}/cancel", jobs.post_cancel_job, "Cancel one job", response="object"),
    Route("POST", "/jobs/cancel", jobs.post_cancel_jobs, "Cancel jobs ({job_ids})", "object", "object"),
)
"""What ComfyUI's own frontend calls besides the classic API (comfy_frontend.py, templates.py, jobs.py, logs.py)."""

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
    Route("GET", "/ws", prompts.websocket,
          "WebSocket of events (?clientId=, ?previews=1, ?nodegraph_events=1, ?token=)", errors={400: ErrorResponse}),
    Route("POST", "/nodegraph/workflow/convert", convert.post_convert,
          "Convert a workflow ({workflow, to}: native, ui or api)", "object", "object", {400: ErrorResponse}),
    *USER_ROUTES,
    *FRONTEND_ROUTES,
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
