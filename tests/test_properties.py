"""Properties of the engine and the formats over random graphs of model-free fake nodes (hypothesis).

- Valid DAGs: execution order respects every link; re-running an unchanged graph executes nothing; cache keys
  change exactly for a node whose literal (or fingerprinted file) changed and for everything downstream of it.
- Malformed workflows: validation raises nothing but `ValidationFailed`, and every issue names its node (and
  its input, for issues about an input).
- Formats: native -> API -> native and native -> UI -> native keep the graph; UI -> API is what native -> API
  gives; all of them compute the same results.

Example counts are bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_nodes import registry
from nodegraph import Engine, Hooks
from nodegraph import errors as E
from nodegraph.errors import ValidationFailed
from nodegraph.formats import ui_from_native, ui_to_api
from nodegraph.formats.api import from_api, to_api
from nodegraph.formats.ui import from_ui
from nodegraph.workflow import Link, NodeInstance, Workflow, WorkflowFormatError

REGISTRY = registry()
PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TRANSFORMS = ("Add", "Scale", "Passthrough")
OUTPUTS = ("Collect", "Sink")
OUTPUT_INPUT = {"Collect": "value", "Sink": "a"}
FILES = 2


@dataclass
class Dag:
    """A random valid graph: its workflow, and which nodes read which file (directly or through a Text node)."""

    workflow: Workflow
    readers: dict[int, list[str]] = field(default_factory=dict)
    """File index -> the FileValue nodes reading it."""
    file_values: list[int] = field(default_factory=list)
    """The integer each file holds."""

    def graph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(self.workflow.nodes)
        graph.add_edges_from((link.from_node, link.to_node) for link in self.workflow.links)
        return graph


def widgets_for(draw: Any, node_type: str) -> dict[str, Any]:
    if node_type == "Number":
        return {"value": draw(st.integers(-1000, 1000))}
    if node_type == "Add":
        return {"b": draw(st.integers(-1000, 1000))}
    if node_type == "Scale":
        return {"factor": draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])), "mode": draw(st.sampled_from(["floor", "round"]))}
    return {}


@st.composite
def dags(draw: Any, max_nodes: int = 10, files: bool = True) -> Dag:
    """Nodes are added in a random topological order and get shuffled ids (numeric, or names when `files`)."""
    kinds = ["Number", *TRANSFORMS, *OUTPUTS] + (["FileValue", "LinkedFile"] if files else [])
    specs: list[tuple[str, dict[str, Any]]] = []
    links: list[tuple[int, int, str]] = []  # (from index, to index, input)
    producers: list[int] = []
    reads: list[tuple[int, int]] = []  # (FileValue index, file index)
    for _ in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(kinds if producers else [k for k in kinds if k not in (*TRANSFORMS, *OUTPUTS)]))
        if kind in ("FileValue", "LinkedFile"):
            file = draw(st.integers(0, FILES - 1))
            if kind == "LinkedFile":
                specs.append(("Text", {"value": f"<file {file}>"}))
                specs.append(("FileValue", {}))
                links.append((len(specs) - 2, len(specs) - 1, "path"))
            else:
                specs.append(("FileValue", {"path": f"<file {file}>"}))
            reads.append((len(specs) - 1, file))
            producers.append(len(specs) - 1)
            continue
        specs.append((kind, widgets_for(draw, kind)))
        index = len(specs) - 1
        if kind in TRANSFORMS or kind in OUTPUTS:
            links.append((draw(st.sampled_from(producers)), index, OUTPUT_INPUT.get(kind, "a")))
        if kind not in OUTPUTS:
            producers.append(index)
    if not any(kind in OUTPUTS for kind, _ in specs):
        specs.append(("Collect", {}))
        links.append((producers[-1], len(specs) - 1, "value"))
    order = draw(st.permutations(range(len(specs))))
    pattern = draw(st.sampled_from(["{}", "n{}"])) if files else "{}"
    ids = [pattern.format(order[i] + 1) for i in range(len(specs))]
    nodes = {ids[i]: NodeInstance(type=kind, widgets=dict(widgets)) for i, (kind, widgets) in enumerate(specs)}
    workflow = Workflow(nodes=nodes, links=[Link(from_node=ids[a], from_slot=0, to_node=ids[b], to_input=name)
                                            for a, b, name in links])
    readers: dict[int, list[str]] = {}
    for index, file in reads:
        readers.setdefault(file, []).append(ids[index])
    values = [draw(st.integers(-50, 50)) for _ in range(FILES)]
    return Dag(workflow, readers, values)


def materialise(dag: Dag, root: Path) -> Workflow:
    """The workflow with its `<file i>` placeholders replaced by real paths under `root` (files written)."""
    for index, value in enumerate(dag.file_values):
        (root / f"f{index}.txt").write_text(str(value))
    nodes = {}
    for nid, node in dag.workflow.nodes.items():
        widgets = {name: _path(root, value) for name, value in node.widgets.items()}
        nodes[nid] = node.model_copy(update={"widgets": widgets})
    return dag.workflow.model_copy(update={"nodes": nodes})


def _path(root: Path, value: Any) -> Any:
    if isinstance(value, str) and value.startswith("<file "):
        return str(root / f"f{value[6:-1]}.txt")
    return value


class Order(Hooks):
    """Which nodes started, and in what order every node became available (started, or taken from the cache)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.available: list[str] = []

    def node_start(self, run: Any, node_id: str, node_type: str) -> None:
        self.started.append(node_id)
        self.available.append(node_id)

    def node_end(self, run: Any, node_id: str, node_type: str, *, cached: bool, **_: Any) -> None:
        if cached:
            self.available.append(node_id)


def needed(dag: Dag) -> set[str]:
    graph = dag.graph()
    outputs = [nid for nid, node in dag.workflow.nodes.items() if node.type in OUTPUTS]
    return set(outputs).union(*(nx.ancestors(graph, nid) for nid in outputs))


@PROPERTY
@given(dags())
def test_order_respects_every_link_and_a_rerun_executes_nothing(dag):
    with tempfile.TemporaryDirectory() as tmp:
        workflow = materialise(dag, Path(tmp))
        engine, order = Engine(REGISTRY), Order()
        first = engine.run(workflow, hooks=[order])
        assert set(first.executed) == set(order.started) and set(first.executed) | set(first.cached) == needed(dag)
        for nid in first.cached:  # content-addressed: a node keyed at run time found its twin's output
            assert first.keys[nid] in {first.keys[e] for e in first.executed}
        position = {nid: i for i, nid in enumerate(order.available)}
        for link in workflow.links:
            if link.to_node in order.started:
                assert position[link.from_node] < position[link.to_node], link
        second = engine.run(workflow)
        assert second.executed == [] and second.ui == first.ui and second.keys == first.keys


@st.composite
def changes(draw: Any) -> tuple[Dag, str, Any]:
    """A DAG and one change: ("widget", (node, name, new value)) or ("file", (index, new value))."""
    dag = draw(dags())
    editable = [(nid, name) for nid, node in sorted(dag.workflow.nodes.items()) for name in node.widgets]
    files = sorted(dag.readers)
    kinds = (["widget"] if editable else []) + (["file"] if files else [])
    if not kinds:
        return dag, "none", None
    if draw(st.sampled_from(kinds)) == "file":
        index = draw(st.sampled_from(files))
        value = draw(st.integers(-50, 50).filter(lambda v: v != dag.file_values[index]))
        return dag, "file", (index, value)
    nid, name = draw(st.sampled_from(editable))
    node = dag.workflow.nodes[nid]
    old = node.widgets[name]
    if node.type in ("FileValue", "Text"):
        new = f"<file {1 - int(old[6:-1])}>"
    else:
        new = draw(_widget_strategy(name).filter(lambda v: v != old))
    return dag, "widget", (nid, name, new)


def _widget_strategy(name: str) -> st.SearchStrategy[Any]:
    if name in ("value", "b"):
        return st.integers(-1000, 1000)
    if name == "factor":
        return st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])
    return st.sampled_from(["floor", "round"])


@PROPERTY
@given(changes())
def test_keys_change_exactly_downstream_of_a_changed_literal_or_file(change):
    dag, kind, what = change
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = Engine(REGISTRY)
        before = engine.run(materialise(dag, root))
        if kind == "file":
            index, value = what
            dag.file_values[index] = value
            changed = set(dag.readers[index])
        elif kind == "widget":
            nid, name, value = what
            dag.workflow = dag.workflow.with_widget(nid, name, value)
            changed = {nid}
        else:
            changed = set()
        after = engine.run(materialise(dag, root))
    graph = dag.graph()
    expected = changed.union(*(nx.descendants(graph, nid) for nid in changed)) & set(before.keys)
    assert set(after.keys) == set(before.keys)
    assert {nid for nid in before.keys if before.keys[nid] != after.keys[nid]} == expected
    assert set(after.executed) <= expected
    computed = set(before.keys.values()) | {after.keys[nid] for nid in after.executed}
    for nid in expected - set(after.executed):  # content-addressed: an identical node computed it already
        assert after.keys[nid] in computed


GARBAGE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
TYPE_NAMES = [node.schema.type_id for node in REGISTRY] + ["Nope", "add", ""]
INPUT_NAMES = sorted({spec.name for node in REGISTRY for spec in node.schema.inputs} | {"bogus"})
INPUT_ISSUES = {E.REQUIRED_INPUT_MISSING, E.BAD_LINKED_INPUT, E.RETURN_TYPE_MISMATCH, E.INVALID_INPUT_TYPE,
                E.VALUE_SMALLER_THAN_MIN, E.VALUE_BIGGER_THAN_MAX, E.VALUE_NOT_IN_LIST, E.UNKNOWN_INPUT,
                E.UNHASHABLE_INPUT}


def _plausible(spec: Any) -> st.SearchStrategy[Any]:
    """Values of the declared type, some out of range: what a slightly wrong workflow holds."""
    if spec.type == "INT":
        return st.integers(-2000, 20000)
    if spec.type == "FLOAT":
        return st.floats(-20, 20, allow_nan=False)
    if spec.type == "COMBO":
        return st.sampled_from([*spec.resolve_options(None), "nope"])
    return st.text(max_size=6)


@st.composite
def malformed(draw: Any) -> Workflow:
    """Random nodes (known and unknown types) with plausible, missing, unknown or garbage values, and links
    that may point at missing nodes, missing slots, wrong types, unknown inputs, or close cycles."""
    ids = draw(st.lists(st.sampled_from([str(i) for i in range(1, 9)] + ["x", "-1"]), min_size=1, max_size=7,
                        unique=True))
    nodes = {}
    for nid in ids:
        node_type = draw(st.sampled_from(TYPE_NAMES))
        node_cls = REGISTRY.get(node_type)
        widgets: dict[str, Any] = {}
        for spec in (node_cls.schema.widgets if node_cls else ()):
            choice = draw(st.sampled_from(["plausible", "plausible", "missing", "garbage"]))
            if choice != "missing":
                widgets[spec.name] = draw(_plausible(spec) if choice == "plausible" else GARBAGE)
        if draw(st.integers(0, 4)) == 0:
            widgets[draw(st.sampled_from(INPUT_NAMES))] = draw(GARBAGE)
        nodes[nid] = NodeInstance(type=node_type, widgets=widgets)
    endpoints = st.sampled_from(ids + ["missing"])

    @st.composite
    def link(draw: Any) -> Link:
        to_node = draw(endpoints)
        target = REGISTRY.get(nodes[to_node].type) if to_node in nodes else None
        inputs = [spec.name for spec in target.schema.inputs] if target else []
        to_input = draw(st.sampled_from(inputs + ["bogus"]) if inputs else st.sampled_from(INPUT_NAMES))
        return Link(from_node=draw(endpoints), from_slot=draw(st.integers(0, 2)), to_node=to_node, to_input=to_input)

    return Workflow(nodes=nodes, links=draw(st.lists(link(), max_size=8)))


@st.composite
def corrupted(draw: Any) -> Workflow:
    """A valid DAG with one thing broken: a value, a link's end, a node's type, or a link closing a cycle."""
    dag = draw(dags())
    workflow = dag.workflow
    nid = draw(st.sampled_from(sorted(workflow.nodes)))
    node = workflow.nodes[nid]
    damage = draw(st.sampled_from(["value", "link", "type", "cycle"]))
    if damage == "value":
        name = draw(st.sampled_from([*node.widgets, "bogus"]))
        return workflow.with_widget(nid, name, draw(GARBAGE | st.text(max_size=5)))
    if damage == "type":
        nodes = {**workflow.nodes, nid: node.model_copy(update={"type": draw(st.sampled_from(TYPE_NAMES))})}
        return workflow.model_copy(update={"nodes": nodes})
    links = list(workflow.links)
    if damage == "link" and links:
        index = draw(st.integers(0, len(links) - 1))
        old = links[index]
        links[index] = Link(from_node=draw(st.sampled_from([old.from_node, "missing"])),
                            from_slot=draw(st.integers(0, 2)), to_node=old.to_node,
                            to_input=draw(st.sampled_from([old.to_input, "bogus"])))
    else:  # from a node to one of its ancestors' inputs
        graph = dag.graph()
        ancestors = sorted(nx.ancestors(graph, nid))
        if ancestors:
            target = draw(st.sampled_from(ancestors))
            inputs = [spec.name for spec in REGISTRY[workflow.nodes[target].type].schema.inputs] or ["bogus"]
            links.append(Link(from_node=nid, from_slot=0, to_node=target, to_input=draw(st.sampled_from(inputs))))
    return workflow.model_copy(update={"links": links})


def check_issues(failed: ValidationFailed, workflow: Workflow) -> None:
    assert failed.issues
    has_outputs = any(REGISTRY.get(n.type) is not None and REGISTRY[n.type].schema.output_node
                      for n in workflow.nodes.values())
    for issue in failed.issues:
        if issue.type == E.PROMPT_NO_OUTPUTS and not has_outputs:
            continue  # about the whole graph: no node to name
        assert issue.node_id in workflow.nodes or (issue.type == E.BAD_LINKED_INPUT and "does not exist" in issue.message
                                                   ), issue  # a link into a node that is not there names it
        if issue.type in INPUT_ISSUES:
            assert issue.input_name is not None, issue
        str(issue)  # printable


@settings(PROPERTY, max_examples=500)
@given(malformed() | corrupted())
def test_validation_of_malformed_workflows_raises_only_its_error_and_names_nodes(workflow):
    engine = Engine(REGISTRY)
    try:
        graph = engine.compile(workflow)
        engine._keys(graph, graph.order(), "nonce")  # keying is the last check before anything runs
    except ValidationFailed as failed:
        check_issues(failed, workflow)


@settings(PROPERTY, max_examples=300)
@given(st.dictionaries(st.sampled_from(["1", "2", "3", "x"]),
                       st.fixed_dictionaries({"class_type": st.sampled_from(TYPE_NAMES[:-1])},
                                             optional={"inputs": st.dictionaries(st.sampled_from(INPUT_NAMES),
                                                                                 GARBAGE | st.tuples(st.sampled_from(["1", "2", "9"]), st.integers(0, 2)).map(list),
                                                                                 max_size=4)}),
                       min_size=1, max_size=4))
def test_api_prompts_with_garbage_values_fail_validation_only(prompt):
    """What a /prompt body carries: any JSON values and links; the engine answers with its own error types: a
    malformed link (a negative slot) is a format error naming the node and input (the server's 400), anything
    else a validation failure."""
    prompt = json.loads(json.dumps(prompt, allow_nan=True))
    try:
        workflow = from_api(prompt)
    except WorkflowFormatError as error:
        assert re.search(r"node \S+ input '[^']*': negative slot", str(error)), error
        return
    try:
        graph = Engine(REGISTRY).compile(workflow)
        Engine(REGISTRY)._keys(graph, graph.order(), "nonce")
    except ValidationFailed as failed:
        check_issues(failed, workflow)


def _meaning(workflow: Workflow) -> tuple[dict[str, tuple[str, Any]], set[tuple[str, int, str, str]]]:
    nodes = {nid: (node.type, json.loads(json.dumps(node.widgets)), node.mode) for nid, node in workflow.nodes.items()}
    links = {(link.from_node, link.from_slot, link.to_node, link.to_input) for link in workflow.links}
    return nodes, links


@st.composite
def editor_dags(draw: Any) -> Workflow:
    """Valid DAGs with what the editor adds: titles, positions, and muted or bypassed transforms."""
    workflow = draw(dags(files=False)).workflow
    nodes = {}
    for nid, node in workflow.nodes.items():
        update: dict[str, Any] = {"title": draw(st.none() | st.text(min_size=1, max_size=6)),
                                  "pos": draw(st.none() | st.tuples(st.integers(-500, 500), st.integers(-500, 500)).map(
                                      lambda p: (float(p[0]), float(p[1]))))}
        if node.type in TRANSFORMS:
            update["mode"] = draw(st.sampled_from(["always", "always", "never", "bypass"]))
        nodes[nid] = node.model_copy(update=update)
    return workflow.model_copy(update={"nodes": nodes})


def _results(workflow: Workflow) -> Any:
    try:
        return Engine(REGISTRY).run(workflow).ui
    except ValidationFailed as failed:  # e.g. a muted node leaves its consumer without an input
        return sorted((issue.type, issue.node_id, issue.input_name) for issue in failed.issues)


@PROPERTY
@given(editor_dags())
def test_native_api_and_ui_round_trips_keep_the_meaning(workflow):
    api = json.loads(json.dumps(to_api(workflow, REGISTRY)))
    from_prompt = from_api(api)
    ui = json.loads(json.dumps(ui_from_native(workflow, REGISTRY)))
    from_editor = from_ui(ui, REGISTRY)

    nodes, links = _meaning(workflow)
    assert _meaning(from_editor) == (nodes, links)
    for nid, node in workflow.nodes.items():  # the editor places a node without a position at the origin
        assert (from_editor.nodes[nid].title, from_editor.nodes[nid].pos) == (node.title, node.pos or (0.0, 0.0))
    active = {nid for nid, (_, _, mode) in nodes.items() if mode == "always"}
    if active == set(nodes):  # no muted or bypassed node: the API prompt is the same graph
        assert _meaning(from_prompt) == (nodes, links)
    assert ui_to_api(ui, REGISTRY) == api
    assert _results(from_prompt) == _results(workflow) == _results(from_editor)


def test_properties_cover_what_they_claim():
    """A sanity check of the generator: it makes files, linked files, outputs and shuffled ids."""
    found = {"linked": False, "numeric": False, "named": False}

    @settings(max_examples=60, database=None, deadline=None)
    @given(dags())
    def probe(dag):
        found["linked"] |= any(link.to_input == "path" for link in dag.workflow.links)
        found["numeric"] |= all(nid.isdigit() for nid in dag.workflow.nodes)
        found["named"] |= all(nid.startswith("n") for nid in dag.workflow.nodes)
        assert not math.isnan(sum(dag.file_values))

    probe()
    assert all(found.values()), found
