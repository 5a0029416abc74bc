"""Which worker runs a prompt: affinity by content keys, computed from the prompt alone.

A prompt's nodes get Merkle content keys from its API JSON: a node's key hashes its class, its literal inputs and
the keys of the nodes it links to, as the engine's cache keys do. A worker remembers the keys of the prompts it
ran (bounded, most recent first); a loader node's key stands for the model it loaded (its file name and
options) and any other key for an output the worker's cache may still hold. The dispatcher gives a prompt to the
idle worker sharing the most keys with it, weighting loaders above other nodes (loading a checkpoint costs more
than any one cached output saves), and the least recently busy worker on a tie, so work spreads.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

KEYS_REMEMBERED = 4096
"""Content keys a worker remembers (its output cache holds far fewer; the rest name loaded models)."""
LOADER_WEIGHT = 10
"""A shared node without links (a loader, or a constant) counts this much more than a shared intermediate."""


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def prompt_keys(prompt: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """node id -> (content key, is a root: no linked inputs) for an API-format prompt; a cycle or a dangling
    link leaves the nodes involved out (validation reports them; dispatch only needs a good guess)."""
    keys: dict[str, tuple[str, bool]] = {}
    visiting: set[str] = set()

    def key(node_id: str) -> tuple[str, bool] | None:
        if node_id in keys:
            return keys[node_id]
        node = prompt.get(node_id)
        if not isinstance(node, Mapping) or node_id in visiting:
            return None
        visiting.add(node_id)
        parts: dict[str, Any] = {}
        root = True
        for name, value in sorted((node.get("inputs") or {}).items()):
            if _is_link(value):
                upstream = key(value[0])
                if upstream is None:
                    visiting.discard(node_id)
                    return None
                parts[name] = [upstream[0], value[1]]
                root = False
            else:
                parts[name] = value
        text = json.dumps([node.get("class_type"), parts], sort_keys=True, default=str)
        keys[node_id] = (hashlib.blake2b(text.encode(), digest_size=12).hexdigest(), root)
        visiting.discard(node_id)
        return keys[node_id]

    for node_id in prompt:
        key(str(node_id))
    return keys


def shape_signature(prompt: Mapping[str, Any]) -> str:
    """The same for prompts with the same nodes, classes, links and root inputs (models, sizes): prompts a
    worker may run side by side so their sampler calls stack. Widget values downstream (seeds, prompt texts,
    CFG) may differ; whether two UNet calls really stack is decided call by call."""
    keys = prompt_keys(prompt)
    shape: list[Any] = []
    for node_id in sorted(prompt, key=str):
        node = prompt[node_id] if isinstance(prompt[node_id], Mapping) else {}
        inputs = node.get("inputs") or {}
        links = sorted((name, value[0], value[1]) for name, value in inputs.items() if _is_link(value))
        root = keys.get(str(node_id), ("", False))
        shape.append([str(node_id), node.get("class_type"), links, root[0] if root[1] and _loads(node) else None])
    return hashlib.blake2b(json.dumps(shape, default=str).encode(), digest_size=12).hexdigest()


def _loads(node: Mapping[str, Any]) -> bool:
    """A node naming a file (a loader): its literal inputs must match for two prompts to share its model."""
    return any(isinstance(v, str) and "." in v for v in (node.get("inputs") or {}).values())


@dataclass
class WorkerSlot:
    """What the dispatcher knows of one worker."""

    name: str
    device: str = "cpu"
    busy: bool = False
    alive: bool = True
    last_busy: float = 0.0
    keys: OrderedDict[str, None] = field(default_factory=OrderedDict)
    running: str | None = None
    """The prompt id it runs now."""

    def remember(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.keys[key] = None
            self.keys.move_to_end(key)
        while len(self.keys) > KEYS_REMEMBERED:
            self.keys.popitem(last=False)

    def score(self, keys: Mapping[str, tuple[str, bool]]) -> int:
        return sum(LOADER_WEIGHT if root else 1 for key, root in keys.values() if key in self.keys)


def choose(slots: Iterable[WorkerSlot], keys: Mapping[str, tuple[str, bool]]) -> WorkerSlot | None:
    """The idle live worker sharing the most with the prompt; the one idle longest on a tie; None if all busy."""
    idle = [slot for slot in slots if slot.alive and not slot.busy]
    if not idle:
        return None
    return max(idle, key=lambda slot: (slot.score(keys), -slot.last_busy))
