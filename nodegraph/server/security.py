"""Middlewares that keep a local server local: JSON errors, DNS-rebinding and cross-origin guards, the token.

A browser lets any web page send POSTs to 127.0.0.1 (ComfyUI's origin check exists for that) and a DNS name
that rebinds to 127.0.0.1 makes the page same-origin with us; so state-changing requests from another
origin are refused, and a loopback-bound server answers only to loopback Host names.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .config import ServerConfig, is_loopback_name
from .responses import ApiError, error_response, json_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TOKEN_COOKIE = "nodegraph_token"
_ENCODED_TRICKS = re.compile(r"%(2f|5c|00|25|2e)", re.IGNORECASE)
"""Encoded separators, NUL, dots and `%25` (a double encoding) have no business in a raw path."""
_USER_FILE_PATH = re.compile(r"^(/api)?/userdata/[^/]")
_ENCODED_TRICKS_BUT_SLASH = re.compile(r"%(5c|00|25|2e)", re.IGNORECASE)
"""On /userdata/{file} routes ComfyUI's frontend sends folders as `%2F` inside one segment; userdata.py resolves
each decoded name inside the user's folder. Every other encoded trick is refused there too."""


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON; nothing a client sends can take the server down."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.payload(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        response = error_response(exc.status, kind, exc.reason or "error", exc.text or "")
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception as exc:  # a bug of ours: logged with its traceback, answered in one line
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "server_error", "Internal server error", f"{type(exc).__name__}: {exc}")


def request_guard(config: ServerConfig) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Host (DNS rebinding), Origin (cross-site requests), encoded-path and token checks, in that order."""

    token = config.token.encode() if config.token else None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host_header = request.headers.get("Host")
        if config.loopback_only and host_header is not None and not is_loopback_name(_hostname(host_header)):
            raise ApiError(403, "forbidden_host", "Host not allowed",
                           f"this server is bound to {config.host}; use localhost or 127.0.0.1 "
                           "(start it with --listen to expose it)")
        if request.method in UNSAFE_METHODS or _is_websocket(request):
            _check_origin(request, host_header)
        raw_path = request.raw_path.split("?", 1)[0]
        tricks = _ENCODED_TRICKS_BUT_SLASH if _USER_FILE_PATH.match(raw_path) else _ENCODED_TRICKS
        if tricks.search(raw_path) or "\\" in raw_path:
            raise ApiError(400, "invalid_path", "Encoded separators, dots or NUL bytes are not allowed in paths")
        if token is not None and not _authorised(request, token):
            raise ApiError(401, "unauthorized", "Missing or wrong token",
                           "send 'Authorization: Bearer <token>' (or ?token= on GET and WebSocket requests)")
        response = await handler(request)
        if (token is not None and request.method == "GET" and "token" in request.query
                and not response.prepared and request.path in ("/", "/index.html")):
            # A browser opened /?token=...: remember it for the editor's own requests (same-site only).
            response.set_cookie(TOKEN_COOKIE, config.token or "", httponly=True, samesite="Strict")
        return response

    return guard


def _hostname(host_header: str) -> str | None:
    try:
        return urlsplit("//" + host_header).hostname
    except ValueError:
        return None


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _check_origin(request: web.Request, host_header: str | None) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser's cross-origin request (browsers always send Origin on those)
    if origin.strip().lower() == "null":
        raise ApiError(403, "forbidden_origin", "Requests from an opaque origin (Origin: null) are refused")
    try:
        parsed = urlsplit(origin)
        origin_host, origin_port = parsed.hostname, parsed.port or _default_port(parsed.scheme)
        target = urlsplit("//" + (host_header or ""))
        host, port = target.hostname, target.port
    except ValueError:
        raise ApiError(403, "forbidden_origin", "Malformed Origin or Host header") from None
    # A Host without a port (behind a TLS proxy) cannot tell the port: the host names must match then.
    if not origin_host or origin_host != host or (port is not None and origin_port != port):
        raise ApiError(403, "forbidden_origin", "Cross-origin request refused",
                       f"Origin {origin!r} does not match Host {host_header!r}")
    # With a port, the scheme tells origins apart too (https://127.0.0.1:8188 is not us on http).
    scheme = _WEB_SCHEMES.get(parsed.scheme.lower())
    if port is not None and scheme != _request_scheme(request):
        raise ApiError(403, "forbidden_origin", "Cross-origin request refused",
                       f"Origin {origin!r} is not {_request_scheme(request)}:// like this server")


_WEB_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


def _request_scheme(request: web.Request) -> str:
    """http or https as the browser sees us: a TLS proxy in front says so in X-Forwarded-Proto (which a
    cross-site page cannot set without a CORS preflight, which we never grant)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return _WEB_SCHEMES.get(forwarded) or request.scheme


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)


def _authorised(request: web.Request, token: bytes) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    candidates: list[str] = []
    if scheme.lower() == "bearer":
        candidates.append(value.strip())
    elif scheme.lower() == "basic":  # clients that only know user:password send the token as the password
        try:
            candidates.append(base64.b64decode(value.strip(), validate=True).decode().partition(":")[2])
        except (binascii.Error, UnicodeDecodeError):
            pass
    if request.method in ("GET", "HEAD") and "token" in request.query:
        candidates.append(request.query["token"])
    cookie = request.cookies.get(TOKEN_COOKIE)
    if cookie:
        candidates.append(cookie)
    return any(hmac.compare_digest(candidate.encode(), token) for candidate in candidates)
