"""Cross-prompt batching: prompts running side by side in threads share their model calls.

A `Rendezvous` is joined by the threads running a group of prompts (one thread per prompt). A node that makes
an expensive call it could batch (the sampler's UNet call) hands it to `Rendezvous.call` with a key saying which
calls may be stacked together (same model, same shapes). The call waits until every live member of the group is
either waiting with a call of its own or has left (finished, failed or cancelled); then the waiting calls are
grouped by key and each group runs as one call. Nothing is ever waited for that may not come: a member that
never makes another call leaves when its prompt ends, and the others go on without it.

The engine knows nothing of tensors: `run_batch(payloads) -> results` does the stacking and splitting, and
`run_one(payload) -> result` is what a call does alone (used for a call with no partner, and to isolate a
failing batch, so one prompt's bad input never fails another's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()


def active() -> Rendezvous | None:
    """The rendezvous this thread's prompt takes part in, or None (running alone)."""
    return getattr(_local, "rendezvous", None)


@contextmanager
def joined(rendezvous: Rendezvous | None) -> Iterator[None]:
    """Take part in `rendezvous` for the duration of the block (one prompt run on this thread); leaving it at the
    end (however the run ends) lets the others go on without this member."""
    if rendezvous is None:
        yield
        return
    _local.rendezvous = rendezvous
    try:
        yield
    finally:
        _local.rendezvous = None
        rendezvous.leave()


@dataclass
class _Call:
    key: Hashable
    payload: Any
    run_batch: Callable[[Sequence[Any]], Sequence[Any]]
    run_one: Callable[[Any], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    batch_size: int = field(default=1)


class Rendezvous:
    """Where the threads of one prompt group meet to stack their model calls.

    Args:
        members: the group's size: every member counts from the start (a member that has not reached its first
            call yet is waited for), and each leaves once, when its prompt ends (`joined`).
        max_batch: the most calls stacked into one (the rest wait for the next round).

    `stats` counts rounds and stacked calls (for tests and the benchmark).
    """

    def __init__(self, members: int, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._members = members
        self._waiting: list[_Call] = []
        self._running = False
        self.stats = {"calls": 0, "batched_calls": 0, "rounds": 0}

    def leave(self) -> None:
        with self._cond:
            self._members -= 1
            self._cond.notify_all()

    def call(self, key: Hashable, payload: Any, *, run_batch: Callable[[Sequence[Any]], Sequence[Any]],
             run_one: Callable[[Any], Any]) -> Any:
        """Run `payload` stacked with other members' calls of the same key; returns this call's result."""
        me = _Call(key, payload, run_batch, run_one)
        with self._cond:
            self._waiting.append(me)
            self._cond.notify_all()
            while not me.done:
                if not self._running and len(self._waiting) >= self._members:
                    round_calls, self._waiting = self._waiting, []
                    self._running = True
                    break
                self._cond.wait()
            else:
                return _outcome(me)
        try:  # this thread runs the round, outside the lock (the others wait for it)
            self._run_round(round_calls)
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()
        return _outcome(me)

    def _run_round(self, calls: list[_Call]) -> None:
        groups: dict[Hashable, list[_Call]] = {}
        for call in calls:
            groups.setdefault(call.key, []).append(call)
        for group in groups.values():
            for start in range(0, len(group), self.max_batch):
                self._run_group(group[start:start + self.max_batch])
        self.stats["rounds"] += 1

    def _run_group(self, group: list[_Call]) -> None:
        self.stats["calls"] += len(group)
        if len(group) > 1:
            try:
                results = group[0].run_batch([call.payload for call in group])
            except Exception:  # noqa: BLE001 - retried one by one: a bad call fails only its own prompt
                results = None
            if results is not None:
                self.stats["batched_calls"] += len(group)
                for call, result in zip(group, results, strict=True):
                    call.result, call.done, call.batch_size = result, True, len(group)
                return
        for call in group:
            try:
                call.result = call.run_one(call.payload)
            except BaseException as exc:  # handed to the thread that made the call
                call.error = exc
            call.done = True


def _outcome(call: _Call) -> Any:
    if call.error is not None:
        raise call.error
    return call.result
