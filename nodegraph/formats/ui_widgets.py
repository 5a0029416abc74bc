"""ComfyUI's positional `widgets_values` <-> our widgets by name.

The editor saves a node's widget values as a list in widget order, with slots for widgets that only the editor
has: the `control_after_generate` combo after a seed ("fixed"/"increment"/"decrement"/"randomize", or a legacy
boolean) and the upload button after an image name (value "image"). Our schema's `widgets` is that order without
the editor-only slots, so the mapping is a walk over both lists; the editor-only values are returned separately so
an export can write them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..schema import NodeSchema

CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_VALUE = "image"
DEFAULT_CONTROL = "fixed"
"""Control value written for a seed that has none stored: an exported workflow should reproduce what we ran."""


def _is_control(value: Any) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)


@dataclass
class MappedWidgets:
    """Widget values by name, plus what only the editor keeps."""

    values: dict[str, Any] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)
    """Seed widget name -> the control slot's value (e.g. "randomize"), written back on export."""
    upload: dict[str, Any] = field(default_factory=dict)
    """Image widget name -> the upload slot's value."""
    leftover: list[Any] = field(default_factory=list)
    """Values past the declared widgets (a newer or older node version): kept, never guessed at."""


def widgets_from_values(schema: NodeSchema, raw: Any) -> MappedWidgets:
    """Map a node's saved `widgets_values` (a list, or a dict by name) through its declared widget order."""
    mapped = MappedWidgets()
    if isinstance(raw, dict):
        names = {spec.name for spec in schema.widgets}
        mapped.values = {k: v for k, v in raw.items() if k in names}
        return mapped
    if not isinstance(raw, list):
        return mapped
    position = 0
    for spec in schema.widgets:
        if position >= len(raw):
            break
        mapped.values[spec.name] = raw[position]
        position += 1
        if spec.control_after_generate and position < len(raw) and _is_control(raw[position]):
            mapped.control[spec.name] = raw[position]
            position += 1
        if spec.image_upload and position < len(raw) and raw[position] in (UPLOAD_VALUE, None):
            mapped.upload[spec.name] = raw[position]
            position += 1
    rest = list(raw[position:])
    # Older editors appended the upload button after all widgets rather than after the image name.
    for spec in schema.widgets:
        if spec.image_upload and spec.name not in mapped.upload and rest[:1] == [UPLOAD_VALUE]:
            mapped.upload[spec.name] = rest.pop(0)
    mapped.leftover = rest
    return mapped


def values_from_widgets(schema: NodeSchema, widgets: dict[str, Any], control: dict[str, Any] | None = None,
                        upload: dict[str, Any] | None = None, leftover: list[Any] | None = None) -> list[Any]:
    """The positional `widgets_values` the editor loads: declared order, editor-only slots re-inserted."""
    control = control or {}
    upload = upload or {}
    values: list[Any] = []
    for spec in schema.widgets:
        values.append(widgets.get(spec.name, spec.default))
        if spec.control_after_generate:
            values.append(control.get(spec.name, DEFAULT_CONTROL))
        if spec.image_upload:
            values.append(upload.get(spec.name, UPLOAD_VALUE))
    return values + list(leftover or [])
