"""The model manager with fake models: loading once, byte accounting, eviction order, pins, derived models.

No torch weights here: a fake model only says its size and records where it was moved, which is all the
manager looks at. (tests/test_model_memory.py covers real checkpoints, LoRA merging and process RSS.)
"""

from __future__ import annotations

import pytest

from nodegraph.models import ModelManager, ModelRef, as_ref, resolve


class Fake:
    """A movable model of `nbytes` bytes that records every move."""

    def __init__(self, name: str, nbytes: int) -> None:
        self.name, self.nbytes, self.moves = name, nbytes, []

    def to(self, device: str) -> Fake:
        self.moves.append(device)
        return self


class Loads:
    """Loaders that make Fakes and count how often each was loaded."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.devices: dict[str, str] = {}

    def ref(self, manager: ModelManager, name: str, nbytes: int = 100) -> ModelRef:
        def load(device: str) -> Fake:
            self.count[name] = self.count.get(name, 0) + 1
            self.devices[name] = device
            return Fake(name, nbytes)

        return manager.ref(("fake", name), load, name=name)


def where(manager: ModelManager) -> dict[str, str]:
    return {m["name"]: m["device"] for m in manager.stats()["models"]}


def test_a_model_loads_once_and_is_counted_once() -> None:
    manager, loads = ModelManager(ram_budget=10_000), Loads()
    a = loads.ref(manager, "a")
    assert manager.loads == 0 and not manager.is_loaded(a)  # a ref alone loads nothing
    first = a.get()
    assert a.get() is first and loads.count == {"a": 1}
    again = loads.ref(manager, "a")  # another node asking for the same key
    assert again == a and hash(again) == hash(a) and again.get() is first and loads.count == {"a": 1}
    assert manager.loaded_bytes() == 100 and manager.stats()["ram_bytes"] == 100


def test_ram_budget_drops_the_least_recently_used_and_reloads_it_when_asked() -> None:
    manager, loads = ModelManager(ram_budget=250), Loads()
    a, b, c = (loads.ref(manager, name) for name in "abc")
    a.get(), b.get()
    a.get()  # a is now more recent than b
    c.get()  # 300 > 250: b goes, never the model just loaded
    assert sorted(where(manager)) == ["a", "c"] and manager.evictions == 1
    assert manager.loaded_bytes() <= 250
    b.get()  # evicts, never fails: b comes back from its loader, a (least recent) goes
    assert sorted(where(manager)) == ["b", "c"] and loads.count["b"] == 2


def test_a_pinned_model_is_never_evicted_and_a_lone_big_one_still_loads() -> None:
    manager, loads = ModelManager(ram_budget=150), Loads()
    a, b = loads.ref(manager, "a"), loads.ref(manager, "b")
    with manager.using(a):
        b.get()  # over budget, but a is in use: b (just loaded) stays too, over budget rather than failing
        assert sorted(where(manager)) == ["a", "b"]
        assert manager.stats()["models"][1]["pinned"] is True
    loads.ref(manager, "c").get()
    assert "a" not in where(manager) or "b" not in where(manager)
    huge = loads.ref(manager, "huge", nbytes=10_000)
    huge.get()
    assert where(manager) == {"huge": "cpu"}


def test_device_budget_moves_the_least_recently_used_to_cpu_ram_and_back() -> None:
    manager, loads = ModelManager("cuda", vram_budget=250, ram_budget=10_000), Loads()
    a, b, c = (loads.ref(manager, name) for name in "abc")
    model_a = a.get()
    b.get()
    assert loads.devices == {"a": "cuda", "b": "cuda"}  # loaded straight onto the device
    c.get()
    assert where(manager) == {"a": "cpu", "b": "cuda", "c": "cuda"} and model_a.moves == ["cpu"]
    assert manager.stats()["device_bytes"] == 200 and manager.stats()["ram_bytes"] == 100
    assert a.get() is model_a and model_a.moves == ["cpu", "cuda"]  # moved back, not reloaded
    assert where(manager) == {"a": "cuda", "b": "cpu", "c": "cuda"} and loads.count["a"] == 1
    assert manager.offloads == 2


def test_highvram_keeps_everything_on_the_device_and_lowvram_keeps_weights_in_ram() -> None:
    high, loads = ModelManager("cuda", mode="highvram", vram_budget=150, ram_budget=10_000), Loads()
    for name in "abc":
        loads.ref(high, name).get()
    assert set(where(high).values()) == {"cuda"}
    low = ModelManager("cuda", mode="lowvram", vram_budget=10_000, ram_budget=10_000)
    loads.ref(low, "d").get()
    assert where(low) == {"d": "cpu"} and loads.devices["d"] == "cpu"
    cpu = ModelManager("cuda", mode="cpu")
    assert cpu.device == "cpu" and cpu.vram_budget() is None


def test_derived_models_are_built_once_counted_by_what_they_add_and_go_with_their_base() -> None:
    manager, loads = ModelManager(ram_budget=10_000), Loads()
    base = loads.ref(manager, "base", nbytes=1000)
    builds: list[str] = []

    def patched(tag: str):
        def build(model: Fake) -> Fake:
            builds.append(tag)
            return Fake(f"{model.name}+{tag}", 0)

        return base.derive(("lora", tag), build, size=lambda _: 10)

    first = patched("A").get()
    assert patched("A").get() is first and builds == ["A"]  # sampling twice merges once
    patched("B").get()
    assert patched("A").get() is first and builds == ["A", "B"]  # A -> B -> A: nothing rebuilt or reloaded
    assert loads.count == {"base": 1} and manager.loaded_bytes() == 1020
    assert patched("A").root == base and patched("A") != patched("B")
    manager.unload(base)
    assert manager.loaded_bytes() == 0 and not manager.is_loaded(patched("A"))
    patched("A").get()
    assert loads.count == {"base": 2} and builds == ["A", "B", "A"]


def test_offloading_a_base_drops_its_derived_copies_which_are_rebuilt_on_the_device() -> None:
    manager, loads = ModelManager("cuda", vram_budget=150, ram_budget=10_000), Loads()
    base = loads.ref(manager, "base")
    derived = base.derive("merged", lambda model: Fake("merged", 0), size=lambda _: 10)
    derived.get()
    assert where(manager) == {"base": "cuda", "base + merged": "cuda"}
    loads.ref(manager, "other").get()  # 210 > 150: base (LRU) moves to RAM; its copy shared its tensors: dropped
    assert where(manager) == {"other": "cuda", "base": "cpu"}
    derived.get()
    assert where(manager)["base"] == "cuda" and where(manager)["base + merged"] == "cuda"


def test_free_drops_everything_not_in_use() -> None:
    manager, loads = ModelManager(ram_budget=10_000), Loads()
    a, b = loads.ref(manager, "a"), loads.ref(manager, "b", nbytes=50)
    a.get()
    with manager.using(b):
        assert manager.free() == 100
        assert where(manager) == {"b": "cpu"}
    assert manager.free() == 50 and manager.loaded_bytes() == 0 and manager.stats()["models"] == []


def test_unknown_mode_and_bad_refs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown memory mode 'turbo'.*highvram, normalvram, lowvram, cpu"):
        ModelManager(mode="turbo")
    with pytest.raises(ValueError, match="either a loader or a base"):
        ModelRef(ModelManager(), "k", name="nothing")


def test_plain_objects_resolve_as_themselves_and_wrap_into_refs() -> None:
    thing = Fake("plain", 5)
    assert resolve(thing) is thing
    ref = as_ref(thing)
    assert ref.get() is thing and as_ref(ref) is ref
