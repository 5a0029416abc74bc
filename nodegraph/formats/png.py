"""Workflows in PNG text chunks, as ComfyUI writes them: `prompt` (API format) and `workflow` (UI format), plus
our native workflow under `nodegraph_workflow`, so an image both ComfyUI and we can reopen carries its graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from ..registry import NodeRegistry
from ..workflow import Workflow, WorkflowFormatError, parse_workflow

NATIVE_KEY = "nodegraph_workflow"
UI_KEY = "workflow"
API_KEY = "prompt"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_info(prompt_api: dict[str, Any] | None, workflow_ui: dict[str, Any] | None,
             native: dict[str, Any] | None) -> PngImagePlugin.PngInfo:
    """Text chunks for `Image.save(..., pnginfo=...)`: whichever of the three forms are given.

    Args:
        prompt_api: the API-format prompt that ran (ComfyUI's `prompt` chunk).
        workflow_ui: the UI-format workflow (ComfyUI's `workflow` chunk; see `ui_from_native`).
        native: our native workflow as a dict (`dump_workflow`), read back first by `read_png_workflow`.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in ((API_KEY, prompt_api), (UI_KEY, workflow_ui), (NATIVE_KEY, native)):
        if value is not None:
            info.add_text(key, json.dumps(value))  # ASCII-escaped, so plain tEXt chunks as ComfyUI writes
    return info


def is_png(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == _PNG_MAGIC
    except OSError:
        return False


def png_texts(path: str | os.PathLike[str]) -> dict[str, str]:
    """A PNG's text chunks (tEXt, zTXt, iTXt)."""
    try:
        with Image.open(path) as image:
            image.load()
            return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    except FileNotFoundError:
        raise WorkflowFormatError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise WorkflowFormatError(f"{path}: not a readable image ({exc})") from None


def read_png_workflow(path: str | os.PathLike[str], registry: NodeRegistry | None = None) -> Workflow:
    """The workflow a PNG carries: our native chunk first, then ComfyUI's UI `workflow`, then its API `prompt`.

    Args:
        path: the PNG file.
        registry: node declarations for mapping a UI workflow's widget values; the installed node packs if None.
    """
    from . import to_workflow
    from .api import from_api
    from .ui import from_ui

    texts = png_texts(path)
    source = str(Path(path))
    if NATIVE_KEY in texts:
        return parse_workflow(_chunk_json(texts, NATIVE_KEY, source), f"{source} ({NATIVE_KEY})")
    if UI_KEY in texts or API_KEY in texts:
        if registry is None:
            from ..registry import default_registry

            registry = default_registry()
        if UI_KEY in texts:
            return from_ui(_chunk_json(texts, UI_KEY, source), registry, f"{source} ({UI_KEY})")
        data = _chunk_json(texts, API_KEY, source)
        return from_api(data, f"{source} ({API_KEY})") if isinstance(data, dict) else to_workflow(data, registry)
    raise WorkflowFormatError(f"{source}: the PNG carries no workflow (no {NATIVE_KEY!r}, {UI_KEY!r} or "
                              f"{API_KEY!r} text chunk)")


def _chunk_json(texts: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(texts[key])
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{source}: the {key!r} text chunk is not valid JSON ({exc.msg})") from None
