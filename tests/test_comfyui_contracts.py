"""Our node declarations against ComfyUI 0.3.64's, kept as data in tests/contracts/comfyui/*.json.

Each file describes, per ComfyUI class name, what ComfyUI declares: display name, category, inputs in order
(required, then optional) with their types, defaults, ranges and fixed combo options, outputs with their names,
and the output-node and list flags. Every node a file lists must be registered here and must match it; one test
per file lists every difference at once (node, field, ours vs ComfyUI's), so a family's mismatches read as one
report. Our side is what `/object_info` serves, so this is also what ComfyUI clients and the editor see.

A key a contract leaves out means ComfyUI states nothing there: we may state nothing too, or the value ComfyUI's
editor assumes in its place (a combo's first option, 0 or the minimum for a number, "" for text, false for a
boolean; step 1 for an INT, our helpers' 0.01 or the editor's 0.5 for a FLOAT). Unstated min/max stay unstated.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodegraph import NodeRegistry, default_registry
from nodegraph.schema import Node
from nodegraph.server.object_info import node_info, object_info

CONTRACTS = Path(__file__).parent / "contracts" / "comfyui"
CONTRACT_FILES = sorted(CONTRACTS.glob("*.json"))
NODE_KEYS = {"display_name", "category", "inputs", "outputs", "output_node", "output_is_list", "input_is_list"}
INPUT_KEYS = {"name", "type", "optional", "default", "min", "max", "step", "options"}
FROM_FILES = "a list read from the environment"


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    return default_registry()


def our_view(node_cls: type[Node]) -> dict[str, Any]:
    """A node as `/object_info` shows it, in the contract's shape."""
    logging.disable(logging.WARNING)  # file-list combos cannot be listed without an environment; not our question
    try:
        info = node_info(node_cls, None)
    finally:
        logging.disable(logging.NOTSET)
    schema = node_cls.schema
    inputs = []
    for section in ("required", "optional"):
        for name in info["input_order"][section]:
            kind, config = (info["input"][section][name] + [{}])[:2]
            entry: dict[str, Any] = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind,
                                     "optional": section == "optional"}
            entry.update({key: config[key] for key in ("default", "min", "max", "step") if key in config})
            if isinstance(kind, list):
                spec = schema.input_map[name]
                entry["options"] = FROM_FILES if callable(spec.options) else list(kind)
            inputs.append(entry)
    return {
        "display_name": info["display_name"], "category": info["category"], "inputs": inputs,
        "outputs": [{"type": t, "name": n} for t, n in zip(info["output"], info["output_name"])],
        "output_node": bool(info["output_node"]), "output_is_list": list(info["output_is_list"]),
        "input_is_list": bool(info.get("input_is_list", False)),
    }


def _implied(key: str, entry: dict[str, Any]) -> list[Any]:
    """Values ComfyUI's editor assumes for a key the contract leaves out (None: also left out by us)."""
    kind = entry["type"]
    if key == "default":
        if kind == "COMBO":
            return [None] + list(entry.get("options") or [])[:1]
        return {"INT": [None, 0, entry.get("min")], "FLOAT": [None, 0, 0.0, entry.get("min")], "STRING": [None, ""],
                "BOOLEAN": [None, False]}.get(kind, [None])
    if key == "step":
        return {"INT": [None, 1], "FLOAT": [None, 0.01, 0.5]}.get(kind, [None])
    return [None]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def input_differences(node: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    name = theirs.get("name")
    problems = []
    for key in ("type", "optional"):
        if ours.get(key) != theirs.get(key, False if key == "optional" else None):
            problems.append(f"{node}: input {name!r} {key}: ours {ours.get(key)!r} vs ComfyUI {theirs.get(key)!r}")
    for key in ("default", "min", "max", "step"):
        if key in theirs:
            if not _same(ours.get(key), theirs[key]):
                problems.append(f"{node}: input {name!r} {key}: ours {ours.get(key)!r} vs ComfyUI {theirs[key]!r}")
        elif not any(_same(ours.get(key), value) for value in _implied(key, theirs)):
            problems.append(f"{node}: input {name!r} {key}: ours {ours.get(key)!r} vs ComfyUI states none")
    if "options" in theirs and ours.get("options") != theirs["options"]:
        problems.append(f"{node}: input {name!r} options: ours {ours.get('options')!r} "
                        f"vs ComfyUI {theirs['options']!r}")
    return problems


def differences(node: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Every way our declaration of `node` differs from ComfyUI's contract, one line each."""
    problems = [f"{node}: contract has unknown key {key!r}" for key in sorted(set(theirs) - NODE_KEYS)]
    for key in ("display_name", "category"):
        if ours[key] != theirs.get(key):
            problems.append(f"{node}: {key}: ours {ours[key]!r} vs ComfyUI {theirs.get(key)!r}")
    their_inputs = theirs.get("inputs", [])
    for entry in their_inputs:
        problems += [f"{node}: contract input {entry.get('name')!r} has unknown key {key!r}"
                     for key in sorted(set(entry) - INPUT_KEYS)]
    our_names = [entry["name"] for entry in ours["inputs"]]
    their_names = [entry.get("name") for entry in their_inputs]
    if our_names != their_names:
        problems.append(f"{node}: inputs (names, in order): ours {our_names} vs ComfyUI {their_names}")
    by_name = {entry["name"]: entry for entry in ours["inputs"]}
    for entry in their_inputs:
        if entry.get("name") in by_name:
            problems += input_differences(node, by_name[entry["name"]], entry)
    their_outputs = [{"type": o.get("type"), "name": o.get("name", o.get("type"))} for o in theirs.get("outputs", [])]
    if ours["outputs"] != their_outputs:
        problems.append(f"{node}: outputs (type, name): ours {[(o['type'], o['name']) for o in ours['outputs']]} "
                        f"vs ComfyUI {[(o['type'], o['name']) for o in their_outputs]}")
    checks = (("output_node", theirs.get("output_node", False)),
              ("output_is_list", theirs.get("output_is_list", [False] * len(their_outputs))),
              ("input_is_list", theirs.get("input_is_list", False)))
    for key, expected in checks:
        if ours[key] != expected:
            problems.append(f"{node}: {key}: ours {ours[key]!r} vs ComfyUI {expected!r}")
    return problems


def test_there_are_contract_files():
    assert CONTRACTS / "core.json" in CONTRACT_FILES


@pytest.mark.parametrize("path", CONTRACT_FILES, ids=lambda path: path.stem)
def test_declarations_match_comfyui(path: Path, registry: NodeRegistry):
    contract = json.loads(path.read_text())
    problems = []
    for node, theirs in contract.items():
        node_cls = registry.get(node)
        if node_cls is None:
            problems.append(f"{node}: listed in {path.name} but no such node is registered")
            continue
        problems += differences(node, our_view(node_cls), theirs)
    assert not problems, (f"{len(problems)} difference(s) from ComfyUI 0.3.64 in {path.name}:\n  "
                          + "\n  ".join(problems))


def test_the_comparison_reports_every_kind_of_difference():
    """The checker itself: a contract that disagrees in every field yields one line per disagreement."""
    from nodes.rebatch import RebatchLatents

    ours = our_view(RebatchLatents)
    theirs = {"display_name": "Rebatch", "category": "latent", "input_is_list": False,
              "inputs": [{"name": "latents", "type": "IMAGE", "optional": True},
                         {"name": "batch_size", "type": "INT", "optional": False, "default": 2, "min": 0, "max": 64}],
              "outputs": [{"type": "LATENT", "name": "latent"}], "output_node": True}
    lines = differences("RebatchLatents", ours, theirs)
    for fragment in ("display_name: ours 'Rebatch Latents' vs ComfyUI 'Rebatch'", "category:",
                     "input 'latents' type: ours 'LATENT' vs ComfyUI 'IMAGE'", "input 'latents' optional",
                     "input 'batch_size' default: ours 1 vs ComfyUI 2", "input 'batch_size' min: ours 1 vs ComfyUI 0",
                     "input 'batch_size' max: ours 4096 vs ComfyUI 64", "outputs (type, name)", "output_node",
                     "output_is_list: ours [True] vs ComfyUI [False]", "input_is_list: ours True vs ComfyUI False"):
        assert any(fragment in line for line in lines), (fragment, lines)
    assert differences("RebatchLatents", ours, {**theirs, "inputs": theirs["inputs"][::-1]})  # order matters
    unstated = {"name": "batch_size", "type": "INT", "optional": False, "default": 1, "min": 1}
    assert input_differences("X", ours["inputs"][1], unstated) == ["X: input 'batch_size' max: ours 4096 vs ComfyUI "
                                                                   "states none"]


@pytest.fixture(scope="module")
def nodes_json(tmp_path_factory) -> list[dict]:
    """What `nodegraph nodes --json` prints, run once for the module (it imports every node pack)."""
    out = subprocess.run([sys.executable, "-m", "nodegraph.cli", "nodes", "--json", "--output-dir",
                          str(tmp_path_factory.mktemp("nodes"))], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout)


def test_nodes_json_lists_every_registered_node(nodes_json, registry):
    listed = {entry["type_id"]: entry for entry in nodes_json}
    assert set(listed) == {node.schema.type_id for node in registry}
    for node in registry:
        assert listed[node.schema.type_id]["category"] == node.schema.category
    assert listed["RebatchLatents"]["input_is_list"] is True
    assert [o["is_list"] for o in listed["RebatchLatents"]["outputs"]] == [True]


NODE_SET = Path(__file__).parent / "contracts" / "comfyui_sd_node_set.txt"
COVERAGE = 227
"""Node types of ComfyUI's SD vocabulary provided (of 227): all of them (the training nodes' contracts are
tests/contracts/comfyui/training.json, PhotoMaker's photomaker.json)."""


def test_nodes_json_covers_comfyuis_sd_vocabulary_with_contracts(nodes_json):
    """`nodegraph nodes --json` lists at least COVERAGE of ComfyUI's 227 SD node types, and every one of
    them we declare has its ComfyUI contract on file (so the contract test above checks it)."""
    vocabulary = {line.strip() for line in NODE_SET.read_text().splitlines()
                  if line.strip() and not line.startswith(("#", "["))}
    assert len(vocabulary) == 227
    provided = {entry["type_id"] for entry in nodes_json} & vocabulary
    contracts = set().union(*(json.loads(path.read_text()) for path in CONTRACT_FILES))
    assert sorted(provided - contracts) == []
    assert len(provided) >= COVERAGE, sorted(vocabulary - provided)


def test_palette_and_object_info_categories_are_the_declared_ones(registry):
    """/object_info carries each schema's category, and the editor's palette (frontend/defs.js, run under node)
    files each node under exactly that category."""
    logging.disable(logging.WARNING)
    try:
        info = object_info(registry, None)
    finally:
        logging.disable(logging.NOTSET)
    declared = {node.schema.type_id: node.schema.category for node in registry}
    assert {name: entry["category"] for name, entry in info.items()} == declared
    node_js = shutil.which("node")
    if node_js is None:
        pytest.skip("node is not installed: the palette's own parsing is not checked")
    defs = (Path(__file__).parents[1] / "frontend" / "defs.js").as_uri()
    script = (f"import {{ parseObjectInfo }} from '{defs}';"
              "let text = ''; process.stdin.on('data', (c) => (text += c)); process.stdin.on('end', () => {"
              "const defs = parseObjectInfo(JSON.parse(text)); const out = {};"
              "for (const [type, def] of defs) out[type] = def.category; console.log(JSON.stringify(out)); });")
    shown = subprocess.run([node_js, "--input-type=module", "-e", script], input=json.dumps(info),
                           capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(shown.stdout) == declared
