"""nodegraph's HTTP/WebSocket server: ComfyUI's API over an injected Engine (the engine never imports this)."""

from .app import create_app, run_server
from .config import ServerConfig
from .queue_store import QueueStore

__all__ = ["QueueStore", "ServerConfig", "create_app", "run_server"]
