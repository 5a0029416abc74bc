"""The prompt queue and history in SQLite: every state change is one transaction, so a crash loses nothing.

A prompt row moves pending -> running -> done. `attempts` counts how often a worker claimed it; after a
crash, `recover()` puts a prompt that was running back in the queue while it has attempts left and marks
it failed (with the reason, in its history entry) once it has none, so a prompt that kills the process
cannot loop forever, and one that completed is never run again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import jsonsafe

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    client_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    history_seq INTEGER,
    outputs TEXT,
    status TEXT,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS prompts_queue ON prompts (state, number, seq);
CREATE INDEX IF NOT EXISTS prompts_history ON prompts (state, history_seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DuplicatePrompt(ValueError):
    """A prompt with this id is queued, running or in the history: a new submission needs a new id."""


class StoreLocked(RuntimeError):
    """Another server uses this data dir: two workers on one queue would run prompts twice."""


@dataclass(frozen=True)
class QueueItem:
    """One queued prompt, as ComfyUI's `[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    client_id: str | None
    attempts: int

    def as_comfy(self) -> list[Any]:
        number: float | int = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]


class QueueStore:
    """Thread-safe SQLite store of queued, running and finished prompts.

    Args:
        path: the database file (created with its folder); ":memory:" for a throwaway store.
        durable: fsync the commit that queues a prompt (`synchronous=FULL`), so even a power cut loses no
            acknowledged prompt; off, a process crash still loses nothing (WAL), only an OS crash may.
            Claiming and finishing a prompt are never fsynced: in WAL mode a killed process loses neither, and
            the next durable commit makes them durable too. An OS crash in between can at worst run a prompt
            that had just completed once more; it saves two fsyncs (about 5 ms here) on every prompt, which is
            most of what a fully cached re-run costs.
    """

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        self._lock_file: Any = None
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = _exclusive_lock(Path(f"{path}.lock"))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._durable = durable
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock (so does the OS when the process dies)
            self._lock_file = None

    def _transaction(self, *, fsync: bool = True) -> _Transaction:
        return _Transaction(self._db, self._lock, relaxed=self._durable and not fsync)

    # -- the queue -----------------------------------------------------------------------------------

    def add(self, prompt_id: str, prompt: dict[str, Any], extra_data: dict[str, Any], outputs: list[str], *,
            client_id: str | None = None, front: bool = False, number: float | None = None) -> tuple[float, int]:
        """Queue a prompt; returns (its number, prompts remaining). `front` queues it before all others
        (ComfyUI's negative number); an explicit `number` orders it among them. An id that is queued,
        running or still in the history is refused (`DuplicatePrompt`): reusing it would mix two prompts'
        results; once its history entry is deleted the id is free again."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM prompts WHERE prompt_id = ?", (prompt_id,)).fetchone()
            if row is not None:
                if row["state"] == "done":
                    raise DuplicatePrompt(f"prompt {prompt_id!r} already ran; submit it under a new prompt_id")
                raise DuplicatePrompt(f"prompt {prompt_id!r} is already {row['state']}")
            if number is None:
                counter = _next(db, "number")
                number = float(-counter if front else counter)
            db.execute(
                "INSERT INTO prompts (prompt_id, number, state, prompt, extra_data, outputs_to_execute, client_id,"
                " created_at) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                (prompt_id, number, _dump(prompt), _dump(extra_data), _dump(outputs), client_id, time.time()))
            return number, _remaining(db)

    def claim_next(self) -> QueueItem | None:
        """Mark the first pending prompt running (one attempt more) and return it; None when none waits."""
        with self._transaction(fsync=False) as db:
            row = db.execute("SELECT * FROM prompts WHERE state = 'pending' ORDER BY number, seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE prompts SET state = 'running', attempts = attempts + 1, started_at = ? WHERE seq = ?",
                       (time.time(), row["seq"]))
            return _item(row, attempts=row["attempts"] + 1)

    def finish(self, prompt_id: str, outputs: dict[str, Any], status: dict[str, Any],
               meta: dict[str, Any]) -> int:
        """Move a running prompt to the history; returns prompts remaining."""
        with self._transaction(fsync=False) as db:
            db.execute(
                "UPDATE prompts SET state = 'done', finished_at = ?, history_seq = ?, outputs = ?, status = ?, meta = ?"
                " WHERE prompt_id = ? AND state = 'running'",
                (time.time(), _next(db, "history"), _dump(outputs), _dump(status), _dump(meta), prompt_id))
            return _remaining(db)

    def release(self, prompt_id: str) -> None:
        """Put a running prompt back in the queue without counting the attempt (a clean shutdown stopped it)."""
        with self._transaction() as db:
            db.execute("UPDATE prompts SET state = 'pending', attempts = MAX(attempts - 1, 0), started_at = NULL"
                       " WHERE prompt_id = ? AND state = 'running'", (prompt_id,))

    def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a crash: re-queue prompts left running that have attempts left, fail the others.

        Returns (re-queued ids, failed ids).
        """
        requeued, failed = [], []
        with self._transaction() as db:
            for row in db.execute("SELECT * FROM prompts WHERE state = 'running' ORDER BY seq").fetchall():
                if row["attempts"] < max_attempts:
                    db.execute("UPDATE prompts SET state = 'pending', started_at = NULL WHERE seq = ?", (row["seq"],))
                    requeued.append(row["prompt_id"])
                    continue
                _fail(db, row, "ServerStopped", f"the server stopped while this prompt was running, {row['attempts']} "
                      f"time(s) of {max_attempts} allowed; it is not tried again")
                failed.append(row["prompt_id"])
        return requeued, failed

    def claim_more(self, accept: Callable[[dict[str, Any]], bool], limit: int, scan: int = 64) -> list[QueueItem]:
        """Claim up to `limit` more pending prompts, in queue order among the first `scan`, whose prompt
        `accept` takes (prompts a worker can run side by side with one it has just claimed)."""
        claimed: list[QueueItem] = []
        with self._transaction(fsync=False) as db:
            rows = db.execute("SELECT * FROM prompts WHERE state = 'pending' ORDER BY number, seq LIMIT ?",
                              (scan,)).fetchall()
            for row in rows:
                if len(claimed) == limit:
                    break
                item = _item(row, attempts=row["attempts"] + 1)
                if accept(item.prompt):
                    db.execute("UPDATE prompts SET state = 'running', attempts = attempts + 1, started_at = ?"
                               " WHERE seq = ?", (time.time(), row["seq"]))
                    claimed.append(item)
        return claimed

    def requeue_lost(self, prompt_id: str, max_attempts: int, reason: str) -> bool:
        """A worker died running this prompt: back in the queue (True) while it has attempts left, else
        recorded as failed with `reason`. Only a prompt still running is touched, so it never runs twice."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM prompts WHERE prompt_id = ? AND state = 'running'", (prompt_id,)).fetchone()
            if row is None:
                return False
            if row["attempts"] < max_attempts:
                db.execute("UPDATE prompts SET state = 'pending', started_at = NULL WHERE seq = ?", (row["seq"],))
                return True
            _fail(db, row, "WorkerLost", f"{reason}; tried {row['attempts']} time(s) of {max_attempts} allowed")
            return False

    def queue(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(running, pending), pending in the order they will run."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM prompts WHERE state IN ('running', 'pending')"
                                    " ORDER BY state = 'pending', number, seq").fetchall()
        items = [(row["state"], _item(row)) for row in rows]
        return [i for s, i in items if s == "running"], [i for s, i in items if s == "pending"]

    def remaining(self) -> int:
        """Prompts pending or running (ComfyUI's `queue_remaining` counts the running one)."""
        with self._lock:
            return _remaining(self._db)

    def state(self, prompt_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM prompts WHERE prompt_id = ?", (prompt_id,)).fetchone()
        return None if row is None else row["state"]

    def delete_pending(self, prompt_ids: list[str] | None = None) -> int:
        """Drop pending prompts (all when `prompt_ids` is None); a running one is left alone."""
        with self._transaction() as db:
            if prompt_ids is None:
                cursor = db.execute("DELETE FROM prompts WHERE state = 'pending'")
            else:
                cursor = db.executemany("DELETE FROM prompts WHERE state = 'pending' AND prompt_id = ?",
                                        [(pid,) for pid in prompt_ids])
            return cursor.rowcount

    # -- the history ---------------------------------------------------------------------------------

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, dict[str, Any]]:
        """Finished prompts oldest first, as ComfyUI pages them: the last `max_items` when no offset is given,
        else `max_items` from position `offset`."""
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM prompts WHERE state = 'done'").fetchone()[0]
            if offset < 0:
                offset = max(total - max_items, 0) if max_items is not None else 0
            limit = -1 if max_items is None else max(max_items, 0)
            rows = self._db.execute("SELECT * FROM prompts WHERE state = 'done' ORDER BY history_seq"
                                    " LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return {row["prompt_id"]: _history_entry(row) for row in rows}

    def history_item(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM prompts WHERE prompt_id = ? AND state = 'done'",
                                   (prompt_id,)).fetchone()
        return None if row is None else _history_entry(row)

    def delete_history(self, prompt_ids: list[str] | None = None) -> int:
        with self._transaction() as db:
            if prompt_ids is None:
                cursor = db.execute("DELETE FROM prompts WHERE state = 'done'")
            else:
                cursor = db.executemany("DELETE FROM prompts WHERE state = 'done' AND prompt_id = ?",
                                        [(pid,) for pid in prompt_ids])
            return cursor.rowcount


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT` under the store's lock; rolled back on any error. `relaxed` commits
    without an fsync (`synchronous=NORMAL` for this transaction only)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, *, relaxed: bool = False) -> None:
        self._db, self._lock, self._relaxed = db, lock, relaxed

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            if self._relaxed:
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restore()
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        finally:
            self._restore()
            self._lock.release()

    def _restore(self) -> None:
        if self._relaxed:
            self._db.execute("PRAGMA synchronous=FULL")


def check_not_locked(path: str | Path) -> None:
    """Raise StoreLocked now if another server holds the store at `path` (the lock is let go again at once), so
    a second server fails in a moment instead of after loading every node pack."""
    if str(path) != ":memory:" and Path(path).parent.is_dir():
        _exclusive_lock(Path(f"{path}.lock")).close()


def _exclusive_lock(path: Path) -> Any:
    """Hold an exclusive advisory lock on `path` for as long as the returned file stays open."""
    handle = open(path, "a+")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; SQLite's own locking still keeps the data consistent
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StoreLocked(f"{path.parent} is in use by another nodegraph server") from None
    return handle


def _fail(db: sqlite3.Connection, row: sqlite3.Row, kind: str, reason: str) -> None:
    data = {"prompt_id": row["prompt_id"], "node_id": None, "node_type": None, "executed": [],
            "exception_message": reason, "exception_type": kind, "traceback": [],
            "current_inputs": {}, "current_outputs": [], "timestamp": int(time.time() * 1000)}
    status = {"status_str": "error", "completed": False, "messages": [["execution_error", data]]}
    db.execute("UPDATE prompts SET state = 'done', finished_at = ?, history_seq = ?, outputs = '{}',"
               " status = ?, meta = '{}' WHERE seq = ?", (time.time(), _next(db, "history"), _dump(status), row["seq"]))


def _next(db: sqlite3.Connection, name: str) -> int:
    db.execute("INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1",
               (name,))
    return db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]


def _remaining(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM prompts WHERE state IN ('pending', 'running')").fetchone()[0]


def _dump(value: Any) -> str:
    return jsonsafe.dumps(value, separators=(",", ":"))  # standard JSON: /queue and /history serve it back


def _item(row: sqlite3.Row, attempts: int | None = None) -> QueueItem:
    return QueueItem(number=row["number"], prompt_id=row["prompt_id"], prompt=json.loads(row["prompt"]),
                     extra_data=json.loads(row["extra_data"]), outputs_to_execute=json.loads(row["outputs_to_execute"]),
                     client_id=row["client_id"], attempts=row["attempts"] if attempts is None else attempts)


def _history_entry(row: sqlite3.Row) -> dict[str, Any]:
    return {"prompt": _item(row).as_comfy(), "outputs": json.loads(row["outputs"] or "{}"),
            "status": json.loads(row["status"] or "{}"), "meta": json.loads(row["meta"] or "{}")}
