"""`nodegraph run`/`validate` with ComfyUI files, PNGs and --map-model, as a user runs them."""

import copy
import json
from pathlib import Path

from PIL import Image

from corpus_util import ui
from nodegraph import default_registry, load_workflow
from nodegraph.cli import main
from nodegraph.formats import ui_from_native
from nodegraph.formats.png import png_info

HELLO = Path(__file__).parents[2] / "workflows" / "hello.json"


def _hello_ui(tmp_path):
    data = ui_from_native(load_workflow(HELLO), default_registry())
    path = tmp_path / "hello_ui.json"
    path.write_text(json.dumps(data))
    return path, data


def test_run_accepts_comfyui_ui_format_and_map_model(tmp_path, capsys):
    path, _ = _hello_ui(tmp_path)
    assert main(["run", str(path), "--output-dir", str(tmp_path), "-q"]) == 0
    assert (tmp_path / "hello_00001_.txt").read_text() == "Hello, nodegraph"
    assert main(["run", str(path), "--output-dir", str(tmp_path), "-q", "--map-model", "nodegraph=ComfyUI"]) == 0
    assert (tmp_path / "hello_00002_.txt").read_text() == "Hello, ComfyUI"


def test_run_accepts_a_png_carrying_a_workflow(tmp_path):
    _, data = _hello_ui(tmp_path)
    png = tmp_path / "made_by_comfy.png"
    Image.new("RGB", (4, 4)).save(png, pnginfo=png_info(None, data, None))
    assert main(["run", str(png), "--output-dir", str(tmp_path), "-q"]) == 0
    assert (tmp_path / "hello_00001_.txt").read_text() == "Hello, nodegraph"


def test_validate_lists_every_missing_node_type(tmp_path, capsys):
    data = copy.deepcopy(ui("ui_default_graph.json"))
    for node in data["nodes"]:
        node["type"] = f"NotInstalled{node['type']}"
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    assert main(["validate", str(path), "--output-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    for node in data["nodes"]:
        assert f"node {node['id']} ({node['type']})" in err
    assert err.count("missing_node_type") == len(data["nodes"])


def test_bad_map_model_and_png_without_workflow_are_readable(tmp_path, capsys):
    path, _ = _hello_ui(tmp_path)
    assert main(["run", str(path), "--map-model", "oops", "--output-dir", str(tmp_path)]) == 2
    assert "expected OLD=NEW" in capsys.readouterr().err
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert main(["validate", str(plain), "--output-dir", str(tmp_path)]) == 2
    assert "carries no workflow" in capsys.readouterr().err
