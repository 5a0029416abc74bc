"""Node declarations and the registry: one declaration, checked; node packs through entry points."""

import pytest
from pydantic import ValidationError

from fake_nodes import Number
from nodegraph import Combo, InputSpec, Int, Node, NodeRegistry, NodeSchema, Socket, default_registry
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


def _node(inputs, execute):
    schema = NodeSchema(type_id="Probe", inputs=inputs)
    return type("Probe", (Node,), {"schema": schema, "execute": classmethod(execute)})


def test_registration_checks_execute_against_the_schema():
    """Style point 17: the schema and execute's signature are checked against each other when a node registers."""
    registry = NodeRegistry()
    with pytest.raises(RegistryError, match=r"Probe .*input 'b' is declared but execute\(\) has no parameter 'b'"):
        registry.register(_node((Int("a"), Int("b")), lambda cls, ctx, a: (a,)))
    with pytest.raises(RegistryError, match=r"Probe .*parameter 'c' has no default and no declared input"):
        registry.register(_node((Int("a"),), lambda cls, ctx, a, c: (a,)))
    with pytest.raises(RegistryError, match="optional input 'mask' may be absent but parameter 'mask' has no default"):
        registry.register(_node((Socket("mask", "MASK", optional=True),), lambda cls, ctx, mask: (mask,)))
    with pytest.raises(RegistryError, match=r"takes \*args"):
        registry.register(_node((Int("a"),), lambda cls, ctx, *args: args))
    assert len(registry) == 0


def test_registration_accepts_agreeing_signatures():
    registry = NodeRegistry()
    registry.register(_node((Int("a"), Socket("mask", "MASK", optional=True)),
                            lambda cls, ctx, a, mask=None, extra=1: (a,)))  # a defaulted extra parameter is fine
    assert "Probe" in registry
    registry = NodeRegistry()
    registry.register(_node((Int("a"), Int("b")), lambda cls, ctx, a, **rest: (a,)))  # **kwargs takes the rest
    assert "Probe" in registry


def test_every_installed_node_passes_the_signature_check():
    from nodegraph.registry import check_execute_signature

    for node in default_registry():
        check_execute_signature(node)


def test_registering_the_node_library_imports_no_model_library():
    """Listing node types (`nodegraph nodes`, /object_info, a server's start) must not wait for diffusers,
    transformers or scipy: node modules import the loaders when a node first runs."""
    import subprocess
    import sys

    code = ("import sys; from nodegraph.registry import default_registry; default_registry(); "
            "print(sorted(m for m in ('diffusers', 'transformers', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
