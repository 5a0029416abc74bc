"""Request and response bodies as pydantic models: the handlers validate with them, /openapi.json shows them.

The shapes are ComfyUI's, so its clients and scripts work unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ApiNodeMeta(BaseModel):
    title: str | None = None


class ApiNode(BaseModel):
    """One node of an API-format prompt, `{class_type, inputs, _meta}` (documents /prompt, which reads plain JSON)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    class_type: str
    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description="widget values by input name, or [node_id, output_slot] links")
    meta: ApiNodeMeta | None = Field(None, alias="_meta")


API_OR_NATIVE = {"anyOf": [
    {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/components/schemas/ApiNode"}},
    {"type": "object", "required": ["nodes"], "properties": {"format": {"const": "nodegraph"},
                                                            "nodes": {"type": "object"}, "links": {"type": "array"}}},
]}
"""The two shapes /prompt documents (it also reads ComfyUI's UI format, as its editor saves it)."""


class PromptRequest(BaseModel):
    """POST /prompt: an API-format prompt (or a nodegraph workflow) to queue."""

    model_config = ConfigDict(extra="allow")

    prompt: dict[str, Any] = Field(description="ComfyUI API format {id: {class_type, inputs}} or a nodegraph workflow",
                                   json_schema_extra=API_OR_NATIVE)
    client_id: str | None = Field(None, description="the WebSocket clientId that receives this prompt's events")
    prompt_id: str | None = Field(None, description="an id of your choosing; a random one otherwise")
    extra_data: dict[str, Any] = Field(
        default_factory=dict,
        description="extra_pnginfo.workflow is embedded in saved PNGs; model_map {OLD: NEW} renames models")
    front: bool = Field(False, description="queue before every waiting prompt")
    number: float | None = Field(None, description="explicit queue position (lower runs first)")
    partial_execution_targets: list[str] | None = Field(None, description="run only these output nodes")

    @field_validator("prompt_id", "client_id", mode="before")
    @classmethod
    def _text_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and (len(value) > 200 or any(ord(c) < 32 for c in value)):
            raise ValueError("ids are at most 200 printable characters")
        return value

    @field_validator("partial_execution_targets", mode="before")
    @classmethod
    def _target_ids(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value


class ErrorBody(BaseModel):
    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """Every error response."""

    error: ErrorBody


class NodeError(BaseModel):
    class_type: str
    errors: list[ErrorBody]
    dependent_outputs: list[str]


class PromptResponse(BaseModel):
    prompt_id: str
    number: float
    node_errors: dict[str, NodeError] = Field(default_factory=dict)


class PromptErrorResponse(BaseModel):
    """400 from POST /prompt: the top error plus every problem by node id."""

    error: ErrorBody
    node_errors: dict[str, NodeError]


class ExecInfo(BaseModel):
    queue_remaining: int


class PromptInfo(BaseModel):
    """GET /prompt."""

    exec_info: ExecInfo


class QueueResponse(BaseModel):
    """Items are `[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""

    queue_running: list[list[Any]]
    queue_pending: list[list[Any]]


class ClearOrDelete(BaseModel):
    """POST /queue and POST /history."""

    clear: bool = False
    delete: list[str] = Field(default_factory=list)


class InterruptRequest(BaseModel):
    prompt_id: str | None = Field(None, description="stop only this prompt, and only if it is the running one")


class HistoryStatus(BaseModel):
    status_str: Literal["success", "error"]
    completed: bool
    messages: list[list[Any]] = Field(description="[[event, data], ...]: execution_start, execution_cached, "
                                                  "execution_success / execution_error / execution_interrupted")


class HistoryEntry(BaseModel):
    prompt: list[Any]
    outputs: dict[str, dict[str, Any]] = Field(description="each output node's ui, e.g. {images: [...]}")
    status: HistoryStatus
    meta: dict[str, dict[str, Any]] = Field(default_factory=dict)


class UploadResponse(BaseModel):
    name: str
    subfolder: str
    type: Literal["input", "output", "temp"]


class FreeRequest(BaseModel):
    unload_models: bool = False
    free_memory: bool = False


class DeviceStats(BaseModel):
    name: str
    type: str
    index: int | None = None
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int


class SystemInfo(BaseModel):
    os: str
    python_version: str
    embedded_python: bool = False
    comfyui_version: str
    nodegraph_version: str
    pytorch_version: str
    ram_total: int
    ram_free: int
    argv: list[str] = Field(default_factory=list, description="not the real command line (it may hold a token)")


class LoadedModel(BaseModel):
    name: str
    device: str = Field(description="where its weights are: the compute device, or cpu (offloaded or streamed)")
    nbytes: int = Field(description="bytes it holds; a derived model (LoRA-merged) only what it adds")
    pinned: bool = Field(description="in use by the running prompt")
    loads: int = Field(description="times it was loaded or built")
    derived: bool


class ModelMemory(BaseModel):
    mode: Literal["highvram", "normalvram", "lowvram", "cpu"]
    device: str
    vram_budget: int | None = Field(description="bytes of models the device may hold; null on the CPU")
    ram_budget: int
    device_bytes: int
    ram_bytes: int
    loads: int
    evictions: int
    offloads: int
    models: list[LoadedModel] = Field(description="most recently used first")


class SystemStats(BaseModel):
    system: SystemInfo
    devices: list[DeviceStats]
    models: ModelMemory | None = Field(None, description="the model manager: what is loaded where (nodegraph)")


class ObjectInfoNode(BaseModel):
    """One node type in ComfyUI's /object_info shape, derived from its declaration."""

    model_config = ConfigDict(extra="allow")

    input: dict[str, dict[str, list[Any]]] = Field(description="required/optional: name -> [type or options, config]")
    input_order: dict[str, list[str]]
    output: list[str]
    output_is_list: list[bool] = Field(description="per output: a list of items, each run downstream on its own")
    input_is_list: bool = Field(False, description="the node runs once with whole lists (ComfyUI's INPUT_IS_LIST)")
    output_name: list[str]
    name: str
    display_name: str
    description: str
    category: str
    output_node: bool
    python_module: str
    deprecated: bool = False
    experimental: bool = False
