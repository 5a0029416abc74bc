"""The shipped workflows: current with their generator, importable in both formats, and each one runs on the
embedded model and its adapters, as shipped (no model mapped)."""

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from nodegraph import default_registry
from nodegraph.formats import load_workflow_file
from nodegraph.formats.api import to_api
from nodes.xyz.axes import split_values
from tiny_models import engine_at

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
sys.path.insert(0, str(ROOT / "scripts"))
import build_workflows  # noqa: E402

NAMES = sorted(build_workflows.GRAPHS)


def test_shipped_files_are_what_the_generator_writes():
    for name, (native, ui) in build_workflows.build().items():
        assert json.loads((WORKFLOWS / f"{name}.json").read_text()) == native, "re-run scripts/build_workflows.py"
        assert json.loads((WORKFLOWS / "comfyui" / f"{name}.json").read_text()) == ui


@pytest.mark.parametrize("name", NAMES)
def test_native_and_comfyui_exports_describe_the_same_graph(name):
    registry = default_registry()
    native = load_workflow_file(WORKFLOWS / f"{name}.json", registry)
    comfy = load_workflow_file(WORKFLOWS / "comfyui" / f"{name}.json", registry)
    assert to_api(native, registry) == to_api(comfy, registry)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return engine_at(tmp_path_factory.mktemp("workflows"), input_dir=WORKFLOWS / "input")


@pytest.mark.parametrize("name", NAMES)
def test_each_workflow_runs_and_saves_its_images(name, engine):
    workflow = load_workflow_file(WORKFLOWS / f"{name}.json", engine.registry)
    for node_id, node in workflow.nodes.items():  # fewer steps: this checks the graph runs, not image quality
        if node.type == "KSampler" and "steps" in node.widgets:  # (a swept steps is linked)
            workflow = workflow.with_widget(node_id, "steps", min(node.widgets["steps"], 4))
        if node.type in ("XYZValueList", "XYZSamplerValues"):  # an X/Y/Z sweep: its first two values per axis
            workflow = workflow.with_widget(node_id, "values", ", ".join(split_values(node.widgets["values"])[:2]))
    result = engine.run(workflow)
    saved = [entry for ui in result.ui.values() for entry in ui.get("images", [])]
    assert saved
    with Image.open(engine.env.output_dir / saved[0]["subfolder"] / saved[0]["filename"]) as image:
        side = {"hires-fix": 256, "hires_fix_upscale_model": 192}.get(name, 128)
        if name.startswith("xyz"):  # a labelled grid of 2 x 2 cells, each a batch of 128 px images
            assert image.size[0] > 2 * 128 and image.size[1] > 2 * 128
        else:
            assert image.size == {"panorama": (512, 128)}.get(name, (side, side))
