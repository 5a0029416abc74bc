"""Regular expressions under a time limit, so a hostile pattern cannot hang the worker.

A pattern such as `(a|aa)+$` on "aaaa...b" backtracks exponentially (ReDoS). Python's `re` cannot be
interrupted, and a thread running it cannot be killed, so the string nodes use the third-party `regex`
module (already installed as a dependency of transformers): its matcher checks a deadline while it
backtracks and raises `TimeoutError`, which we turn into an error naming the node input and the limit.
`regex` in its default VERSION0 mode follows `re`'s syntax and semantics.

The limit is CPU time (the module measures with C's `clock()`, the process's CPU time; the worker runs one
node at a time, so that is the match's): it bounds the work a pattern can cost, so a busy machine slows a
hostile pattern's failure down but does not fail a legitimate one spuriously. Ordinary patterns on
prompt-sized text take microseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import regex

TIME_LIMIT_S = 0.5
"""CPU seconds one regex call (a search, a whole findall or a whole substitution) may take."""

PatternError = regex.error


class RegexTimeout(ValueError):
    """A pattern ran past `TIME_LIMIT_S`: almost always catastrophic backtracking."""


def flags_of(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    """ComfyUI's three checkboxes as regex flags."""
    return ((regex.IGNORECASE if case_insensitive else 0) | (regex.MULTILINE if multiline else 0)
            | (regex.DOTALL if dotall else 0))


class TimedPattern:
    """A compiled pattern whose every call runs under `limit` seconds; `where` names the node input."""

    def __init__(self, pattern: str, flags: int, *, where: str, limit: float = TIME_LIMIT_S) -> None:
        self.where, self.limit = where, limit
        self.compiled = regex.compile(pattern, flags)  # raises PatternError for a malformed pattern

    def _timeout(self) -> RegexTimeout:
        return RegexTimeout(f"{self.where}: the pattern took longer than {self.limit:g} s of CPU time (the limit) on "
                            "this string; it probably backtracks catastrophically, e.g. a nested repeat like (a|aa)+; "
                            "simplify the pattern")

    def search(self, string: str) -> Any:
        try:
            return self.compiled.search(string, timeout=self.limit)
        except TimeoutError:
            raise self._timeout() from None

    def finditer(self, string: str) -> Iterator[Any]:
        """All matches; the limit covers the whole iteration, not each match."""
        try:
            yield from self.compiled.finditer(string, timeout=self.limit)
        except TimeoutError:
            raise self._timeout() from None

    def sub(self, replacement: str, string: str, count: int = 0) -> str:
        try:
            return self.compiled.sub(replacement, string, count=count, timeout=self.limit)
        except TimeoutError:
            raise self._timeout() from None
