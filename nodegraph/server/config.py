"""Server settings: where it listens, who may talk to it, where it keeps its queue and uploads."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8188
"""ComfyUI's port, so existing clients find us without changes."""


@dataclass
class ServerConfig:
    """How `nodegraph serve` runs.

    Args:
        host: the address to bind; a loopback one also turns on the DNS-rebinding guard.
        port: the TCP port (0 picks a free one).
        token: when set, every request needs `Authorization: Bearer <token>` (or `?token=` on GETs).
        data_dir: the SQLite queue/history lives here.
        max_upload_bytes: the largest accepted upload (and request body).
        max_upload_pixels: the most pixels an uploaded image may have (read from its header, before decoding).
        max_attempts: how often a prompt may be started; one that was running when the process died is
            re-queued until it has been started this many times, then marked failed.
        static_dir: the editor's files; None means the chosen front end's (see `front_end`).
        front_end: "nodegraph" (our editor, the `frontend` package) or "comfyui" (the installed
            `comfyui-frontend-package`); the API is the same for both.
        batch_prompts: the in-process worker runs up to this many queued prompts of one shape side by side,
            stacking their sampler calls (1: one prompt at a time).
        ray: run prompts on Ray worker actors (`ray_pool.RaySettings`) instead of in this process.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    data_dir: Path = Path("nodegraph-data")
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_pixels: int = 64_000_000
    max_attempts: int = 2
    static_dir: Path | None = None
    durable: bool = True
    """fsync every queue change (see `QueueStore`)."""
    front_end: str = "nodegraph"
    batch_prompts: int = 1
    ray: Any = None

    @property
    def user_dir(self) -> Path:
        """ComfyUI's `user/` folder: one sub-folder per user ("default" here) holds settings and saved workflows,
        shared by both front ends."""
        return Path(self.data_dir) / "user"

    @property
    def database_path(self) -> Path:
        return Path(self.data_dir) / "queue.sqlite3"

    @property
    def loopback_only(self) -> bool:
        """Bound to a loopback address: requests must then name a loopback Host (DNS rebinding)."""
        return is_loopback_name(self.host)


def is_loopback_name(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (brackets allowed); never resolves names through DNS."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
