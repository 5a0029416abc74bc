"""X/Y/Z plots: axis values, the crossing into the engine's lists (one cached call per cell), the labelled grid
and its PNG metadata, the metric chart, and a 2x2 sweep on the embedded model (CLI and server included)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fake_nodes import workflow
from nodegraph import Combo, Engine, Hooks, Int, Node, NodeContext, NodeExecutionError, NodeRegistry, NodeSchema, Out
from nodegraph.environment import Environment, ModelPaths
from nodes.xyz import (GRID_KEY, NODES, Plot, PlotMetric, XYZFloatRange, XYZIntRange, XYZPlot, XYZPromptSR,
                       XYZSamplerValues, XYZValueList)
from nodes.xyz.axes import parse_values
from nodes.xyz.charts import series_data
from nodes.xyz.types import make_axis

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
CALLS: list[tuple[int, str]] = []


class Swatch(Node):
    """A 16 px square of `colour` at brightness level/10: a cell whose picture says what it was made with."""

    schema = NodeSchema(type_id="Swatch", category="test",
                        inputs=(Int("level", 10, min=0, max=10), Combo("colour", tuple(COLOURS))),
                        outputs=(Out("IMAGE"),))

    @classmethod
    def execute(cls, ctx: NodeContext, level: int, colour: str) -> tuple[torch.Tensor]:
        CALLS.append((level, colour))
        return (torch.tensor(COLOURS[colour]).mul(level / 10).expand(1, 16, 16, 3).clone(),)


class AsFloat(Node):
    """A stand-in for a metric node: one FLOAT per call (here the cell's own value), as a metric fed a cell's
    images returns."""

    schema = NodeSchema(type_id="AsFloat", category="test", inputs=(Int("value", 0),), outputs=(Out("FLOAT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, value: int) -> tuple[float]:
        return (float(value),)


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


def run_node(node, **inputs):
    return node.execute(NodeContext("1", node.schema.type_id, None), **inputs)


def make_engine(root: Path) -> Engine:
    env = Environment(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                      models=ModelPaths(roots=[root / "models"]))
    for folder in (env.output_dir, env.temp_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return Engine(NodeRegistry((*NODES, Swatch, AsFloat)), env=env)


# --- axes -------------------------------------------------------------------------------------------------------

def test_ranges_include_both_ends_and_refuse_ranges_that_never_end():
    assert run_node(XYZIntRange, title="steps", start=4, stop=16, step=4)[0].values == (4, 8, 12, 16)
    assert run_node(XYZIntRange, title="", start=3, stop=1, step=-1)[0].values == (3, 2, 1)
    with pytest.raises(ValueError, match="step is 0"):
        run_node(XYZIntRange, title="s", start=1, stop=3, step=0)
    with pytest.raises(ValueError, match="other way"):
        run_node(XYZIntRange, title="s", start=1, stop=3, step=-1)
    axis = run_node(XYZFloatRange, title="cfg", start=0.1, stop=0.3, count=3)[0]
    assert axis.values == (0.1, 0.2, 0.3) and axis.labels == ("0.1", "0.2", "0.3") and axis.kind == "FLOAT"


def test_value_lists_parse_by_kind_commas_or_lines():
    assert parse_values("1, 2,3", "INT") == [1, 2, 3]
    assert parse_values("0.5, 1", "FLOAT") == [0.5, 1.0]
    assert parse_values("a cat, sitting\na dog", "STRING") == ["a cat, sitting", "a dog"]  # lines keep commas
    with pytest.raises(ValueError, match="'2.5' is not a whole number"):
        parse_values("1, 2.5", "INT")
    with pytest.raises(ValueError, match="'x' is not a number"):
        run_node(XYZValueList, title="t", kind="FLOAT", values="1, x")


def test_sampler_values_are_checked_against_ksamplers_options():
    from nodes.sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES

    assert run_node(XYZSamplerValues, widget="sampler_name", values="euler, heun")[0].values == ("euler", "heun")
    assert run_node(XYZSamplerValues, widget="scheduler", values="")[0].values == SCHEDULER_NAMES  # empty: all
    assert "dpmpp_2m" in SAMPLER_NAMES
    with pytest.raises(ValueError, match="'eulr' not among"):
        run_node(XYZSamplerValues, widget="sampler_name", values="euler, eulr")


def test_prompt_search_and_replace_labels_by_the_replacement():
    axis = run_node(XYZPromptSR, prompt="a red circle, red glow", search="red", replace="green\nlight blue")[0]
    assert axis.values == ("a red circle, red glow", "a green circle, green glow",
                           "a light blue circle, light blue glow")
    assert axis.labels == ("red", "green", "light blue")
    with pytest.raises(ValueError, match="does not occur"):
        run_node(XYZPromptSR, prompt="a circle", search="red", replace="blue")


def test_xyz_plot_crosses_the_axes_x_fastest_with_typed_lists():
    x = make_axis("level", "INT", [1, 2, 3])
    y = make_axis("colour", "STRING", ["red", "blue"])
    z = make_axis("cfg", "FLOAT", [1.5, 2.0])
    out = run_node(XYZPlot, x=x, y=y, z=z)
    x_int, x_float, x_string, y_int, y_float, y_string, z_int, z_float, z_string, plot = out
    assert x_int == [1, 2, 3] * 4 and x_float == [1.0, 2.0, 3.0] * 4 and x_string == ["1", "2", "3"] * 4
    assert y_string == ["red"] * 3 + ["blue"] * 3 + ["red"] * 3 + ["blue"] * 3
    assert z_float == [1.5] * 6 + [2.0] * 6 and z_int[0] == 1.5  # refused per item by an INT widget, named there
    assert isinstance(plot, Plot) and plot.shape == (3, 2, 2) and plot.cells()[4] == (1, 1, 0)
    assert all(isinstance(v, float) for v in x_float) and all(isinstance(v, int) for v in x_int)
    only_x = run_node(XYZPlot, x=x)
    assert only_x[3] == [] and only_x[9].shape == (3, 1, 1)


# --- the graph: one cached call per cell ---------------------------------------------------------------------------

def sweep(levels: str = "2, 6, 10", colours: str = "red, blue", extra: dict | None = None):
    nodes = {"1": ("XYZValueList", {"title": "level", "kind": "INT", "values": levels}),
             "2": ("XYZValueList", {"title": "colour", "kind": "STRING", "values": colours}),
             "3": ("XYZPlot", {}), "4": ("Swatch", {}),
             "5": ("XYZGrid", {"filename_prefix": "grid", "font_size": 12, "gap": 4})}
    links = [("1", 0, "3", "x"), ("2", 0, "3", "y"), ("3", 0, "4", "level"), ("3", 5, "4", "colour"),
             ("4", 0, "5", "images"), ("3", 9, "5", "plot")]
    nodes.update(extra or {})
    return workflow(nodes, links)


def test_the_graph_runs_once_per_cell_and_each_cell_is_cached_on_its_own(tmp_path):
    engine = make_engine(tmp_path)
    engine.run(sweep())
    assert CALLS == [(2, "red"), (6, "red"), (10, "red"), (2, "blue"), (6, "blue"), (10, "blue")]
    CALLS.clear()
    engine.run(sweep(levels="2, 7, 10"))  # one x value changed: only its column's cells run again
    assert CALLS == [(7, "red"), (7, "blue")]
    CALLS.clear()
    result = engine.run(sweep(levels="2, 7, 10"))
    assert CALLS == [] and result.executed == []


def test_a_combo_fed_a_list_is_checked_item_by_item_against_its_options(tmp_path):
    with pytest.raises(NodeExecutionError) as failure:
        make_engine(tmp_path).run(sweep(colours="red, purple"))
    message = str(failure.value)
    assert "colour" in message and "item 3" in message and "purple" in message and "'green'" in message
    assert CALLS == []  # refused before any call of the node ran


def test_the_grid_places_each_cell_under_its_labels_and_saves_what_each_cell_was(tmp_path):
    engine = make_engine(tmp_path)
    result = engine.run(sweep())
    grid, cells_text = result.values["5"]
    assert grid.shape[0] == 1
    pixels = (grid[0].numpy() * 255).round()
    saved = result.ui["5"]["images"]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    with Image.open(tmp_path / "output" / saved[0]["filename"]) as png:
        chunk = json.loads(png.text[GRID_KEY])
        assert np.array_equal(np.asarray(png.convert("RGB")), pixels.astype(np.uint8))
    assert chunk["shape"] == [3, 2, 1] and json.loads(cells_text)["cells"] == chunk["cells"]
    assert chunk["axes"]["x"]["values"] == [2, 6, 10] and chunk["axes"]["y"]["labels"] == ["red", "blue"]
    for cell in chunk["cells"]:  # the picture in each cell's box is the swatch made with that cell's values
        x0, y0, x1, y1 = cell["box"]
        expected = np.array(COLOURS[cell["y"]["value"]]) * cell["x"]["value"] / 10 * 255
        assert np.abs(pixels[y0:y1, x0:x1] - expected.round()).max() <= 1
    first = chunk["cells"][0]["box"]
    above, left = pixels[: first[1], first[0]:first[2]], pixels[first[1]:first[3], : first[0]]
    assert (above < 128).any() and (left < 128).any()  # labels drawn in ink above the columns, left of the rows
    columns = sorted({c["box"][0] for c in chunk["cells"]})
    rows = sorted({c["box"][1] for c in chunk["cells"]})
    assert len(columns) == 3 and len(rows) == 2


def test_a_z_axis_makes_a_grid_per_value_side_by_side_or_separate(tmp_path):
    extra = {"6": ("XYZValueList", {"title": "batch", "kind": "INT", "values": "1, 2"})}
    wf = sweep(levels="5, 10", extra=extra)
    wf = wf.model_copy(update={"links": [*wf.links, *workflow({}, [("6", 0, "3", "z")]).links]})
    side = make_engine(tmp_path / "a").run(wf).values["5"][0]
    separate = make_engine(tmp_path / "b").run(wf.with_widget("5", "z_layout", "separate")).values["5"][0]
    assert separate.shape[0] == 2 and side.shape[0] == 1
    assert side.shape[2] == 2 * separate.shape[2] and side.shape[1] == separate.shape[1]
    assert torch.equal(side[0, :, : separate.shape[2]], separate[0])


def test_the_grid_refuses_images_that_do_not_match_the_cells(tmp_path):
    plot = Plot(x=make_axis("a", "INT", [1, 2]))
    ctx = NodeContext("1", "XYZGrid", make_engine(tmp_path).env)
    from nodes.xyz import XYZGrid

    with pytest.raises(ValueError, match="2 cells but 3 images"):
        XYZGrid.execute(ctx, images=[torch.zeros(1, 4, 4, 3)] * 3, plot=[plot], filename_prefix=["g"],
                        z_layout=["side by side"], font_size=[0], gap=[2])


# --- the metric chart ----------------------------------------------------------------------------------------------

def test_series_group_and_sort_by_x():
    data = series_data([3.0, 1.0, 2.0, 5.0], [8, 2, 4, 2], ["euler", "euler", "euler", "heun"])
    assert data == {"euler": {"x": [2, 4, 8], "y": [1.0, 2.0, 3.0]}, "heun": {"x": [2], "y": [5.0]}}


def test_plot_metric_charts_the_points_it_was_given(tmp_path):
    env = make_engine(tmp_path).env
    ctx = NodeContext("1", "PlotMetric", env)
    plot = Plot(x=make_axis("steps", "INT", [2, 4, 8]), y=make_axis("sampler", "STRING", ["euler", "heun"]))
    y = [0.2, 0.5, 0.6, 0.4, 0.7, 0.9]
    result = PlotMetric.execute(ctx, y=y, title=["accuracy"], x_label=[""], y_label=["accuracy"], width=[400],
                                height=[300], log_x=[False], plot=[plot])
    chart, text = result.outputs
    data = json.loads(text)
    assert data["x_label"] == "steps"
    assert data["series"] == {"sampler=euler": {"x": [2, 4, 8], "y": [0.2, 0.5, 0.6]},
                              "sampler=heun": {"x": [2, 4, 8], "y": [0.4, 0.7, 0.9]}}
    assert chart.shape == (1, 300, 400, 3)
    pixels = chart[0].numpy()
    saturated = (pixels.max(-1) - pixels.min(-1)) > 0.3  # the coloured lines (matplotlib's C0/C1 blue, orange)
    assert saturated.mean() > 0.002 and (pixels.mean(-1) < 0.2).mean() > 0.002  # lines, and dark text/axes
    assert result.ui["images"][0]["type"] == "temp" and result.ui["text"] == [text]
    flat = PlotMetric.execute(ctx, y=y, title=[""], x_label=[""], y_label=["m"], width=[400], height=[300],
                              log_x=[False], plot=[plot])
    other = PlotMetric.execute(ctx, y=[v + 0.3 for v in y], title=[""], x_label=[""], y_label=["m"], width=[400],
                               height=[300], log_x=[False], plot=[plot])
    assert not torch.equal(flat.outputs[0], other.outputs[0])  # the data changes the picture


def test_plot_metric_in_a_graph_takes_float_lists(tmp_path):
    engine = make_engine(tmp_path)
    wf = workflow({"1": ("XYZValueList", {"title": "v", "kind": "INT", "values": "1, 3, 2"}), "2": ("XYZPlot", {}),
                   "3": ("AsFloat", {}), "4": ("PlotMetric", {"y_label": "v"})},
                  [("1", 0, "2", "x"), ("2", 0, "3", "value"), ("3", 0, "4", "y"), ("2", 1, "4", "x")])
    data = json.loads(engine.run(wf).values["4"][1])
    assert data["series"] == {"": {"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0]}}


# --- on the embedded model: a 2 x 2 sweep, from the engine, the CLI and the server ----------------------------------

sys.path.insert(0, str(ROOT / "scripts"))
import graphs_xyz  # noqa: E402


def seed_sweep(seeds: str) -> dict:
    """Seeds (x) x steps (y) on the embedded model, one image per cell."""
    graph = graphs_xyz.samplers_steps(steps=(2, 3), batch_size=1)
    graph["20"] = {"class_type": "XYZValueList", "inputs": {"title": "seed", "kind": "INT", "values": seeds}}
    graph["3"]["inputs"].update(seed=["22", 0], sampler_name="euler")
    return graph


class CallLog(Hooks):
    """Which nodes ran, and which calls of a node run once per cell ran (read from its progress: step v of
    call i of n is reported as i * steps + v of n * steps)."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.calls: set[tuple[str, int]] = set()

    def node_end(self, run, node_id, node_type, *, cached, ui, seconds, **future):
        if not cached:
            self.ran.append(node_type)

    def progress(self, run, node_id, value, total, preview=None, **future):
        per_call = total // 4
        self.calls.add((node_id, (value - 1) // per_call))


@pytest.fixture(scope="module")
def embedded_engine(tmp_path_factory):
    from tiny_models import engine_at

    torch.set_num_threads(1)
    return engine_at(tmp_path_factory.mktemp("xyz"))


def test_a_seed_sweep_reruns_only_the_sampler_and_what_follows_for_the_changed_cells(embedded_engine):
    from nodegraph.formats.api import from_api

    first = CallLog()
    result = embedded_engine.run(from_api(seed_sweep("1, 2")), hooks=[first])
    assert first.ran.count("CheckpointLoaderSimple") <= 1 and first.ran.count("CLIPTextEncode") <= 2
    assert {call for node, call in first.calls if node == "3"} == {0, 1, 2, 3}
    grid = result.values["23"][0]
    assert grid.shape[0] == 1 and grid.shape[1] > 2 * 128 and grid.shape[2] > 2 * 128
    second = CallLog()
    again = embedded_engine.run(from_api(seed_sweep("1, 5")), hooks=[second])
    # the changed axis, its crossing, and the sampler and what follows; loader, text encoders, latent: cached
    assert second.ran == ["XYZValueList", "XYZPlot", "KSampler", "VAEDecode", "XYZGrid"]
    assert {call for node, call in second.calls if node == "3"} == {1, 3}  # the cells of seed 5 only
    chunk = json.loads(again.values["23"][1])
    boxes = {(c["x"]["value"], c["y"]["value"]): c["box"] for c in chunk["cells"]}
    assert set(boxes) == {(1, 2), (5, 2), (1, 3), (5, 3)}
    old, new = result.values["23"][0][0].numpy(), again.values["23"][0][0].numpy()
    x0, y0, x1, y1 = boxes[(1, 2)]
    assert np.array_equal(old[y0:y1, x0:x1], new[y0:y1, x0:x1])  # seed 1's cells are the cached pictures
    x0, y0, x1, y1 = boxes[(5, 2)]
    assert not np.array_equal(old[y0:y1, x0:x1], new[y0:y1, x0:x1])


def test_the_study_workflow_runs_from_the_cli(tmp_path):
    from nodegraph.cli import main

    code = main(["run", str(ROOT / "workflows" / "xyz-samplers-steps.json"), "--output-dir", str(tmp_path / "out"),
                 "--models-dir", str(tmp_path / "models"), "--device", "cpu", "-q",
                 "--set", "20.values=euler, dpmpp_2m", "--set", "21.values=2, 3", "--set", "5.batch_size=1"])
    assert code == 0
    (saved,) = (tmp_path / "out").glob("xyz_samplers_steps_*.png")
    with Image.open(saved) as png:
        chunk = json.loads(png.text[GRID_KEY])
        assert "prompt" in png.text or "nodegraph_workflow" in png.text  # the workflow rides along, as SaveImage's
    assert chunk["axes"]["x"]["values"] == ["euler", "dpmpp_2m"] and chunk["axes"]["y"]["values"] == [2, 3]


def test_the_grid_shows_in_the_servers_history_and_view(tmp_path, embedded_engine):
    """What the editor's gallery reads: the prompt's history lists the grid, and /view serves it."""
    sys.path.insert(0, str(ROOT / "tests" / "server"))
    from server_helpers import serve, submit, wait_history

    prompt = graphs_xyz.samplers_steps(samplers=("euler", "heun"), steps=(2,), batch_size=1)

    async def scenario() -> None:
        async with serve(tmp_path, engine=embedded_engine) as client:
            queued = await submit(client, prompt)
            history = await wait_history(client, queued["prompt_id"], timeout=40.0)
            assert history["status"]["status_str"] == "success"
            (image,) = history["outputs"]["23"]["images"]
            response = await client.get("/view", params=image)
            assert response.status == 200 and (await response.read()).startswith(b"\x89PNG")

    asyncio.run(asyncio.wait_for(scenario(), 60.0))


def test_a_lora_strength_sweep_runs_the_lora_loader_per_strength(embedded_engine):
    """Strength 0 draws what the model alone draws; strength 1 draws something else."""
    from nodegraph.formats.api import from_api
    from nodes.models.embedded import ADAPTERS

    graph = graphs_xyz.samplers_steps(steps=(2,), batch_size=1, prompt="a yellow star on a purple background, striped")
    graph["20"] = {"class_type": "XYZFloatRange", "inputs": {"title": "lora", "start": 0.0, "stop": 1.0, "count": 2}}
    graph["10"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": ADAPTERS["lora"][1], "strength_model": ["22", 1],
        "strength_clip": 1.0}}
    graph["3"]["inputs"].update(model=["10", 0], sampler_name="euler")
    swept = embedded_engine.run(from_api(graph), outputs=["8"]).values["8"][0]
    plain = dict(graph)
    plain["3"] = {**graph["3"], "inputs": {**graph["3"]["inputs"], "model": ["4", 0], "steps": 2}}
    for node_id in ("10", "20", "21", "22", "23"):
        plain.pop(node_id)
    alone = embedded_engine.run(from_api(plain), outputs=["8"]).values["8"][0]
    assert len(swept) == 2 and torch.allclose(swept[0], alone, atol=1e-5)
    assert (swept[1] - alone).abs().mean() > 0.01


def test_long_labels_wrap_to_the_column_and_short_ones_stay_whole():
    from nodes.xyz.layout import font, wrap

    face = font(20)
    assert wrap("euler", 128, face) == "euler"
    lines = wrap("a small yellow star in the top left on a purple background", 128, face).split("\n")
    assert len(lines) > 2 and all(face.getlength(line) <= 128 * 1.15 for line in lines)
    assert "".join(lines).replace(" ", "") == "asmallyellowstarinthetopleftonapurplebackground"
