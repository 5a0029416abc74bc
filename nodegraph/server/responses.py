"""JSON responses and errors: every error leaves the server as `{"error": {type, message, details, extra_info}}`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import jsonsafe


class ApiError(Exception):
    """Raised by a handler; the error middleware turns it into a JSON response with `status`."""

    def __init__(self, status: int, type: str, message: str, details: str = "",
                 extra_info: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.details = details
        self.extra_info = extra_info or {}
        self.body = body
        """A complete body to send instead of the default shape (e.g. /prompt's with node_errors)."""

    def payload(self) -> dict[str, Any]:
        if self.body is not None:
            return self.body
        return {"error": error_object(self.type, self.message, self.details, self.extra_info)}


def error_object(type: str, message: str, details: str = "",
                 extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": type, "message": message, "details": details, "extra_info": extra_info or {}}


def dumps(value: Any) -> str:
    """JSON for anything a node may put in its `ui` (numpy scalars, paths): unknown types become strings,
    NaN and Infinity null, so a browser can always parse what we send."""
    return jsonsafe.dumps(value)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(value, status=status, headers=headers, dumps=dumps)


def error_response(status: int, type: str, message: str, details: str = "") -> web.Response:
    return json_response({"error": error_object(type, message, details)}, status=status)


async def read_json(request: web.Request, *, required: bool = True, check_values: bool = True) -> Any:
    """The body as JSON whatever its content type (ComfyUI's clients do not always set one), nested at most
    `jsonsafe.MAX_DEPTH` levels; with `check_values`, NaN, Infinity and lone surrogates are refused too."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_request", "Request body is empty", "send a JSON object")
        return {}
    try:
        data = jsonsafe.loads(raw)
    except jsonsafe.JsonRefused as exc:
        raise ApiError(400, "invalid_request", "Request body is not valid JSON", str(exc)) from None
    if check_values:
        refuse_unsafe_values(data)
    return data


def refuse_unsafe_values(data: Any) -> None:
    """400 naming where a decoded body holds a value JSON cannot carry (NaN, ±Infinity, a lone surrogate)."""
    problems = jsonsafe.find_problems(data)
    if problems:
        raise ApiError(400, "invalid_request", "Request body holds values JSON cannot carry",
                       "; ".join(f"{jsonsafe.show_path(path)}: {problem}" for path, problem in problems))


async def read_json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    data = await read_json(request, required=required)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "Request body must be a JSON object", f"got {type(data).__name__}")
    return data
