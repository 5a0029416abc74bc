"""POST /nodegraph/workflow/convert: the editor's bridge to the one workflow converter (nodegraph/formats).

The editor saves workflows to the user-data store in ComfyUI's UI format, so a file saved here opens in ComfyUI's
editor and the other way round. Converting on the server keeps one converter for `nodegraph run`, SaveImage's PNG
chunks and the editor, with the same fidelity: editor-only nodes (Notes, Reroutes, PrimitiveNodes), groups and
link colours survive a UI -> native -> UI round trip.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..formats import to_workflow, ui_from_native
from ..formats.api import to_api
from ..workflow import WorkflowFormatError, dump_workflow
from .responses import ApiError, json_response, read_json_object
from .state import STATE

TARGETS = ("native", "ui", "api")
"""What a workflow can be converted to: our format, ComfyUI's UI format, ComfyUI's API prompt."""


def convert(data: Any, target: str, registry: Any) -> dict[str, Any]:
    """A workflow of any supported format as `target` ("native", "ui" or "api")."""
    workflow = to_workflow(data, registry, "workflow")
    if target == "native":
        return dump_workflow(workflow)
    if target == "ui":
        return ui_from_native(workflow, registry)
    return to_api(workflow, registry)


async def post_convert(request: web.Request) -> web.Response:
    """Body `{"workflow": <any format>, "to": "native" | "ui" | "api"}`; answers the converted workflow."""
    body = await read_json_object(request)
    target = body.get("to")
    if target not in TARGETS:
        raise ApiError(400, "invalid_request", f"'to' must be one of {', '.join(TARGETS)}", repr(target)[:80])
    if "workflow" not in body:
        raise ApiError(400, "invalid_request", "No 'workflow' in the body", "send {workflow, to}")
    registry = request.app[STATE].engine.registry
    try:
        converted = await asyncio.to_thread(convert, body["workflow"], target, registry)
    except WorkflowFormatError as exc:
        raise ApiError(400, "invalid_workflow", "Not a workflow this server reads", str(exc)) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # The exporters trust the shapes our importers keep; a hand-made native file may break them.
        raise ApiError(400, "invalid_workflow", f"Could not convert the workflow to {target}",
                       f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return json_response(converted)
