"""Reading weight files safely, and a small LRU so repeated runs do not reload multi-GB checkpoints.

`.safetensors` is read with safetensors (no code can run). Pickle-based formats (`.ckpt`, `.pt`, `.pth`,
`.bin`) are read only with `torch.load(weights_only=True)`, which refuses arbitrary objects. Anything else
is refused rather than guessed at.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
T = TypeVar("T")


def check_suffix(path: Path) -> None:
    """Refuse any extension we do not know how to read safely."""
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        allowed = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
        kind = path.suffix or "suffix-less"
        raise ValueError(f"{path.name}: refusing to load a {kind} file; weight files must be one of {allowed}")


def read_raw(path: str | Path) -> tuple[Any, dict[str, str]]:
    """A weight file's contents as stored (safetensors: a tensor dict; pickles: whatever weights_only allows)."""
    path = Path(path)
    check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weight file: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    return torch.load(path, map_location="cpu", weights_only=True), {}


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of one weight file on the CPU, plus its safetensors metadata ({} for pickles).

    Args:
        path: a `.safetensors`, `.ckpt`, `.pt`, `.pth` or `.bin` file; pickles may wrap the tensors in
            `state_dict`.

    Raises:
        ValueError: another extension, or a pickle that holds no tensor dict.
    """
    data, metadata = read_raw(path)
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{Path(path).name}: expected a dict of tensors, found {type(data).__name__}")
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}, metadata


class WeightFile(Mapping[str, torch.Tensor]):
    """A weight file's tensors by key, each read only when asked for.

    Building a model from it converts one tensor at a time, so the whole file is never held twice; a
    safetensors tensor already in the wanted dtype is a view of the file's memory map (no copy at all).
    Pickles are read whole (`weights_only=True`, memory-mapped when their format allows). Use it as a
    context manager, or call `close()`: an open file keeps its mapping alive.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_suffix(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such weight file: {self.path}")
        self._handle: Any = None
        self._tensors: dict[str, torch.Tensor] | None = None
        if self.path.suffix.lower() in SAFETENSORS_SUFFIXES:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            self.metadata: dict[str, str] = dict(self._handle.metadata() or {})
            self._keys = list(self._handle.keys())
        else:
            self._tensors, self.metadata = read_weights(self.path)
            self._keys = list(self._tensors)
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        if self._tensors is not None:
            return self._tensors[key]
        return self._handle.get_tensor(key)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape without reading its data."""
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        return tuple(self._handle.get_slice(key).get_shape())

    def close(self) -> None:
        self._handle = None
        self._tensors = None

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrefixView(Mapping[str, torch.Tensor]):
    """The tensors of `weights` under `prefix`, prefix removed, read lazily; `skip(key)` hides keys."""

    def __init__(self, weights: Mapping[str, torch.Tensor], prefix: str,
                 skip: Callable[[str], bool] = lambda key: False) -> None:
        self._weights, self._prefix = weights, prefix
        self._keys = [key[len(prefix):] for key in weights if key.startswith(prefix) and not skip(key)]
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        return self._weights[self._prefix + key]

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def file_signature(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, mtime in ns, size): changes when the file is replaced or rewritten."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_mtime_ns, stat.st_size


def folder_signature(path: str | Path) -> tuple[Any, ...]:
    """A folder's signature: every file's relative path, mtime and size (diffusers folders hold a few dozen)."""
    resolved = Path(path).resolve()
    files = sorted(p for p in resolved.rglob("*") if p.is_file())
    return (str(resolved), *((str(p.relative_to(resolved)), p.stat().st_mtime_ns, p.stat().st_size) for p in files))


class LRUCache:
    """A thread-safe least-recently-used map from a signature to a loaded object.

    `hits` and `misses` let tests and logs tell a reload from a reuse.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = load()  # outside the lock: loading takes seconds and must not block other lookups
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)
