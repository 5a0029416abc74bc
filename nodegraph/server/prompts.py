"""Prompt routes: /prompt, /queue, /history, /interrupt, /ws, in ComfyUI's shapes."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import ValidationFailed
from ..registry import NodeRegistry
from ..workflow import Workflow, WorkflowFormatError
from .models import ClearOrDelete, InterruptRequest, PromptRequest
from .queue_store import DuplicatePrompt
from .responses import ApiError, json_response, read_json, read_json_object
from .state import STATE, ServerState
from .submit import (build_workflow, check_prompt, clean_extra_data, invalid_prompt, unsafe_values,
                     validation_error_body)


def _pydantic_details(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()[:10])


def parse_body(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", "Invalid request body", _pydantic_details(exc)) from None


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


async def post_prompt(request: web.Request) -> web.Response:
    """Validate at once (errors come back in the 400), then queue; the worker runs it in order."""
    state: ServerState = request.app[STATE]
    try:
        body = await read_json(request, check_values=False)  # checked below, naming node and input
    except ApiError as exc:
        raise ApiError(400, "invalid_prompt", exc.message, body=invalid_prompt(exc.message, exc.details)) from None
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "too_large", "Request body too large",
                       body=invalid_prompt("Request body too large", exc.text or "", type="too_large")) from None
    if not isinstance(body, dict) or "prompt" not in body:
        raise ApiError(400, "no_prompt", "No prompt provided",
                       body=invalid_prompt("No prompt provided", "No prompt provided", type="no_prompt"))
    try:
        submitted = PromptRequest.model_validate(body)
    except ValidationError as exc:
        details = _pydantic_details(exc)
        raise ApiError(400, "invalid_prompt", "Invalid prompt",
                       body=invalid_prompt("Invalid prompt", details)) from None
    registry = state.engine.registry
    client_id = submitted.client_id
    if client_id is None and isinstance(submitted.extra_data.get("client_id"), str):
        client_id = submitted.extra_data["client_id"]  # older scripts put it there; ComfyUI honours it
    extra_data = clean_extra_data(submitted.extra_data, client_id)
    try:
        workflow = build_workflow(submitted.prompt, extra_data, registry)
        refuse_unsafe_values(body, workflow, registry)
        loop = asyncio.get_running_loop()
        graph = await loop.run_in_executor(None, check_prompt, submitted.prompt, workflow, registry,
                                           lambda w: state.compile(w, submitted.partial_execution_targets))
    except WorkflowFormatError as exc:
        raise ApiError(400, "invalid_prompt", str(exc), body=invalid_prompt("Invalid prompt", str(exc))) from None
    except ValidationFailed as exc:
        raise ApiError(400, "prompt_outputs_failed_validation", "invalid prompt",
                       body=validation_error_body(exc.issues, workflow, registry)) from None
    prompt_id = submitted.prompt_id or str(uuid.uuid4())
    extra_data["create_time"] = int(time.time() * 1000)  # as ComfyUI stamps it: /jobs orders by it
    try:
        number, remaining = await state.db(state.store.add, prompt_id, submitted.prompt, extra_data,
                                           list(graph.outputs), client_id=client_id,
                                           front=submitted.front, number=submitted.number)
    except DuplicatePrompt as exc:
        raise ApiError(400, "invalid_prompt", str(exc), body=invalid_prompt("Duplicate prompt_id", str(exc))) from None
    state.worker.wake()
    state.broadcast_status(remaining)
    return json_response({"prompt_id": prompt_id, "number": _number(number), "node_errors": {}})


def refuse_unsafe_values(body: dict[str, Any], workflow: Workflow, registry: NodeRegistry) -> None:
    """NaN, ±Infinity and lone surrogates anywhere in the body: a 400 naming node and input where they sit in
    a node, the path otherwise. Before compiling: they would collide with null in the plan memo, or break it."""
    issues, general = unsafe_values(body, workflow)
    if issues:
        raise ApiError(400, "prompt_outputs_failed_validation", "invalid prompt",
                       body=validation_error_body(issues, workflow, registry))
    if general:
        raise ApiError(400, "invalid_prompt", "Invalid prompt",
                       body=invalid_prompt("Invalid prompt: a value JSON cannot carry", "; ".join(general)))


async def get_prompt(request: web.Request) -> web.Response:
    state = request.app[STATE]
    remaining = await state.db(state.store.remaining)
    return json_response({"exec_info": {"queue_remaining": remaining}})


async def get_queue(request: web.Request) -> web.Response:
    state = request.app[STATE]
    running, pending = await state.db(state.store.queue)
    return json_response({"queue_running": [item.as_comfy() for item in running],
                          "queue_pending": [item.as_comfy() for item in pending]})


async def _clear_or_delete(state: Any, action: ClearOrDelete, remove: Any) -> int:
    """ComfyUI's {clear: true} / {delete: [ids]} body, for the queue and the history alike."""
    deleted = 0
    if action.clear:
        deleted += await state.db(remove, None)
    if action.delete:
        deleted += await state.db(remove, action.delete)
    return deleted


async def post_queue(request: web.Request) -> web.Response:
    """{clear: true} empties the queue, {delete: [ids]} removes those; the running prompt is not touched."""
    state = request.app[STATE]
    action: ClearOrDelete = parse_body(ClearOrDelete, await read_json_object(request, required=False))
    deleted = await _clear_or_delete(state, action, state.store.delete_pending)
    state.broadcast_status(await state.db(state.store.remaining))
    return json_response({"deleted": deleted})


QUERY_INT_LIMIT = 2**62
"""Paging numbers are clamped to this: SQLite's integers are 64-bit."""


def int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an integer", raw) from None
    if name == "max_items" and value < 0:
        raise ApiError(400, "invalid_request", "max_items must not be negative", raw)
    return max(-QUERY_INT_LIMIT, min(value, QUERY_INT_LIMIT))  # as Python's slicing would: huge means all


async def get_history(request: web.Request) -> web.Response:
    """?max_items=N (the last N), ?offset=K (N from position K, oldest first)."""
    state = request.app[STATE]
    max_items = int_query(request, "max_items")
    offset = int_query(request, "offset")
    history = await state.db(state.store.history, max_items, -1 if offset is None else offset)
    return json_response(history)


async def get_history_item(request: web.Request) -> web.Response:
    state = request.app[STATE]
    prompt_id = request.match_info["prompt_id"]
    entry = await state.db(state.store.history_item, prompt_id)
    return json_response({} if entry is None else {prompt_id: entry})


async def post_history(request: web.Request) -> web.Response:
    state = request.app[STATE]
    action: ClearOrDelete = parse_body(ClearOrDelete, await read_json_object(request, required=False))
    deleted = await _clear_or_delete(state, action, state.store.delete_history)
    return json_response({"deleted": deleted})


async def post_interrupt(request: web.Request) -> web.Response:
    """Stop the running prompt at its next check; with `prompt_id`, only if that one is running."""
    state = request.app[STATE]
    action: InterruptRequest = parse_body(InterruptRequest, await read_json_object(request, required=False))
    return json_response({"interrupted": state.worker.interrupt(action.prompt_id)})


async def websocket(request: web.Request) -> web.StreamResponse:
    """GET /ws?clientId=...[&previews=1]: status on connect, then this client's prompt events."""
    state: ServerState = request.app[STATE]
    remaining = await state.db(state.store.remaining)

    def greeting(sid: str) -> list[tuple[str, dict[str, Any]]]:
        messages: list[tuple[str, dict[str, Any]]] = [("status", {**state.status_data(remaining), "sid": sid})]
        current = state.worker.current_node(sid)
        if current is not None:  # a reconnecting client learns where its prompt is
            prompt_id, node_id = current
            messages.append(("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}))
        return messages

    return await state.hub.handle(request, greeting)
