"""Lifecycle hooks: how the CLI, the server and tests watch a run without the engine knowing them.

Subclass `Hooks` and override what you need (Hamilton's lifecycle adapters, k-diffusion's
sampler callback). A hook that raises is logged and ignored: watching must never break a run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    run_id: str
    outputs: list[str]
    order: list[str] = field(default_factory=list)
    """Every node of the run that is executed or taken from the cache, in order."""
    cached: list[str] = field(default_factory=list)
    execute: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    """Nodes of `execute` keyed only at run time (a linked value feeds their fingerprint): one found in the
    cache then ends with `node_end(cached=True)` instead of running."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the caller attached to the run, e.g. the prompt and workflow that SaveImage embeds in PNGs."""


@dataclass(frozen=True)
class NodeErrorInfo:
    node_id: str
    node_type: str
    exception_type: str
    exception_message: str
    traceback: str


class Hooks:
    def run_start(self, run: RunInfo) -> None: ...

    def node_start(self, run: RunInfo, node_id: str, node_type: str) -> None: ...

    def node_end(self, run: RunInfo, node_id: str, node_type: str, *, cached: bool, ui: dict[str, Any],
                 seconds: float) -> None: ...

    def progress(self, run: RunInfo, node_id: str, value: int, total: int, preview: Any = None) -> None: ...

    def node_error(self, run: RunInfo, error: NodeErrorInfo) -> None: ...

    def run_end(self, run: RunInfo, status: str, error: BaseException | None = None) -> None:
        """`status` is "success", "error" or "interrupted"."""


class HookSet(Hooks):
    """Fans every event out to several hooks, isolating their failures."""

    def __init__(self, hooks: Iterable[Hooks] = ()) -> None:
        self.hooks = [hook for hook in hooks if hook is not None]

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args, **kwargs)
            except Exception:
                log.exception("hook %s.%s failed", type(hook).__name__, name)

    def run_start(self, run: RunInfo) -> None:
        self._call("run_start", run)

    def node_start(self, run: RunInfo, node_id: str, node_type: str) -> None:
        self._call("node_start", run, node_id, node_type)

    def node_end(self, run: RunInfo, node_id: str, node_type: str, *, cached: bool, ui: dict[str, Any],
                 seconds: float) -> None:
        self._call("node_end", run, node_id, node_type, cached=cached, ui=ui, seconds=seconds)

    def progress(self, run: RunInfo, node_id: str, value: int, total: int, preview: Any = None) -> None:
        self._call("progress", run, node_id, value, total, preview)

    def node_error(self, run: RunInfo, error: NodeErrorInfo) -> None:
        self._call("node_error", run, error)

    def run_end(self, run: RunInfo, status: str, error: BaseException | None = None) -> None:
        self._call("run_end", run, status, error)
