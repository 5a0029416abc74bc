"""Content-addressed output cache: Merkle keys over node type, version, literal inputs and upstream keys."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, is_dataclass
from typing import Any

DEFAULT_MAX_ENTRIES = 2048
DEFAULT_MAX_BYTES = 8 * 1024**3


class UnhashableInput(TypeError):
    pass


def _reject(value: Any) -> Any:
    raise UnhashableInput(f"{type(value).__name__} value {value!r:.80} cannot be part of a cache key")


def node_key(type_id: str, version: int, widgets: dict[str, Any], upstream: dict[str, tuple[str, int]],
             fingerprint: Any = None, nonce: str | None = None) -> str:
    """The cache key of one node: a hash of what it is and of the keys of what feeds it.

    `upstream` maps input name -> (upstream node's key, output slot); so an unchanged subgraph keeps
    its keys wherever it sits, and a change anywhere changes every key downstream of it.
    """
    material = [type_id, version, widgets, sorted(upstream.items()), fingerprint, nonce]
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=_reject)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def estimate_nbytes(value: Any) -> int:
    """Approximate memory held by a node output: tensors and arrays by their data, objects may say `nbytes`."""
    total = 0
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        nbytes = getattr(item, "nbytes", None)
        if isinstance(nbytes, int):  # numpy arrays, our handles
            total += nbytes
        elif hasattr(item, "element_size") and hasattr(item, "nelement"):  # torch tensors
            total += item.element_size() * item.nelement()
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, name) for name in item.__dataclass_fields__)
        else:
            total += sys.getsizeof(item)
    return total


@dataclass(frozen=True)
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any]
    nbytes: int


class OutputCache:
    """An LRU cache bounded by entry count and by bytes. Hits return the stored objects (no copy)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, outputs: tuple[Any, ...], ui: dict[str, Any]) -> None:
        nbytes = estimate_nbytes(outputs)
        if nbytes > self.max_bytes or self.max_entries <= 0:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = CacheEntry(outputs, ui, nbytes)
            self._bytes += nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes
