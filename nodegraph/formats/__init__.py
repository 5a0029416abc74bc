"""Workflow formats at the edge: whatever a user hands us becomes our native `Workflow`.

Our format, ComfyUI's API format (`/prompt` bodies), ComfyUI's UI format (what its editor saves) and PNGs carrying
any of them are read here; the engine only ever sees the native model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..registry import NodeRegistry
from ..workflow import Workflow, WorkflowFormatError, parse_workflow


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise WorkflowFormatError(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def to_workflow(data: Any, registry: NodeRegistry, source: str = "workflow") -> Workflow:
    """Convert parsed workflow data of any supported format to our native model."""
    from .api import from_api, is_api_format
    from .ui import from_ui, is_ui_format

    if is_api_format(data):
        return from_api(data, source)
    if is_ui_format(data):
        try:
            return from_ui(data, registry, source)
        except WorkflowFormatError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # The reader trusts the shapes ComfyUI's editor writes; a hand-made or hostile file may break them.
            raise WorkflowFormatError(f"{source}: not a ComfyUI workflow this reader understands "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return parse_workflow(data, source)


def load_workflow_file(path: str | os.PathLike[str], registry: NodeRegistry) -> Workflow:
    """Load a workflow file of any supported format: JSON (ours, ComfyUI UI or API) or a PNG carrying one."""
    from .png import is_png, read_png_workflow

    if is_png(path):
        return read_png_workflow(path, registry)
    return to_workflow(read_json(path), registry, str(path))


def ui_to_api(data: dict[str, Any], registry: NodeRegistry, source: str = "workflow") -> dict[str, Any]:
    """The API prompt ComfyUI's editor would queue for a UI-format workflow: muted nodes dropped, bypassed ones
    wired through, Reroutes followed, PrimitiveNode values written into the widgets they feed, Notes left out."""
    from .api import to_api
    from .ui import from_ui, with_widget_defaults

    return to_api(with_widget_defaults(from_ui(data, registry, source), registry), registry)


def ui_from_native(workflow: Workflow, registry: NodeRegistry) -> dict[str, Any]:
    """The UI-format dict of a native workflow (ComfyUI's editor loads it; SaveImage writes it to PNGs)."""
    from .ui_export import to_ui

    return to_ui(workflow, registry)


def map_models(workflow: Workflow, mapping: dict[str, str]) -> Workflow:
    """Substitute model names: every string widget equal to an OLD name becomes NEW (`--map-model OLD=NEW`),
    so a downloaded ComfyUI workflow can be tried with the models that are here."""
    if not mapping:
        return workflow
    nodes = {}
    for node_id, node in workflow.nodes.items():
        widgets = {k: mapping.get(v, v) if isinstance(v, str) else v for k, v in node.widgets.items()}
        nodes[node_id] = node if widgets == node.widgets else node.model_copy(update={"widgets": widgets})
    return workflow.model_copy(update={"nodes": nodes})


def run_metadata(workflow: Workflow, registry: NodeRegistry, *, prompt: dict[str, Any] | None = None,
                 workflow_ui: dict[str, Any] | None = None) -> dict[str, Any]:
    """What SaveImage embeds in its PNGs: the API prompt, the UI workflow (ComfyUI opens both) and ours.

    Callers that received a prompt or UI workflow (the server) pass them so they are embedded as sent.
    """
    from .api import to_api
    from ..workflow import dump_workflow

    return {
        "prompt": prompt if prompt is not None else to_api(workflow, registry),
        "workflow": workflow_ui if workflow_ui is not None else ui_from_native(workflow, registry),
        "nodegraph_workflow": dump_workflow(workflow),
    }
