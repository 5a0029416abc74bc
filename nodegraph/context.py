"""What a running node may touch besides its inputs: progress, interruption and the environment."""

from __future__ import annotations

import os
import threading
from typing import Any

from .errors import Interrupted
from .fingerprint import FileFingerprints
from .hooks import Hooks, RunInfo


class CancelToken:
    """Cooperative, per-run interruption: set it from any thread; the node stops at its next check."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class NodeContext:
    """Handed to `execute` and `fingerprint`; `env` is the application's environment (paths, devices, ...)."""

    __slots__ = ("node_id", "node_type", "env", "_run", "_hooks", "_cancel", "_fingerprints")

    def __init__(self, node_id: str, node_type: str, env: Any, run: RunInfo | None = None,
                 hooks: Hooks | None = None, cancel: CancelToken | None = None,
                 fingerprints: FileFingerprints | None = None) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.env = env
        self._run = run
        self._hooks = hooks
        self._cancel = cancel
        self._fingerprints = fingerprints

    def fingerprint_file(self, path: str | os.PathLike[str]) -> str:
        """The content digest of a file (or of every file in a folder) for a node's `fingerprint`: the one
        contract for nodes that read files (see nodegraph/fingerprint.py). Memoised by the engine; without one
        (a node called directly) it is computed afresh. Raises OSError when the file cannot be read."""
        if self._fingerprints is None:
            self._fingerprints = FileFingerprints()
        return self._fingerprints.path(path)

    @property
    def metadata(self) -> dict[str, Any]:
        """The run's metadata (e.g. "prompt", "workflow" for PNG text chunks); empty outside a run."""
        return self._run.metadata if self._run is not None else {}

    @property
    def interrupted(self) -> bool:
        """True once the run was asked to stop (for loops that stop by themselves, e.g. a sampler's)."""
        return self._cancel is not None and self._cancel.cancelled

    def check_interrupted(self) -> None:
        """Raise `Interrupted` if the run was asked to stop; call it between steps."""
        if self._cancel is not None and self._cancel.cancelled:
            raise Interrupted(self.node_id)

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report step `value` of `total` (and an optional preview image); also an interruption point."""
        self.check_interrupted()
        if self._hooks is not None and self._run is not None:
            self._hooks.progress(self._run, self.node_id, int(value), int(total), preview)
