"""Node declarations: a node type states its inputs, widgets and outputs once, typed.

Validation, the node list, `/object_info` and the editor palette all derive from these
pydantic models (InvokeAI's typed invocations; ComfyUI V3's `io.Schema`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from .context import NodeContext

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
"""Input types edited in the node itself; every other type is a socket fed by a link."""

LINKABLE_INTO_WIDGET: dict[str, frozenset[str]] = {
    "INT": frozenset({"INT"}),
    "FLOAT": frozenset({"FLOAT", "INT"}),
    "STRING": frozenset({"STRING"}),
    "BOOLEAN": frozenset({"BOOLEAN"}),
    "COMBO": frozenset({"COMBO", "STRING"}),
}
"""Output types a widget converted to a socket accepts (its value is then checked at run time)."""

ANY_TYPE = "*"
"""ComfyUI's wildcard input type: a socket of this type accepts a link from an output of any type (PreviewAny).
Only inputs may be wildcards; every output keeps a real type."""

_TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
"""Input names: identifiers, plus dots (ComfyUI's block-merge inputs are named by weight prefixes, "input_blocks.0.")."""

OptionsSource = Sequence[str] | Callable[[Any], Sequence[str]]
"""COMBO options: a fixed list, or a function of the run environment (e.g. files in a folder)."""


class InputSpec(BaseModel):
    """One input of a node: a socket (`type` is e.g. "MODEL") or a widget (INT, FLOAT, STRING, BOOLEAN, COMBO)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    type: str
    optional: bool = False
    default: Any = None
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | None = None
    options: OptionsSource | None = Field(default=None, exclude=True)
    multiline: bool = False
    control_after_generate: bool = False
    """INT widgets (seeds): the editor offers fixed/increment/decrement/randomize after each queue."""
    image_upload: bool = False
    """COMBO widgets naming an input file: the editor shows an upload button."""
    force_input: bool = False
    """A value type (e.g. STRING) that must come from a link: shown as a socket, never as a widget."""
    tooltip: str | None = None
    check: Callable[[Any, Any], str | None] | None = Field(default=None, exclude=True)
    """`check(value, env)`: what is wrong with a value the type and range allow (None when nothing is), e.g. a
    file name prefix that leaves the output folder; run by validation, before anything is queued."""

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if not _IDENT.match(self.name):
            raise ValueError(f"input name {self.name!r} is not an identifier (letters, digits, _ and .)")
        if not _TYPE_NAME.match(self.type) and self.type != ANY_TYPE:
            raise ValueError(f"input {self.name!r}: type {self.type!r} must be an upper-case name or {ANY_TYPE!r}")
        if self.type == "COMBO" and self.options is None:
            raise ValueError(f"COMBO input {self.name!r} needs options")
        if self.type != "COMBO" and self.options is not None:
            raise ValueError(f"input {self.name!r}: only COMBO inputs take options")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"input {self.name!r}: min {self.min} > max {self.max}")
        return self

    @property
    def is_widget(self) -> bool:
        """Edited in the node (it may still be converted to a socket and linked)."""
        return self.type in WIDGET_TYPES and not self.force_input

    @property
    def is_value_type(self) -> bool:
        """INT, FLOAT, STRING, BOOLEAN or COMBO: checked against its constraints even when linked."""
        return self.type in WIDGET_TYPES

    @property
    def has_default(self) -> bool:
        return self.default is not None

    def resolve_options(self, env: Any) -> list[str]:
        """The COMBO choices now; a function source is asked each time (files come and go)."""
        if self.options is None:
            return []
        source = self.options(env) if callable(self.options) else self.options
        return [str(option) for option in source]


class OutputSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    name: str = ""
    tooltip: str | None = None
    is_list: bool = False
    """ComfyUI's OUTPUT_IS_LIST: `execute` returns a list of items here, and each node fed by this output runs
    once per item (unless it takes whole lists, `NodeSchema.input_is_list`)."""

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if not _TYPE_NAME.match(self.type):
            raise ValueError(f"output type {self.type!r} must be an upper-case name")
        if not self.name:
            object.__setattr__(self, "name", self.type)
        return self


class NodeSchema(BaseModel):
    """Everything the engine, the server and the editor know about a node type."""

    model_config = ConfigDict(frozen=True)

    type_id: str
    display_name: str = ""
    category: str = "utils"
    description: str = ""
    version: int = 1
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    output_node: bool = False
    deterministic: bool = True
    """False opts the node out of the cache: it runs every time, and so does everything downstream."""
    input_is_list: bool = False
    """ComfyUI's INPUT_IS_LIST: `execute` runs once and gets every input as a whole list (a widget value or an
    input fed by a single value as a one-element list), instead of once per item of a list fed to it."""

    @model_validator(mode="after")
    def _check(self) -> NodeSchema:
        if not self.type_id or any(c.isspace() for c in self.type_id):
            raise ValueError(f"type id {self.type_id!r} must be non-empty without spaces")
        names = [spec.name for spec in self.inputs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"{self.type_id}: duplicate input names {duplicates}")
        if not self.display_name:
            object.__setattr__(self, "display_name", self.type_id)
        return self

    def input(self, name: str) -> InputSpec | None:
        return self.input_map.get(name)

    @property
    def input_map(self) -> dict[str, InputSpec]:
        cached = self.__dict__.get("_input_map")
        if cached is None:
            cached = {spec.name: spec for spec in self.inputs}
            self.__dict__["_input_map"] = cached
        return cached

    @property
    def output_is_list(self) -> tuple[bool, ...]:
        """Per output, whether it is a list of items (ComfyUI's OUTPUT_IS_LIST)."""
        return tuple(out.is_list for out in self.outputs)

    @property
    def widgets(self) -> tuple[InputSpec, ...]:
        """Widget inputs in declaration order: the order of ComfyUI's positional `widgets_values`."""
        return tuple(spec for spec in self.inputs if spec.is_widget)


@dataclass(frozen=True)
class NodeResult:
    """What an output node returns: its socket values plus what a UI shows (e.g. saved images)."""

    outputs: tuple[Any, ...] = ()
    ui: dict[str, Any] = field(default_factory=dict)


class Node:
    """Base class of a node type: a `schema` and one stateless `execute`.

    `execute` is a classmethod computing from its inputs only (passed by name) and returning a
    tuple with one value per declared output, or a `NodeResult`.
    """

    schema: ClassVar[NodeSchema]

    @classmethod
    def execute(cls, ctx: NodeContext, **inputs: Any) -> tuple[Any, ...] | NodeResult:
        raise NotImplementedError(f"{cls.__name__} does not implement execute")

    @classmethod
    def fingerprint(cls, ctx: NodeContext, **widgets: Any) -> Any:
        """Extra cache-key material beyond the widget values, e.g. a file's content hash.

        Called before the run with the node's literal widget values; return None for nothing.
        """
        return None


def Int(name: str, default: int = 0, *, min: int | None = None, max: int | None = None, step: int = 1,
        control_after_generate: bool = False, optional: bool = False, tooltip: str | None = None) -> InputSpec:
    return InputSpec(name=name, type="INT", default=default, min=min, max=max, step=step,
                     control_after_generate=control_after_generate, optional=optional, tooltip=tooltip)


def Float(name: str, default: float = 0.0, *, min: float | None = None, max: float | None = None,
          step: float = 0.01, round: float | None = None, optional: bool = False,
          tooltip: str | None = None) -> InputSpec:
    return InputSpec(name=name, type="FLOAT", default=default, min=min, max=max, step=step, round=round,
                     optional=optional, tooltip=tooltip)


def String(name: str, default: str = "", *, multiline: bool = False, optional: bool = False,
           tooltip: str | None = None, check: Callable[[Any, Any], str | None] | None = None) -> InputSpec:
    return InputSpec(name=name, type="STRING", default=default, multiline=multiline, optional=optional,
                     tooltip=tooltip, check=check)


def Boolean(name: str, default: bool = False, *, optional: bool = False, tooltip: str | None = None) -> InputSpec:
    return InputSpec(name=name, type="BOOLEAN", default=default, optional=optional, tooltip=tooltip)


def Combo(name: str, options: OptionsSource, default: str | None = None, *, image_upload: bool = False,
          optional: bool = False, tooltip: str | None = None) -> InputSpec:
    """A choice among strings; with no default, a fixed list defaults to its first option."""
    if default is None and not callable(options) and len(options) > 0:
        default = str(options[0])
    return InputSpec(name=name, type="COMBO", options=options, default=default, image_upload=image_upload,
                     optional=optional, tooltip=tooltip)


def Socket(name: str, type: str, *, optional: bool = False, tooltip: str | None = None) -> InputSpec:
    """An input fed by a link from another node's output of the same type (value types too: forceInput)."""
    return InputSpec(name=name, type=type, optional=optional, tooltip=tooltip, force_input=type in WIDGET_TYPES)


def Out(type: str, name: str = "", *, tooltip: str | None = None, is_list: bool = False) -> OutputSpec:
    """An output; `is_list=True` makes it a list of items that downstream nodes run over one by one."""
    return OutputSpec(type=type, name=name, tooltip=tooltip, is_list=is_list)

