"""ComfyUI's /object_info, derived from the node declarations (never written by hand).

COMBO options are resolved when asked, as a list, so files added to a model folder show up at once.
"""

from __future__ import annotations

import logging
from typing import Any

from ..registry import NodeRegistry
from ..schema import InputSpec, Node

log = logging.getLogger(__name__)


def input_entry(spec: InputSpec, env: Any) -> list[Any]:
    """`[type, {config}]`, or `[[options...], {config}]` for a COMBO, as ComfyUI's editor reads them."""
    config: dict[str, Any] = {}
    if spec.default is not None:
        config["default"] = spec.default
    if spec.type in ("INT", "FLOAT"):
        for key in ("min", "max", "step"):
            value = getattr(spec, key)
            if value is not None:
                config[key] = value
        if spec.type == "FLOAT" and spec.round is not None:
            config["round"] = spec.round
    if spec.type == "STRING" and spec.is_widget:
        config["multiline"] = spec.multiline
    if spec.control_after_generate:
        config["control_after_generate"] = True
    if spec.image_upload:
        config["image_upload"] = True
    if spec.force_input:
        config["forceInput"] = True
    if spec.tooltip:
        config["tooltip"] = spec.tooltip
    if spec.type == "COMBO":
        try:
            options: list[str] = spec.resolve_options(env)
        except Exception as exc:  # a folder that cannot be listed gives no choices, not a broken /object_info
            log.warning("options of %r could not be listed: %s", spec.name, exc)
            options = []
        return [options, config]
    return [spec.type, config] if config else [spec.type]


def node_info(node_cls: type[Node], env: Any) -> dict[str, Any]:
    schema = node_cls.schema
    required: dict[str, list[Any]] = {}
    optional: dict[str, list[Any]] = {}
    for spec in schema.inputs:
        (optional if spec.optional else required)[spec.name] = input_entry(spec, env)
    return {
        "input": {"required": required, "optional": optional},
        "input_order": {"required": list(required), "optional": list(optional)},
        "output": [out.type for out in schema.outputs],
        "output_is_list": list(schema.output_is_list),
        "input_is_list": schema.input_is_list,
        "output_name": [out.name for out in schema.outputs],
        "output_tooltips": [out.tooltip or "" for out in schema.outputs],
        "name": schema.type_id,
        "display_name": schema.display_name,
        "description": schema.description,
        "python_module": node_cls.__module__,
        "category": schema.category,
        "output_node": schema.output_node,
        "deprecated": False,
        "experimental": False,
        "version": schema.version,
    }


def object_info(registry: NodeRegistry, env: Any) -> dict[str, dict[str, Any]]:
    return {node_cls.schema.type_id: node_info(node_cls, env) for node_cls in registry}
