"""GET /openapi.json: the route table with request and response bodies taken from the pydantic models."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .models import ApiNode, ErrorResponse
from .responses import json_response
from .routes import ROUTES, STATIC_ROUTES, Route

REF = "#/components/schemas/{model}"
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "max_items": {"type": "integer", "minimum": 0}, "offset": {"type": "integer"},
    "type": {"enum": ["output", "input", "temp"]}, "channel": {"enum": ["rgba", "rgb", "a"]},
    "preview": {"type": "string", "pattern": "^(webp|jpeg|jpg)(;[0-9]{1,3})?$"},
    "limit": {"type": "integer", "minimum": 0}, "recurse": {"enum": ["true", "false"]},
    "full_info": {"enum": ["true", "false"]}, "split": {"enum": ["true", "false"]},
    "overwrite": {"enum": ["true", "false"]}, "sort_order": {"enum": ["asc", "desc"]},
    "sort_by": {"enum": ["created_at", "execution_duration"]},
}
"""Query parameters other than plain strings."""
WS_EVENTS = ("status", "execution_start", "execution_cached", "executing", "progress", "executed",
             "execution_success", "execution_error", "execution_interrupted", "nodegraph.progress")


def _models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorResponse": ErrorResponse, "ApiNode": ApiNode}
    for route in ROUTES:
        for model in (route.request, route.response, *route.errors.values()):
            if isinstance(model, type) and issubclass(model, BaseModel):
                found[model.__name__] = model
    return list(found.values())


def _content(model: type[BaseModel] | str | None) -> dict[str, Any]:
    if model is None:
        return {}
    if model == "binary":
        return {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    if model == "file":
        return {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
    if model == "any":
        return {"content": {"application/json": {"schema": {}}}}
    schema = {"type": model} if isinstance(model, str) else {"$ref": REF.format(model=model.__name__)}
    return {"content": {"application/json": {"schema": schema}}}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary, "operationId": _operation_id(route)}
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)(?::[^}]*)?}", route.path)]
    parameters += [{"name": name, "in": "query", "required": name == "filename",
                    "schema": QUERY_SCHEMAS.get(name, {"type": "string"})} for name in route.query]
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        operation["requestBody"] = {"required": route.path == "/prompt", **_content(route.request)}
    elif route.multipart:
        properties = {name: ({"type": "string", "format": "binary"} if name == "image" else {"type": "string"})
                      for name in route.multipart}
        operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "properties": properties, "required": ["image"]}}}}
    if route.path == "/ws":
        operation["description"] = ("Upgrade to a WebSocket. Text frames are {type, data} with type one of "
                                    + ", ".join(WS_EVENTS) + " (nodegraph.* only with ?nodegraph_events=1 or a feature_flags message with "
                                    "nodegraph_events: true). With ?previews=1 (or a feature_flags message with "
                                    "supports_preview_metadata) binary frames carry previews: uint32 BE event type 1, "
                                    "uint32 BE format 1 (JPEG), then the JPEG bytes.")
        operation["responses"] = {"101": {"description": "Switching protocols"},
                                  "400": {"description": "Not a WebSocket upgrade", **_content(ErrorResponse)}}
        return operation
    responses: dict[str, Any] = {str(route.ok_status): {"description": "OK", **_content(route.response)}}
    for status, model in route.errors.items():
        responses[str(status)] = {"description": "Error", **_content(model)}
    responses.setdefault("400", {"description": "Bad request", **_content(ErrorResponse)})
    operation["responses"] = responses
    return operation


def _operation_id(route: Route) -> str:
    return route.method.lower() + (re.sub(r"\W+", "_", openapi_path(route.path)).rstrip("_") or "_root")


def openapi_path(path: str) -> str:
    """aiohttp's `/{path:.+}` as OpenAPI writes it, `/{path}`."""
    return re.sub(r"{(\w+):[^}]*}", r"{\1}", path)


def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema([(model, "validation") for model in _models()], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    for route in STATIC_ROUTES:  # not under /api
        paths[openapi_path(route.path)] = {"servers": [{"url": "/"}], route.method.lower(): _operation(route)}
    paths["/openapi.json"] = {"get": {"summary": "This document", "operationId": "get_openapi",
                                      "responses": {"200": {"description": "OK", **_content("object")}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "nodegraph server", "version": __version__,
                 "description": "ComfyUI-compatible HTTP and WebSocket API of nodegraph. Every route is also "
                                "mounted under /api. With --token, send 'Authorization: Bearer <token>'."},
        "servers": [{"url": "/"}, {"url": "/api"}],
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
