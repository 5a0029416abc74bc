"""JSON at the server's edge, safe for whatever a client sends.

Nesting depth is bounded before decoding (Python's decoder recurses, and so does everything that walks the
result); NaN, Infinity and lone UTF-16 surrogates, which Python's `json` accepts but neither JSON nor UTF-8
can carry, are found with the path where they are; and what the server writes is always standard JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

MAX_DEPTH = 64
"""Arrays and objects nested deeper than this are refused (a ComfyUI prompt nests about 5 levels)."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')
"""A string, or an unterminated one to the end: the optional quote keeps the scan linear (no backtracking)."""
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CHUNK = 1 << 20

Path = tuple[str | int, ...]


class JsonRefused(ValueError):
    """A body that is not JSON we accept; the message says why (and where, when it can)."""


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the arrays and objects of `raw` nest deeper than `limit` (brackets inside strings don't count).

    Strings are cut out, then the running depth over the brackets that remain is a cumulative sum (in
    chunks, so a 50 MB body costs a fraction of a second and little memory); malformed input is left to the
    decoder to report.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = np.frombuffer(_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS), dtype=np.uint8)
    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        chunk = brackets[start:start + _CHUNK]
        levels = np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1)) + depth
        if levels.max() > limit:
            return True
        depth = int(levels[-1])
    return False


def loads(raw: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """Decode JSON whose nesting is at most `limit`. Raises `JsonRefused` naming the problem."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if too_deep(data, limit):
        raise JsonRefused(f"JSON nests deeper than {limit} levels of arrays and objects")
    try:
        return json.loads(raw)
    except RecursionError:  # malformed input the depth scan left to the decoder
        raise JsonRefused(f"JSON nests deeper than {limit} levels of arrays and objects") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonRefused(f"not valid JSON: {exc}") from None


def value_problem(value: Any) -> str | None:
    """What keeps one decoded scalar (or key) from being standard JSON in UTF-8, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
        return f"{shown} is not a JSON number"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"lone UTF-16 surrogate {value[exc.start]!a} is not text (it cannot be encoded as UTF-8)"
    return None


def find_problems(value: Any, path: Path = (), limit: int = 20) -> list[tuple[Path, str]]:
    """Where a decoded document holds NaN, ±Infinity or lone surrogates (in values or keys): (path, problem)."""
    found: list[tuple[Path, str]] = []
    stack: list[tuple[Path, Any]] = [(path, value)]
    while stack and len(found) < limit:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                problem = value_problem(key)
                if problem is not None:
                    found.append(((*where, key), f"key: {problem}"))
                stack.append(((*where, key), child))
        elif isinstance(item, list):
            stack.extend(((*where, index), child) for index, child in reversed(list(enumerate(item))))
        else:
            problem = value_problem(item)
            if problem is not None:
                found.append((where, problem))
    return found


def show_path(path: Path) -> str:
    """`prompt.3.inputs.seed`, with any surrogate escaped so the text itself is valid UTF-8."""
    return ".".join(str(part).encode("utf-8", "backslashreplace").decode() for part in path) or "body"


def finite(value: Any) -> Any:
    """A copy with NaN and ±Infinity as null (what a browser's JSON.stringify writes)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(child) for key, child in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(child) for child in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Standard JSON, never NaN or Infinity; unknown types (numpy scalars, paths) become strings."""
    try:
        return json.dumps(value, default=str, allow_nan=False, **kwargs)
    except ValueError:  # a non-finite float somewhere (e.g. in a node's ui): written as null
        return json.dumps(finite(value), default=str, allow_nan=False, **kwargs)
