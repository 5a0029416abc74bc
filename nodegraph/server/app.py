"""The aiohttp application: receives an Engine, wires store, hub, worker, middlewares and routes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from aiohttp import web

from ..executor import Engine
from ..paths import remove_stale_partials
from .comfy_frontend import comfyui_static_dir
from .config import ServerConfig
from .logs import LOG_BUFFER, LogBuffer
from .openapi import get_openapi
from .queue_store import QueueStore
from .routes import Route, add_routes
from .security import json_errors, request_guard
from .state import STATE, ServerState
from .system import features
from .userdata import USER_STORE, UserStore
from .ws import WebSocketHub

log = logging.getLogger(__name__)
FRONT_ENDS = ("nodegraph", "comfyui")
"""What `--front-end` may name: our editor, or ComfyUI's frontend from the comfyui-frontend extra."""


def default_static_dir() -> Path | None:
    """The editor's files from the `frontend` package, when it is installed."""
    try:
        from frontend import STATIC_DIR
    except ImportError:
        return None
    return Path(STATIC_DIR)


def create_app(engine: Engine, config: ServerConfig | None = None) -> web.Application:
    """The server for one engine (its registry, environment and cache are shared by every prompt).

    Args:
        engine: an Engine whose `env` is an `Environment` (output/input/temp folders, model paths).
        config: listening address (for the Host guard), token, data dir, limits.
    """
    config = config or ServerConfig()
    if config.front_end not in FRONT_ENDS:
        raise ValueError(f"front_end {config.front_end!r}: expected one of {', '.join(FRONT_ENDS)}")
    if config.static_dir is None:
        static_dir = comfyui_static_dir() if config.front_end == "comfyui" else default_static_dir()
        config = dataclasses.replace(config, static_dir=static_dir)
    if engine.env is None:
        raise ValueError("the server needs an engine with an Environment (see nodegraph.app.build_engine)")
    store = QueueStore(config.database_path, durable=config.durable)
    hub = WebSocketHub(features(config))
    state = ServerState(engine, config, store, hub)
    app = web.Application(middlewares=[json_errors, request_guard(config)],
                          client_max_size=config.max_upload_bytes + (1 << 20))
    app[STATE] = state
    app[USER_STORE] = UserStore(config.user_dir)
    app[LOG_BUFFER] = LogBuffer()
    add_routes(app, extra=(Route("GET", "/openapi.json", get_openapi, "This document"),))
    app.on_startup.append(_start)
    app.on_shutdown.append(_stop)
    app.on_cleanup.append(_close)
    return app


async def _start(app: web.Application) -> None:
    state = app[STATE]
    app[LOG_BUFFER].install()
    await asyncio.to_thread(app[USER_STORE].create)
    state.hub.loop = asyncio.get_running_loop()
    requeued, failed = await state.db(state.store.recover, state.config.max_attempts)
    if requeued:
        log.warning("re-queued %d prompt(s) that were running when the server stopped: %s", len(requeued),
                    ", ".join(requeued))
    if failed:
        log.warning("marked %d prompt(s) failed after %d attempts: %s", len(failed), state.config.max_attempts,
                    ", ".join(failed))
    env = state.engine.env
    for folder in (env.output_dir, env.temp_dir):  # what outputs a killed process was writing
        removed = await asyncio.to_thread(remove_stale_partials, folder)
        if removed:
            log.warning("removed %d half-written file(s) left in %s by a stopped process", len(removed), folder)
    state.worker.start()


async def _stop(app: web.Application) -> None:
    state = app[STATE]
    await state.worker.stop()
    await state.hub.close_all()


async def _close(app: web.Application) -> None:
    app[LOG_BUFFER].remove()
    app[STATE].close()


def run_server(engine: Engine, config: ServerConfig, *, access_log: bool = False) -> None:
    """Serve until SIGINT/SIGTERM; a running prompt is stopped and goes back to the queue."""
    app = create_app(engine, config)
    url_host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"nodegraph: serving on http://{url_host}:{config.port} (data in {config.data_dir})", flush=True)
    if not config.loopback_only and not config.token:
        log.warning("listening on %s without --token: anyone who can reach this port can run workflows", config.host)
    web.run_app(app, host=config.host, port=config.port, print=None, shutdown_timeout=15,
                access_log=logging.getLogger("aiohttp.access") if access_log else None)
