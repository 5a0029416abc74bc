"""The conditioning and latent nodes added for issue 15 declare ComfyUI 0.3.64's contracts exactly, as written down
in tests/contracts/comfyui/conditioning_latent.json (a local check; the project-wide contract test reads the
same file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodegraph.registry import NodeRegistry

CONTRACTS = json.loads((Path(__file__).parent / "contracts" / "comfyui" / "conditioning_latent.json").read_text())


@pytest.fixture(scope="module")
def schemas():
    import nodes

    registry = NodeRegistry()
    nodes.register(registry)
    return {schema.type_id: schema for schema in registry.schemas()}


@pytest.mark.parametrize("type_id", sorted(CONTRACTS))
def test_declaration_matches_comfyui(schemas, type_id):
    want, schema = CONTRACTS[type_id], schemas[type_id]
    assert (schema.display_name, schema.category) == (want["display_name"], want["category"])
    assert [(i.name, i.type, i.optional) for i in schema.inputs] == [
        (i["name"], i["type"], i["optional"]) for i in want["inputs"]]
    for spec, declared in zip(want["inputs"], schema.inputs):
        for key in ("default", "min", "max", "step"):
            if key in spec:
                assert getattr(declared, key) == spec[key], (declared.name, key)
        if "options" in spec:
            assert declared.resolve_options(None) == spec["options"], declared.name
    assert [(o.type, o.name) for o in schema.outputs] == [(o["type"], o["name"]) for o in want["outputs"]]
    assert schema.output_node == want.get("output_node", False)
