"""Reading weight files safely: whole, or one tensor at a time from a checked safetensors header.

`.safetensors` is read with safetensors (no code can run). Pickle-based formats (`.ckpt`, `.pt`, `.pth`,
`.bin`) are read only with `torch.load(weights_only=True)`, which refuses arbitrary objects. Anything else
is refused rather than guessed at.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


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


SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024


class _KeyedTensors(Mapping[str, torch.Tensor]):
    """A mapping over a fixed key list (`_keys`, `_key_set`) whose values are read on demand."""

    _keys: list[str]
    _key_set: set[str]

    def __getitem__(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class WeightFile(_KeyedTensors):
    """A weight file's tensors by key, each read from disk only when asked for.

    Building a model from it converts one tensor at a time, so the file is never held whole beside the
    model. Safetensors tensors are read with plain file reads into memory the tensor owns, never through a
    memory map: a mapped file's touched pages count in the process' RSS until it is unmapped, which made
    loading an fp16 checkpoint into fp32 modules hold both. Pickles are read whole (`weights_only=True`).
    Use it as a context manager, or call `close()`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_suffix(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such weight file: {self.path}")
        self._file: Any = None
        self._tensors: dict[str, torch.Tensor] | None = None
        if self.path.suffix.lower() in SAFETENSORS_SUFFIXES:
            self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close())
            self._info, self.metadata, self._data_start = _safetensors_header(self._file, self.path)
            self._keys = list(self._info)
        else:
            self._tensors, self.metadata = read_weights(self.path)
            self._keys = list(self._tensors)
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        if self._tensors is not None:
            return self._tensors[key]
        if self._file is None:
            raise ValueError(f"{self.path.name}: read after close")
        info = self._info[key]
        start, end = info["data_offsets"]
        raw = torch.empty(end - start, dtype=torch.uint8)
        self._file.seek(self._data_start + start)
        if end > start and self._file.readinto(memoryview(raw.numpy())) != end - start:
            raise ValueError(f"{self.path.name}: the file ends inside tensor {key!r} (truncated?)")
        return raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape without reading its data."""
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        return tuple(self._info[key]["shape"])

    def nbytes(self, keys: Iterable[str], dtype: torch.dtype | None = None) -> int:
        """What these tensors take in memory, as stored or converted to `dtype` (floating ones only)."""
        total = 0
        for key in keys:
            tensor_dtype = self._tensors[key].dtype if self._tensors is not None else SAFETENSORS_DTYPES[self._info[key]["dtype"]]
            if dtype is not None and tensor_dtype.is_floating_point:
                tensor_dtype = dtype
            total += math.prod(self.shape(key)) * tensor_dtype.itemsize
        return total

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._tensors = None

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _safetensors_header(file: Any, path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensor infos by key, metadata, where tensor data starts) of an open safetensors file, checked so a
    corrupt or hostile header is refused with its file named rather than read out of bounds."""
    size = path.stat().st_size
    head = file.read(8)
    if len(head) != 8:
        raise ValueError(f"{path.name}: not a safetensors file (shorter than its header length)")
    length = struct.unpack("<Q", head)[0]
    if length > min(_MAX_HEADER, size - 8):
        raise ValueError(f"{path.name}: not a safetensors file (header length {length} exceeds the file)")
    try:
        header = json.loads(file.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.name}: not a safetensors file (header is not JSON: {error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - length
    for key, info in header.items():
        try:
            start, end = info["data_offsets"]
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            count = math.prod(info["shape"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path.name}: tensor {key!r} has a malformed header entry ({error!r})") from error
        if not 0 <= start <= end <= data_size or end - start != count * dtype.itemsize:
            raise ValueError(f"{path.name}: tensor {key!r} lies outside the file or does not match its shape")
    return header, {str(k): str(v) for k, v in metadata.items()}, 8 + length


class PrefixView(_KeyedTensors):
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
