"""Engine hooks -> ComfyUI's WebSocket events for one prompt, and the status messages kept in its history.

The hooks run on the worker thread; every message crosses to the event loop through
`loop.call_soon_threadsafe` (`WebSocketHub.threadsafe`), in the order the engine reported it.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

from ..errors import Interrupted, NodeExecutionError
from ..hooks import Hooks, RunInfo
from ..plan import CompiledGraph
from .ws import WebSocketHub, preview_frame

log = logging.getLogger(__name__)

OVERALL_PROGRESS = "nodegraph.progress"
"""Our own event: nodes executed so far out of those the run must execute (cached ones excluded)."""
PREVIEW_MAX_SIZE = 512


def now_ms() -> int:
    return int(time.time() * 1000)


class PromptEvents(Hooks):
    """Watches one prompt's run: sends its events to the submitting client and records its history.

    Args:
        hub: where messages go.
        prompt_id: the prompt being run.
        client_id: the submitting client; None sends to every client, as ComfyUI does.
    """

    def __init__(self, hub: WebSocketHub, prompt_id: str, client_id: str | None) -> None:
        self.hub = hub
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.graph: CompiledGraph | None = None
        self.messages: list[list[Any]] = []
        """History status messages: [[event, data], ...]."""
        self.outputs: dict[str, dict[str, Any]] = {}
        """Each output node's ui, executed or cached."""
        self.executed: list[str] = []
        self.current_node: str | None = None
        self.status: str | None = None
        """"success", "error" or "interrupted" once the engine reported the end of the run."""
        self._total = 0

    def emit(self, event: str, data: dict[str, Any], *, record: bool = False) -> None:
        if record:
            self.messages.append([event, data])
        self.hub.threadsafe(self.hub.send, event, data, self.client_id)

    def run_start(self, run: RunInfo) -> None:
        self._total = len(run.execute)
        self.emit("execution_start", {"prompt_id": self.prompt_id, "timestamp": now_ms()}, record=True)
        self.emit("execution_cached", {"nodes": list(run.cached), "prompt_id": self.prompt_id,
                                       "timestamp": now_ms()}, record=True)
        self._overall(None)

    def node_start(self, run: RunInfo, node_id: str, node_type: str) -> None:
        self.current_node = node_id
        self.emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})

    def progress(self, run: RunInfo, node_id: str, value: int, total: int, preview: Any = None) -> None:
        self.emit("progress", {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id})
        if preview is not None and self.hub.wants_previews(self.client_id):
            jpeg = encode_preview(preview)
            if jpeg is not None:
                self.hub.threadsafe(self.hub.send_preview, preview_frame(jpeg), self.client_id)

    def node_end(self, run: RunInfo, node_id: str, node_type: str, *, cached: bool, ui: dict[str, Any],
                 seconds: float) -> None:
        if ui:
            self.outputs[node_id] = ui
            self.emit("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                   "prompt_id": self.prompt_id})
        if not cached:
            self.executed.append(node_id)
            self._overall(node_id)
        elif node_id in run.pending:  # counted as to execute, found in the cache once keyed
            self._total -= 1
            self._overall(None)

    def run_end(self, run: RunInfo, status: str, error: BaseException | None = None) -> None:
        if status == "success":
            self.emit("execution_success", {"prompt_id": self.prompt_id, "timestamp": now_ms()}, record=True)
        elif status == "interrupted":
            self.interrupted(error)
        else:
            self.failed(error)

    def interrupted(self, error: BaseException | None) -> None:
        node_id = error.node_id if isinstance(error, Interrupted) and error.node_id else self.current_node
        self.status = "interrupted"
        self.emit("execution_interrupted", {"prompt_id": self.prompt_id, "node_id": node_id,
                                            "node_type": self._node_type(node_id), "executed": list(self.executed),
                                            "timestamp": now_ms()}, record=True)

    def failed(self, error: BaseException | None, node_id: str | None = None) -> None:
        """Report an error: a node's, or one around the run (e.g. a model file deleted since submission)."""
        self.status = "error"
        if isinstance(error, NodeExecutionError):
            node_id = error.node_id
            exception_type, message = error.exception_type, error.exception_message
            trace = error.traceback.splitlines(keepends=True)
        else:
            exception_type = type(error).__module__ + "." + type(error).__qualname__ if error else "Error"
            message, trace = str(error or "unknown error"), []
        self.emit("execution_error", {
            "prompt_id": self.prompt_id, "node_id": node_id, "node_type": self._node_type(node_id),
            "executed": list(self.executed), "exception_message": message, "exception_type": exception_type,
            "traceback": trace, "current_inputs": self._inputs_of(node_id),
            "current_outputs": sorted(set(self.executed) | set(self.outputs)), "timestamp": now_ms(),
        }, record=True)

    def _overall(self, node_id: str | None) -> None:
        self.emit(OVERALL_PROGRESS, {"prompt_id": self.prompt_id, "done": len(self.executed), "total": self._total,
                                     "node": node_id})

    def _node_type(self, node_id: str | None) -> str | None:
        if self.graph is None or node_id not in self.graph.nodes:
            return None
        return self.graph.nodes[node_id].type_id

    def _inputs_of(self, node_id: str | None) -> dict[str, list[Any]]:
        """The failing node's inputs as ComfyUI shows them: widget values, and where linked ones came from."""
        if self.graph is None or node_id not in self.graph.nodes:
            return {}
        node = self.graph.nodes[node_id]
        inputs: dict[str, list[Any]] = {name: [value] for name, value in node.widgets.items()}
        for name, (source, slot) in node.links.items():
            inputs[name] = [f"output {slot} of node {source}"]
        return inputs


def encode_preview(preview: Any, max_size: int = PREVIEW_MAX_SIZE) -> bytes | None:
    """JPEG bytes of a preview: a PIL image, an IMAGE tensor/array ([B,]H,W,C in 0..1) or ComfyUI's
    ("JPEG", image, max_size) tuple. None (and a debug log) when it is none of those."""
    try:
        from PIL import Image

        if isinstance(preview, tuple) and len(preview) >= 2:
            preview = preview[1]
        if isinstance(preview, Image.Image):
            image = preview
        else:
            import numpy as np

            array = preview.detach().float().cpu().numpy() if hasattr(preview, "detach") else np.asarray(preview)
            while array.ndim > 3:
                array = array[0]
            if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
                array = array.transpose(1, 2, 0)  # channels first
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.dtype != np.uint8:
                array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            image = Image.fromarray(array)
        image = image.convert("RGB")
        image.thumbnail((max_size, max_size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()
    except Exception as exc:  # a preview is a nicety; never let it disturb the run
        log.debug("preview not encodable: %s", exc)
        return None
