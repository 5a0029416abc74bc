"""Errors the engine reports: each names the node, the input and the value involved."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# ComfyUI's error type names, where ComfyUI has one.
REQUIRED_INPUT_MISSING = "required_input_missing"
BAD_LINKED_INPUT = "bad_linked_input"
RETURN_TYPE_MISMATCH = "return_type_mismatch"
INVALID_INPUT_TYPE = "invalid_input_type"
VALUE_SMALLER_THAN_MIN = "value_smaller_than_min"
VALUE_BIGGER_THAN_MAX = "value_bigger_than_max"
VALUE_NOT_IN_LIST = "value_not_in_list"
MISSING_NODE_TYPE = "missing_node_type"
PROMPT_NO_OUTPUTS = "prompt_no_outputs"
EXCEPTION_DURING_VALIDATION = "exception_during_validation"
CUSTOM_VALIDATION_FAILED = "custom_validation_failed"
# Ours, where ComfyUI has none.
UNKNOWN_INPUT = "unknown_input"
DEPENDENCY_CYCLE = "dependency_cycle"
UNHASHABLE_INPUT = "unhashable_input"


class ValidationIssue(BaseModel):
    """One problem found before running; shaped to fill ComfyUI's `node_errors`."""

    type: str
    message: str
    details: str = ""
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    received_value: Any = None
    extra: dict[str, Any] = Field(default_factory=dict)

    def extra_info(self) -> dict[str, Any]:
        info: dict[str, Any] = dict(self.extra)
        if self.input_name is not None:
            info["input_name"] = self.input_name
        if self.received_value is not None:
            info["received_value"] = self.received_value
        return info

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}" + (f" ({self.class_type})" if self.class_type else ""))
        if self.input_name is not None:
            where.append(f"input {self.input_name!r}")
        prefix = ", ".join(where)
        text = f"{self.message}: {self.details}" if self.details else self.message
        return f"{prefix}: {text} [{self.type}]" if prefix else f"{text} [{self.type}]"


class ValidationFailed(ValueError):
    """The workflow has problems; nothing was run. `issues` lists every one found."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        self.issues = issues
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"workflow is invalid ({len(issues)} problem{'s' * (len(issues) != 1)}):\n{lines}")


class NodeExecutionError(RuntimeError):
    """A node raised while running; the run stopped there and the engine stays usable."""

    def __init__(self, node_id: str, class_type: str, exception: BaseException, traceback_text: str, *,
                 item: int | None = None) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.exception = exception
        self.item = item
        """Which item's call failed when the node ran once per item of a list (None otherwise)."""
        self.exception_type = f"{type(exception).__module__}.{type(exception).__qualname__}"
        where = "" if item is None else f" on list item {item}"
        self.exception_message = f"list item {item}: {exception}" if item is not None else str(exception)
        self.traceback = traceback_text
        super().__init__(f"node {node_id} ({class_type}) failed{where}: {type(exception).__name__}: {exception}")


class OutOfMemory(NodeExecutionError):
    """A node ran out of memory (RAM, or the GPU's); the engine freed cached outputs and unused models, so the
    next run starts clean. `exception_message` says so in words; `exception_type` is the original's."""

    def __init__(self, node_id: str, class_type: str, exception: BaseException, traceback_text: str, *,
                 item: int | None = None) -> None:
        super().__init__(node_id, class_type, exception, traceback_text, item=item)
        detail = str(exception).strip().splitlines()[0] if str(exception).strip() else type(exception).__name__
        self.exception_message = (f"out of memory in node {node_id} ({class_type}): {detail}. Cached outputs and "
                                  "unused models were freed; try again, or use a smaller size or batch")
        self.args = (f"node {node_id} ({class_type}) failed: {self.exception_message}",)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's (CUDA) OutOfMemoryError, or an older torch's RuntimeError saying "out of memory";
    told apart without importing torch."""
    if isinstance(exc, MemoryError) or any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Interrupted(Exception):
    """The run was interrupted on request; raised from inside a node at its next check."""

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id
        super().__init__("interrupted" + (f" at node {node_id}" if node_id else ""))

    def at_node(self, node_id: str) -> Interrupted:
        """Name the node that was running, when the code that raised it knew none (e.g. the sampler's
        StoppableDenoiser); returns self, to be re-raised."""
        if self.node_id is None:
            self.node_id = node_id
            self.args = (f"interrupted at node {node_id}",)
        return self
