"""One owner for every loaded model: loads once, counts bytes once, keeps what fits on the compute device.

Node packs never hold a model object across runs. A loader node asks the `ModelManager` for a `ModelRef`
(a key plus how to load what it names) and puts the ref in its output; code that computes asks the ref for
the object (`ref.get()`) when it needs it. So the output cache holds only refs, and the manager alone
decides what stays loaded: models live on the compute device while they fit a budget measured from it
(free memory less a reserve for activations); the least recently used move to CPU RAM to make room; and
under a RAM budget measured from the machine the least recently used are dropped and reloaded from disk if
asked for again. Derived models (a LoRA-merged copy, a compiled UNet, an fp32 copy of an fp16 VAE) are refs
too: built from their base once and kept while used, their bytes counted as only what they add.

Modes follow ComfyUI: "highvram" keeps every model on the device, "normalvram" (default) budgets as above,
"lowvram" keeps weights in RAM and streams each block to the device while it runs, "cpu" computes on the CPU.
The engine itself knows nothing of Stable Diffusion: objects are moved with `.to(device)` when they have it,
sized by their torch parameters and buffers (or an `nbytes` attribute), and torch is imported only if a
node pack already did.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from .memory import (  # noqa: F401  (re-exported: the manager's public helpers)
    device_memory,
    host_memory,
    model_nbytes,
    move,
    release_memory,
    return_large_frees_to_the_os,
    stream_blocks,
)

log = logging.getLogger(__name__)

Mode = Literal["highvram", "normalvram", "lowvram", "cpu"]
MODES: tuple[str, ...] = ("highvram", "normalvram", "lowvram", "cpu")
GiB = 1024**3

Loader = Callable[[str], Any]
"""Loads a model onto the device it is given ("cpu", "cuda", ...)."""


class ModelRef:
    """A model the manager owns, by key: what node outputs carry instead of the model object.

    Equal keys are the same model; `get()` returns the loaded object (loading or reloading it when needed),
    placed where the manager's mode says.
    """

    __slots__ = ("manager", "key", "loader", "name", "base", "build", "size", "size_hint")

    def __init__(self, manager: ModelManager, key: Hashable, *, name: str, loader: Loader | None = None,
                 base: ModelRef | None = None, build: Callable[[Any], Any] | None = None,
                 size: Callable[[Any], int] | None = None, size_hint: int | None = None) -> None:
        if (loader is None) == (build is None and base is None):
            raise ValueError(f"model {name!r}: give either a loader or a base and a build function")
        self.manager, self.key, self.name = manager, key, name
        self.loader, self.base, self.build, self.size = loader, base, build, size
        self.size_hint = size_hint
        """The bytes it will take once loaded, when the loader can tell beforehand (from a file's header):
        room is made before loading, so the old and the new model never peak together."""

    def get(self) -> Any:
        """The model object, loaded and placed (see ModelManager.get)."""
        return self.manager.get(self)

    def derive(self, tag: Hashable, build: Callable[[Any], Any], *, name: str | None = None,
               size: Callable[[Any], int] | None = None) -> ModelRef:
        """A model built from this one by `build(base_object)` (a patched or compiled copy), cached by the
        manager under (this key, tag). `size` gives the bytes it adds beyond its base (default: none, for a
        copy that shares every tensor with its base)."""
        return ModelRef(self.manager, (self.key, tag), name=name or f"{self.name} + {tag}", base=self,
                        build=build, size=size or (lambda _: 0))

    @property
    def root(self) -> ModelRef:
        """The loaded-from-disk model this one derives from (itself when it is one)."""
        return self if self.base is None else self.base.root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelRef) and other.manager is self.manager and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"ModelRef({self.name!r})"


@dataclass
class _Entry:
    ref: ModelRef
    value: Any
    nbytes: int
    device: str
    """Where its weights are: the compute device, or "cpu" (offloaded, streamed, or the CPU is the device)."""
    last_used: int = 0
    pins: int = 0
    loads: int = 1
    movable: bool = True
    streamed: bool = False
    dependants: set[Hashable] = field(default_factory=set)


@dataclass(frozen=True)
class ModelStats:
    name: str
    device: str
    nbytes: int
    pinned: bool
    loads: int
    derived: bool


class ModelManager:
    """Owns every loaded model (see the module docstring).

    Args:
        device: the compute device ("cpu", "cuda", "cuda:1").
        mode: "highvram", "normalvram", "lowvram" or "cpu" (ComfyUI's flags of the same names).
        reserve_vram: bytes of device memory kept free for activations (default: 1 GiB or 10 % of the
            device, whichever is larger).
        vram_budget: bytes of models allowed on the device; measured from the device when None.
        ram_budget: bytes of models allowed in CPU RAM; measured from the machine when None (what is
            available at start, less 2 GiB or 15 % of RAM, whichever is larger).
    """

    def __init__(self, device: str = "cpu", *, mode: str = "normalvram", reserve_vram: int | None = None,
                 vram_budget: int | None = None, ram_budget: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown memory mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode: str = mode
        self.device = "cpu" if mode == "cpu" else device
        self.reserve_vram = reserve_vram
        self._vram_budget = vram_budget
        if ram_budget is None:
            total, available = host_memory()
            ram_budget = max(available - max(2 * GiB, int(0.15 * total)), GiB)
        self.ram_budget = ram_budget
        self._entries: dict[Hashable, _Entry] = {}
        self._clock = itertools.count(1)
        self._lock = threading.RLock()
        self._load_counts: dict[Hashable, int] = {}
        self.loads = 0
        """Models loaded from disk or built from a base, ever (a test counts reloads with it)."""
        self.evictions = 0
        self.offloads = 0

    # -- what nodes call ----------------------------------------------------------------------------------

    def ref(self, key: Hashable, loader: Loader, *, name: str, size_hint: int | None = None) -> ModelRef:
        """A ref to the model under `key`, loaded by `loader(device)` when first asked for. Nothing loads now.

        `size_hint`: its bytes once loaded, if known beforehand; then room is made before it loads, and a
        model larger than the whole device budget is kept in RAM and streamed (as in lowvram).
        """
        return ModelRef(self, key, name=name, loader=loader, size_hint=size_hint)

    def get(self, ref: ModelRef) -> Any:
        """The object `ref` names, loaded if needed, on the compute device when the mode and budget allow.

        Loading or moving it may move the least recently used unpinned models to CPU RAM or drop them.
        """
        with self._lock:
            entry = self._entries.get(ref.key)
            if entry is None:
                entry = self._load(ref)
            elif self._wants_device() and entry.device != self.device and entry.movable and not entry.streamed:
                self._to_device(entry)
            entry.last_used = next(self._clock)
            return entry.value

    @contextmanager
    def using(self, *refs: ModelRef | None) -> Iterator[list[Any]]:
        """Load `refs` and keep them (and their bases) from being moved or dropped until the block ends."""
        pinned: list[_Entry] = []
        try:
            values = []
            for ref in refs:
                if ref is None:
                    continue
                with self._lock:
                    values.append(self.get(ref))
                    for entry in self._chain(ref):
                        entry.pins += 1
                        pinned.append(entry)
            yield values
        finally:
            with self._lock:
                for entry in pinned:
                    entry.pins -= 1

    def unload(self, ref: ModelRef) -> None:
        """Drop one model (and what derives from it) from memory; its ref reloads it if asked again."""
        with self._lock:
            entry = self._entries.get(ref.key)
            if entry is not None:
                self._drop(entry)
        release_memory()

    def free(self) -> int:
        """Drop every model not in use right now (POST /free); returns the bytes released by our count."""
        with self._lock:
            before = self.loaded_bytes()
            for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
                if entry.ref.key in self._entries and not entry.pins:
                    self._drop(entry)
            released = before - self.loaded_bytes()
        release_memory()
        return released

    # -- accounting ---------------------------------------------------------------------------------------

    def loaded_bytes(self, device: str | None = None) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if device is None or e.device == device)

    def is_loaded(self, ref: ModelRef) -> bool:
        return ref.key in self._entries

    def vram_budget(self) -> int | None:
        """Bytes of models the compute device may hold: free memory plus what we hold there, less the
        reserve; None on the CPU. highvram has no budget (keeps everything), lowvram keeps nothing."""
        if self._vram_budget is not None:
            return self._vram_budget
        memory = device_memory(self.device)
        if memory is None:
            return None
        total, free = memory
        reserve = self.reserve_vram if self.reserve_vram is not None else max(GiB, total // 10)
        return max(free + self.loaded_bytes(self.device) - reserve, 0)

    def stats(self) -> dict[str, Any]:
        """What is loaded where, for /system_stats and logs."""
        with self._lock:
            models = [ModelStats(e.ref.name, e.device, e.nbytes, e.pins > 0, e.loads, e.ref.base is not None)
                      for e in sorted(self._entries.values(), key=lambda e: -e.last_used)]
            return {
                "mode": self.mode, "device": self.device, "vram_budget": self.vram_budget(),
                "ram_budget": self.ram_budget, "device_bytes": self.loaded_bytes(self.device),
                "ram_bytes": self._ram_bytes(), "loads": self.loads, "evictions": self.evictions,
                "offloads": self.offloads, "models": [vars(m) for m in models],
            }

    # -- internals ----------------------------------------------------------------------------------------

    def _wants_device(self) -> bool:
        return self.device != "cpu" and self.mode in ("highvram", "normalvram")

    def _ram_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values() if e.device == "cpu")

    def _chain(self, ref: ModelRef) -> list[_Entry]:
        """The entry of `ref` and of every base it derives from."""
        chain = []
        while ref is not None:
            entry = self._entries.get(ref.key)
            if entry is not None:
                chain.append(entry)
            ref = ref.base  # type: ignore[assignment]
        return chain

    def _load(self, ref: ModelRef) -> _Entry:
        if ref.base is not None:
            base_value = self.get(ref.base)
            base = self._entries[ref.base.key]
            base.pins += 1
            try:
                assert ref.build is not None and ref.size is not None
                value = ref.build(base_value)
                nbytes = ref.size(value)
            finally:
                base.pins -= 1
            base.dependants.add(ref.key)
            entry = _Entry(ref, value, nbytes, base.device)
        else:
            device = self.device if self._wants_device() else "cpu"
            stream = self.mode == "lowvram" and self.device != "cpu"
            if ref.size_hint is not None:
                budget = self._device_budget()
                if budget is not None and ref.size_hint > budget:
                    device, stream = "cpu", True  # can never fit: keep it in RAM, stream its blocks
                self._make_room(ref.size_hint, device)
            assert ref.loader is not None
            value = ref.loader(device)
            movable = callable(getattr(value, "to", None))  # a parsed file (LoRA) stays in CPU RAM
            entry = _Entry(ref, value, model_nbytes(value), device if movable else "cpu", movable=movable)
            if stream and movable:
                stream_blocks(value, self.device)
                entry.streamed = True
        entry.loads = self._load_counts[ref.key] = self._load_counts.get(ref.key, 0) + 1
        self.loads += 1
        entry.last_used = next(self._clock)
        self._entries[ref.key] = entry
        entry.pins += 1  # the new model is never its own eviction victim
        try:
            self._make_room(0, self.device)  # the budgets hold again
        finally:
            entry.pins -= 1
        return entry

    def _to_device(self, entry: _Entry) -> None:
        """Move an offloaded model back to the compute device; what derives from it is rebuilt there."""
        for key in list(entry.dependants):
            dependant = self._entries.get(key)
            if dependant is not None and not dependant.pins:
                self._drop(dependant)
        if entry.ref.base is not None:  # a derived copy shares its base's tensors: rebuild, never move
            self._drop(entry)
            self._load(entry.ref)
            return
        entry.pins += 1
        try:
            entry.value = move(entry.value, self.device)
            entry.device = self.device
            self._make_room(0, self.device)  # the budgets hold again
        finally:
            entry.pins -= 1

    def _device_budget(self) -> int | None:
        """The device budget eviction works to, or None where nothing is offloaded for room."""
        return self.vram_budget() if self._wants_device() and self.mode != "highvram" else None

    def _make_room(self, incoming: int, device: str) -> None:
        """Offload (device) and drop (RAM) the least recently used unpinned models until `incoming` more
        bytes on `device` fit the budgets."""
        budget = self._device_budget()
        if budget is not None:
            extra = incoming if device == self.device else 0
            for victim in self._victims(on_device=True):
                if self.loaded_bytes(self.device) + extra <= budget:
                    break
                self._offload(victim)
        extra = incoming if device == "cpu" else 0
        for victim in self._victims(on_device=False):
            if self._ram_bytes() + extra <= self.ram_budget:
                break
            self._drop(victim)

    def _victims(self, *, on_device: bool) -> list[_Entry]:
        where = self.device if on_device else "cpu"
        if on_device and where == "cpu":
            return []
        return sorted((e for e in self._entries.values() if not e.pins and e.device == where), key=lambda e: e.last_used)

    def _offload(self, entry: _Entry) -> None:
        """Move a model to CPU RAM (derived copies are dropped instead: they are rebuilt where needed)."""
        if entry.ref.key not in self._entries:
            return
        if entry.ref.base is not None:
            self._drop(entry)
            return
        for key in list(entry.dependants):
            dependant = self._entries.get(key)
            if dependant is not None:
                self._drop(dependant)
        entry.value = move(entry.value, "cpu")
        entry.device = "cpu"
        self.offloads += 1
        log.info("moved %s (%.0f MB) to CPU RAM to make room on %s", entry.ref.name, entry.nbytes / 1e6, self.device)

    def _drop(self, entry: _Entry) -> None:
        for key in list(entry.dependants):
            dependant = self._entries.get(key)
            if dependant is not None:
                self._drop(dependant)
        self._entries.pop(entry.ref.key, None)
        base = entry.ref.base
        if base is not None and base.key in self._entries:
            self._entries[base.key].dependants.discard(entry.ref.key)
        entry.value = None
        self.evictions += 1
        log.info("unloaded %s (%.0f MB)", entry.ref.name, entry.nbytes / 1e6)


def resolve(model: Any) -> Any:
    """The object behind a ModelRef (loading it if need be); anything else is returned as it is."""
    return model.get() if isinstance(model, ModelRef) else model


def as_ref(model: Any, name: str = "model") -> ModelRef:
    """`model` itself when it is a ModelRef; else a ref to the object as it is, in a private unbudgeted
    manager (for handles built around plain modules in tests and scripts)."""
    if isinstance(model, ModelRef):
        return model
    return ModelManager(ram_budget=sys.maxsize).ref(("object", id(model)), lambda device: model, name=name)
