"""Safe file access: every user-supplied name is resolved inside an allowed root, or refused."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

_COUNTER = re.compile(r"_(\d{5,})_\.[A-Za-z0-9]+$")
PARTIAL_PREFIX = ".partial."
"""`save_new_file`'s temporary files: `.partial.<writer pid>.<random>.<ext>`, hidden, never a result."""
_PARTIAL = re.compile(r"^\.partial\.(\d+)\.")


class UnsafePath(ValueError):
    """A name that would escape its root: `..`, absolute paths, NUL bytes, symlinks pointing out."""


def safe_join(root: str | os.PathLike[str], name: str) -> Path:
    """Resolve `name` under `root` (symlinks followed) and refuse anything that lands outside it.

    Args:
        root: the allowed directory.
        name: a relative name from a user or a workflow, e.g. "sub/image.png".
    """
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"empty or non-text file name {name!r}")
    if "\x00" in name:
        raise UnsafePath(f"file name {name!r} contains a NUL byte")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or os.path.isabs(name):
        raise UnsafePath(f"file name {name!r} is absolute")
    parts = re.split(r"[\\/]", name)
    if any(part == ".." for part in parts):
        raise UnsafePath(f"file name {name!r} contains '..'")
    base = Path(root).resolve()
    target = (base / Path(*[p for p in parts if p not in ("", ".")])).resolve()
    if target != base and base not in target.parents:
        raise UnsafePath(f"file name {name!r} resolves outside its folder")
    return target


def output_prefix_problem(prefix: str, env: object) -> str | None:
    """What keeps a file name prefix ("portraits/face", SaveImage's `filename_prefix`) from naming files inside
    `env.output_dir`, or None: `..`, an absolute path, a NUL byte, or a folder part that is a symlink
    pointing out. An `InputSpec.check`, so a bad prefix is refused before its prompt is queued."""
    parts = re.split(r"[\\/]", prefix)
    if "\x00" in prefix:
        return "contains a NUL byte"
    if prefix.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", prefix) or os.path.isabs(prefix):
        return "is an absolute path; use a name inside the output folder"
    if ".." in parts:
        return "contains '..'; use a name inside the output folder"
    root = getattr(env, "output_dir", None)
    if root is not None:
        try:
            safe_join(root, f"{prefix}_00000_.png")
        except UnsafePath:
            return "leads out of the output folder (a symlink pointing out)"
    return None


def list_files(root: str | os.PathLike[str], extensions: Iterable[str] | None = None) -> list[str]:
    """Relative names (with forward slashes) of files under `root` whose real path stays inside it."""
    base = Path(root)
    if not base.is_dir():
        return []
    real_base = base.resolve()
    wanted = {ext.lower() for ext in extensions} if extensions is not None else None
    names = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            if wanted is not None and path.suffix.lower() not in wanted:
                continue
            real = path.resolve()
            if real_base not in real.parents:
                continue  # a symlink pointing out of the folder
            names.append(path.relative_to(base).as_posix())
    return sorted(names)


def _next_counter(folder: Path, stem: str, extension: str) -> int:
    highest = 0
    for existing in folder.glob(f"{glob_escape(stem)}_*_.{extension}"):
        match = _COUNTER.search(existing.name)
        if match and existing.name[: match.start()] == stem:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def next_counter(directory: str | os.PathLike[str], prefix: str, extension: str) -> int:
    """The counter `save_new_file` would give the next `prefix_NNNNN_.ext` now (another writer may take it
    first; for titles and names recorded inside a file)."""
    target = safe_join(directory, f"{prefix}_00000_.{extension}")
    return _next_counter(target.parent, target.name[: -len(f"_00000_.{extension}")], extension)


def save_new_file(directory: str | os.PathLike[str], prefix: str, extension: str,
                  data: bytes | Callable[[Path], None]) -> Path:
    """Write `data` to a new `prefix_00001_.ext` in `directory` (ComfyUI's naming), atomically and
    never overwriting: the bytes go to a temporary file that is then hard-linked under the first free name.

    `prefix` may name a subfolder ("portraits/face"), created inside `directory`; it cannot leave it.
    `data` may be a function that writes the file at the path it is given (a model saved straight to disk,
    never held in memory as bytes).
    """
    target = safe_join(directory, f"{prefix}_00000_.{extension}")
    folder, stem = target.parent, target.name[: -len(f"_00000_.{extension}")]
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{PARTIAL_PREFIX}{os.getpid()}.", suffix=f".{extension}")
    try:
        with os.fdopen(fd, "wb") as handle:
            if not callable(data):
                handle.write(data)
        if callable(data):
            data(Path(tmp))
        counter = _next_counter(folder, stem, extension)
        while True:
            candidate = folder / f"{stem}_{counter:05d}_.{extension}"
            try:
                os.link(tmp, candidate)  # fails if the name exists: no overwrite, even between processes
            except FileExistsError:
                counter += 1
                continue
            return candidate
    finally:
        Path(tmp).unlink(missing_ok=True)


def remove_stale_partials(root: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files `save_new_file` left under `root` when its process was killed mid-write
    (their writer's pid is in the name and no longer runs); a running writer's files are left alone.
    Returns what was removed."""
    if os.name != "posix" or not Path(root).is_dir():
        return []
    removed = []
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            match = _PARTIAL.match(filename)
            if match is None or _process_alive(int(match.group(1))):
                continue
            path = Path(dirpath) / filename
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid we can ask about: leave its files
    return True


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
