"""Loading the corpus and comparing UI-format graphs by structure (what the editor would wire and run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).parent / "corpus"
UI_FILES = sorted(p.name for p in CORPUS.glob("*.json") if not p.name.startswith("api_"))
PNG_FILES = sorted(p.name for p in CORPUS.glob("png_*.json"))


def raw(name: str) -> Any:
    return json.loads((CORPUS / name).read_text(encoding="utf-8"))


def ui(name: str) -> dict[str, Any]:
    """A UI-format workflow: the file itself, or the `workflow` chunk of a `png_*` file."""
    data = raw(name)
    return json.loads(data["workflow"]) if name.startswith("png_") else data


def prompt(name: str) -> dict[str, Any]:
    """The API-format `prompt` chunk of a `png_*` file (what ComfyUI's editor queued for that image)."""
    return json.loads(raw(name)["prompt"])


def structure(data: dict[str, Any]) -> dict[str, Any]:
    """Nodes (type, mode, widget values, title) and links (origin, slot -> target, input name), ids as strings."""
    links = {}
    for link in data.get("links", []):
        if isinstance(link, list):
            links[link[0]] = (str(link[1]), link[2])
    nodes, edges = {}, set()
    for node in data["nodes"]:
        nodes[str(node["id"])] = (node["type"], node.get("mode", 0), node.get("widgets_values") or [],
                                  node.get("title"))
        for entry in node.get("inputs") or []:
            if entry.get("link") is not None and entry["link"] in links:
                name = (entry.get("widget") or {}).get("name", entry["name"])
                edges.add((*links[entry["link"]], str(node["id"]), name))
    return {"nodes": nodes, "links": sorted(edges)}
