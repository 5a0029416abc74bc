"""The image nodes' declarations against ComfyUI 0.3.64's contracts in tests/contracts/comfyui/image.json: class
name, display name, category, inputs in order with type, optionality and every constraint the file states,
outputs and their names, output-node flag."""

import json
from pathlib import Path

import pytest

import nodes.image

CONTRACTS = json.loads((Path(__file__).parent / "contracts" / "comfyui" / "image.json").read_text())
DECLARED = {node.schema.type_id: node.schema for node in nodes.image.NODES}


def test_every_image_node_has_a_contract_and_every_contract_a_node():
    assert sorted(DECLARED) == sorted(CONTRACTS)


@pytest.mark.parametrize("type_id", sorted(CONTRACTS))
def test_declaration_matches_comfyui(type_id):
    contract, schema = CONTRACTS[type_id], DECLARED[type_id]
    assert (schema.display_name, schema.category) == (contract["display_name"], contract["category"])
    assert [spec.name for spec in schema.inputs] == [entry["name"] for entry in contract["inputs"]]
    for spec, entry in zip(schema.inputs, contract["inputs"]):
        assert (spec.type, spec.optional) == (entry["type"], entry["optional"]), spec.name
        for key in ("default", "min", "max", "step"):
            if key in entry:
                assert getattr(spec, key) == entry[key], f"{spec.name}.{key}"
        if "options" in entry:
            assert spec.resolve_options(None) == entry["options"], spec.name
    assert [(out.type, out.name) for out in schema.outputs] == [(o["type"], o["name"]) for o in contract["outputs"]]
    assert schema.output_node == contract.get("output_node", False)


def test_image_nodes_register_with_the_library():
    from nodegraph.registry import NodeRegistry

    import nodes as library

    registry = NodeRegistry([])
    library.register(registry)
    assert set(CONTRACTS) <= {schema.type_id for schema in registry.schemas()}
