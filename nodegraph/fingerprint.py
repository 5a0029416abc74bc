"""File fingerprints: the one contract for nodes that read files (`Node.fingerprint`).

A node that reads a file must put the file's fingerprint in its cache key, so replacing or editing the file
re-runs the node and everything downstream. The fingerprint is a digest of the file's *content*, so copying,
touching or restoring a file does not throw away what is cached for the same bytes; it is memoised by the
file's identity on disk (path, size, mtime_ns, ctime_ns, inode, device), so an unchanged file costs one
`stat` per run and is read again only when one of those changes. As in git's "racily clean" rule, a digest
taken less than `RACY_NS` after the file's last change is not trusted (a write in the same clock tick keeps
the same times), so a file written just now is read again until it has been left alone that long.

Files up to `FULL_HASH_LIMIT` (images, embeddings, most LoRAs) are hashed whole. Larger ones (checkpoints
of several GB) are hashed from a bounded sample, `SAMPLE_CHUNKS` chunks of `SAMPLE_CHUNK` bytes: the start
of the file (for safetensors the whole JSON header, which names every tensor with its dtype, shape and
offsets, plus the metadata), chunks spread evenly through the data, the end, and the size. That is enough
because such files are replaced whole (a download, a merge, a conversion, a fine-tune writes a new file),
and a different model differs in its header or size, or in the weights of every sampled chunk; the stat
memo guarantees the sample is re-read after any write. What it cannot see is an in-place edit of a few
bytes between the samples that keeps the size, which is not how model files change.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_module
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path

FULL_HASH_LIMIT = 64 * 1024**2
"""Files up to this size are hashed whole."""
SAMPLE_CHUNK = 1024**2
SAMPLE_CHUNKS = 16
"""Chunks read from a larger file: its start, its end and the rest spread evenly between them."""
SAFETENSORS_HEADER_LIMIT = 64 * 1024**2
"""A safetensors header is hashed whole up to this size (real ones are well under a few MB)."""
RACY_NS = 2_000_000_000
"""A digest is memoised only once it was taken this long after the file's mtime and ctime (timestamp ticks)."""
MEMO_ENTRIES = 4096
_READ = 1024**2


def _stat_key(path: Path, stat: os.stat_result) -> tuple[object, ...]:
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def _full_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ):
            digest.update(chunk)
    return "blake2b:" + digest.hexdigest()


def _safetensors_header_length(head: bytes, size: int) -> int | None:
    """The JSON header's length when `head` starts like a safetensors file (8-byte little-endian length, '{')."""
    if len(head) < 9:
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 0 < length <= min(size - 8, SAFETENSORS_HEADER_LIMIT):
        return length
    return None


def _sampled_digest(path: Path, size: int) -> str:
    """Size, the safetensors header (if any) and `SAMPLE_CHUNKS` evenly spaced chunks, start and end included."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"size={size};".encode())
    with open(path, "rb") as handle:
        head = handle.read(SAMPLE_CHUNK)
        header = _safetensors_header_length(head, size)
        if header is not None and 8 + header > len(head):
            handle.seek(0)
            head = handle.read(8 + header)
        digest.update(head)
        last = size - SAMPLE_CHUNK
        for i in range(1, SAMPLE_CHUNKS):
            handle.seek(last * i // (SAMPLE_CHUNKS - 1))
            digest.update(handle.read(SAMPLE_CHUNK))
    return f"sampled-blake2b:{digest.hexdigest()}"


class FileFingerprints:
    """Content digests of files, memoised by each file's identity on disk; thread-safe.

    Owned by the engine (`Engine.fingerprints`) and reached by nodes through `NodeContext.fingerprint_file`.

    Args:
        max_entries: how many files' digests are remembered (least recently used go first).
    """

    def __init__(self, max_entries: int = MEMO_ENTRIES) -> None:
        self.max_entries = max_entries
        self._memo: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0
        """How many times a file's content was read (memo misses), for tests and logs."""

    def file(self, path: str | os.PathLike[str]) -> str:
        """The digest of one file. Raises OSError (e.g. FileNotFoundError) when it cannot be read."""
        path = Path(path).resolve()
        stat = path.stat()
        if not stat_module.S_ISREG(stat.st_mode):
            raise IsADirectoryError(f"{path} is not a file")
        key = _stat_key(path, stat)
        with self._lock:
            known = self._memo.get(key)
            if known is not None:
                self._memo.move_to_end(key)
                return known
        digest = _full_digest(path) if stat.st_size <= FULL_HASH_LIMIT else _sampled_digest(path, stat.st_size)
        with self._lock:
            self.reads += 1
            if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) >= RACY_NS:
                self._memo[key] = digest
                while len(self._memo) > self.max_entries:
                    self._memo.popitem(last=False)
        return digest

    def path(self, path: str | os.PathLike[str]) -> str:
        """A file's digest, or for a folder (a diffusers model) one digest over every file's name and digest."""
        path = Path(path).resolve()
        if not path.is_dir():
            return self.file(path)
        digest = hashlib.blake2b(digest_size=20)
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}={self.file(file)};".encode())
        return "tree-blake2b:" + digest.hexdigest()

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()

    def __len__(self) -> int:
        return len(self._memo)
