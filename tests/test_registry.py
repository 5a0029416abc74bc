"""Node declarations and the registry: one declaration, checked; node packs through entry points."""

import pytest
from pydantic import ValidationError

from fake_nodes import Number
from nodegraph import Combo, InputSpec, Int, Node, NodeRegistry, NodeSchema, default_registry
from nodegraph.registry import RegistryError


def test_declarations_are_checked():
    with pytest.raises(ValidationError, match="duplicate input names"):
        NodeSchema(type_id="X", inputs=(Int("a"), Int("a")))
    with pytest.raises(ValidationError, match="upper-case"):
        InputSpec(name="a", type="latent")
    with pytest.raises(ValidationError, match="needs options"):
        InputSpec(name="a", type="COMBO")
    with pytest.raises(ValidationError, match="min 5 > max 1"):
        Int("a", min=5, max=1)
    assert Combo("mode", ["x", "y"]).default == "x"


def test_registry_refuses_duplicates_and_non_nodes():
    registry = NodeRegistry([Number])
    registry.register(Number)  # the same class again is harmless

    class Other(Node):
        schema = Number.schema

    with pytest.raises(RegistryError, match="already registered"):
        registry.register(Other)
    with pytest.raises(RegistryError, match="no NodeSchema"):
        registry.register(object)


def test_installed_packs_register_through_entry_points():
    registry = default_registry()
    assert "SaveText" in registry and registry.load_errors == {}
