"""Workflow formats at the edge: whatever a user hands us becomes our native `Workflow`."""

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

    if is_api_format(data):
        return from_api(data, source)
    return parse_workflow(data, source)


def load_workflow_file(path: str | os.PathLike[str], registry: NodeRegistry) -> Workflow:
    """Load a workflow file of any supported format."""
    return to_workflow(read_json(path), registry, str(path))
