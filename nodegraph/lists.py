"""Lists as ComfyUI runs them: OUTPUT_IS_LIST and INPUT_IS_LIST.

An output declared a list (`Out(..., is_list=True)`) carries several items. A node fed such a list runs once
per item ("map over the list"); with several list inputs it runs as often as the longest list says, and a
shorter list repeats its last item, as ComfyUI's executor does. The results of those calls travel on as lists
again. A node that declares `input_is_list` runs once and receives whole lists instead (a widget value or a
single linked value as a one-element list). Output nodes' `ui` results from several calls are merged, lists
concatenated key by key.

Each item carries an identity, so the engine caches every call on its own: an item made by a call of a mapped
node is known by that call's cache key (a Merkle key, like a node's), and an item of a declared list output by
a digest of its content (falling back to its producer's key and position when the value cannot be digested).
Changing one item of a list therefore re-runs only the calls that see that item.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from .hooks import Hooks, RunInfo


class ItemList(tuple):
    """The items of one list-valued output as they travel between nodes (a tuple; immutable like a cache entry).

    `origins[i]` identifies item i: a string key when it is known by where it came from, or `(fallback,)` when
    it is to be known by its content (`fallback` used when the content cannot be digested).
    """

    origins: tuple[Any, ...]

    def __new__(cls, items: Iterable[Any], origins: Sequence[Any]) -> ItemList:
        self = super().__new__(cls, items)
        if len(origins) != len(self):
            raise ValueError(f"{len(self)} items but {len(origins)} origins")
        self.origins = tuple(origins)
        self._identities: dict[int, str] = {}
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle rebuild it with its origins
        return (tuple(self), self.origins)

    def identity(self, index: int) -> str:
        """What item `index` is, for a cache key: equal identities mean equal items."""
        known = self._identities.get(index)
        if known is None:
            origin = self.origins[index]
            if isinstance(origin, str):
                known = origin
            else:
                digest = content_digest(self[index])
                known = f"content:{digest}" if digest is not None else f"at:{origin[0]}"
            self._identities[index] = known
        return known

    def __repr__(self) -> str:
        return f"ItemList({list(self)!r})"


def content_digest(value: Any) -> str | None:
    """A digest of a value's content (plain values, tensors, arrays and frozen containers of them), or None."""
    digest = hashlib.blake2b(digest_size=20)
    if not _feed(digest, value, depth=0):
        return None
    return digest.hexdigest()


def _feed(digest: Any, value: Any, depth: int) -> bool:
    if depth > 8:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        digest.update(json.dumps([type(value).__name__, value]).encode())
        return True
    if isinstance(value, bytes):
        digest.update(b"bytes:" + value)
        return True
    module = type(value).__module__
    if module.startswith("torch") and hasattr(value, "detach"):
        import torch  # only reached for a tensor, so torch is there

        data = value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(f"tensor:{value.dtype}:{tuple(value.shape)}:".encode())
        digest.update(data.numpy().tobytes())
        return True
    if module.startswith("numpy") and hasattr(value, "tobytes") and hasattr(value, "dtype"):
        digest.update(f"array:{value.dtype}:{getattr(value, 'shape', ())}:".encode())
        digest.update(value.tobytes())
        return True
    if isinstance(value, (tuple, list)):
        digest.update(f"seq:{len(value)}:".encode())
        return all(_feed(digest, item, depth + 1) for item in value)
    if isinstance(value, dict):
        digest.update(f"dict:{len(value)}:".encode())
        return all(_feed(digest, key, depth + 1) and _feed(digest, value[key], depth + 1)
                   for key in sorted(value, key=repr))
    if is_dataclass(value) and not isinstance(value, type) and getattr(value, "__dataclass_params__").frozen:
        digest.update(f"{type(value).__module__}.{type(value).__qualname__}:".encode())
        return all(_feed(digest, getattr(value, f.name), depth + 1) for f in fields(value))
    return False


def map_calls(inputs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """One keyword set per call when some input is an `ItemList` (None when none is): as many calls as the
    longest list has items, a shorter list repeating its last item.

    Raises:
        ValueError: an input is an empty list (there is no item to run on).
    """
    lists = {name: value for name, value in inputs.items() if isinstance(value, ItemList)}
    if not lists:
        return None
    empty = sorted(name for name, value in lists.items() if not value)
    if empty:
        raise ValueError(f"input {empty[0]!r} received an empty list: there is no item to run the node on")
    count = max(len(value) for value in lists.values())
    return [{name: value[min(index, len(value) - 1)] if name in lists else value for name, value in inputs.items()}
            for index in range(count)]


def item_index(value: ItemList, call: int) -> int:
    """Which item of `value` call number `call` receives."""
    return min(call, len(value) - 1)


def whole_lists(inputs: dict[str, Any]) -> dict[str, list[Any]]:
    """An `input_is_list` node's arguments: lists stay lists, a single value becomes a one-element list."""
    return {name: list(value) if isinstance(value, ItemList) else [value] for name, value in inputs.items()}


def gather_outputs(output_is_list: Sequence[bool], calls: Sequence[tuple[tuple[Any, ...], str]], mapped: bool,
                   type_id: str) -> tuple[Any, ...]:
    """Join the outputs of a node's calls, each given with its cache key.

    A declared list output is the concatenation of every call's list; any other output is the single call's
    value, or with `mapped` (the node ran once per item) the list of every call's value.
    """
    joined = []
    for slot, is_list in enumerate(output_is_list):
        if is_list:
            items: list[Any] = []
            origins: list[Any] = []
            for outputs, key in calls:
                value = outputs[slot]
                if not isinstance(value, (list, tuple)):
                    raise TypeError(f"{type_id}: output {slot} is declared a list but execute returned a "
                                    f"{type(value).__name__}")
                items.extend(value)
                origins.extend((f"{key}:{slot}:{position}",) for position in range(len(value)))
            joined.append(ItemList(items, origins))
        elif mapped:
            joined.append(ItemList([outputs[slot] for outputs, _ in calls], [f"{key}:{slot}" for _, key in calls]))
        else:
            joined.append(calls[0][0][slot])
    return tuple(joined)


def merge_ui(uis: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several calls' UI results as one, key by key, their lists concatenated (ComfyUI shows every image)."""
    merged: dict[str, list[Any]] = {}
    for ui in uis:
        for key, value in ui.items():
            merged.setdefault(key, []).extend(value if isinstance(value, (list, tuple)) else [value])
    return merged


class ItemProgress(Hooks):
    """Progress of call `index` of `count` reported as progress of the whole node, so it never runs backwards:
    step v of t in call i is step i*t + v of count*t."""

    def __init__(self, hooks: Hooks, index: int, count: int) -> None:
        self.hooks = hooks
        self.index = index
        self.count = count

    def progress(self, run: RunInfo, node_id: str, value: int, total: int, preview: Any = None) -> None:
        self.hooks.progress(run, node_id, self.index * total + value, self.count * total, preview)
