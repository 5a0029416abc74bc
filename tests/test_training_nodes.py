"""ComfyUI's training nodes on the embedded model, as a user meets them through the engine.

The image-set loaders against the files and our text encoder; TrainLoraNode by what it does: its LoRA changes
the images, the file SaveLoRANode writes loads back through LoraLoader and gives the same images as the trained
model, progress reaches the run's hooks step by step, and an interrupted run resumes to exactly the LoRA an
uninterrupted run trains. LossGraphNode against its plotting formula.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import NodeContext
from nodegraph.context import CancelToken
from nodegraph.errors import Interrupted
from nodegraph.formats.api import from_api
from nodegraph.hooks import Hooks
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH
from nodes.sd.finetune.lora_train import LossHistory
from nodes.training import LoraModelLoader, LossGraphNode
from tiny_models import engine_at

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import graphs_training  # noqa: E402

pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model's weights are not built yet")
SET = "set"
STEPS = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _engine(root: Path):
    (root / "input").mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "workflows" / "input" / graphs_training.TRAINING_FOLDER, root / "input" / SET,
                    dirs_exist_ok=True)
    return engine_at(root, input_dir=root / "input")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return _engine(tmp_path_factory.mktemp("training"))


def training_graph(steps: int = STEPS, **train: object) -> dict:
    graph = graphs_training.lora_training()
    graph["10"]["inputs"]["folder"] = SET
    graph["12"]["inputs"].update({"steps": steps, "learning_rate": 0.005, **train})
    graph["3"]["inputs"].update(steps=4)
    return graph


def test_image_sets_load_the_folder_and_encode_each_caption(engine):
    from nodes.sd.text import encode

    graph = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
             "1": {"class_type": "LoadImageSetFromFolderNode", "inputs": {"folder": SET}},
             "2": {"class_type": "LoadImageTextSetFromFolderNode", "inputs": {"folder": SET, "clip": ["4", 1]}}}
    values = engine.run(from_api(graph), outputs=["1", "2", "4"]).values
    files = sorted((engine.env.input_dir / SET).glob("*.png"))
    expected = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255)
                            for f in files])
    assert torch.equal(values["1"][0], expected) and torch.equal(values["2"][0], expected)
    conditioning = values["2"][1]
    assert len(conditioning) == len(files) == 5
    for path, item in zip(files, conditioning):
        caption = path.with_suffix(".txt").read_text().strip()
        assert caption.endswith(", striped")
        assert torch.equal(item.embeds, encode(values["4"][1], caption).embeds)
    from nodes.training.datasets import input_subfolders

    assert SET in input_subfolders(engine.env)


class Recorder(Hooks):
    def __init__(self, stop_at: int | None = None, cancel: CancelToken | None = None) -> None:
        self.steps: list[tuple[int, int, bool]] = []
        self.stop_at, self.cancel = stop_at, cancel

    def progress(self, run, node_id, value, total, preview=None) -> None:
        if node_id == "12":
            self.steps.append((value, total, preview is not None))
            if self.stop_at == value and self.cancel is not None:
                self.cancel.cancel()


def test_trained_lora_changes_images_and_loads_back_through_lora_loader(engine):
    recorder = Recorder()
    graph = training_graph()
    graph["20"] = {"class_type": "KSampler", "inputs": {**graph["3"]["inputs"], "model": ["4", 0]}}
    result = engine.run(from_api(graph), outputs=["3", "20", "12", "13"], hooks=[recorder])
    assert [s[:2] for s in recorder.steps] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert all(has_preview for *_, has_preview in recorder.steps)  # the loss curve, every step at this length
    model_with_lora, lora, losses, steps = result.values["12"]
    assert steps == STEPS and len(losses.values) == STEPS
    trained, base = result.values["3"][0].samples, result.values["20"][0].samples
    change = (trained - base).abs().mean() / base.abs().mean()
    print(f"relative change of the latents by the LoRA: {float(change):.4f}")  # 0.33 measured
    assert change > 0.1, f"the LoRA barely changed the latents ({float(change):.4f})"

    saved = result.ui["13"]["models"][0]
    assert saved["filename"] == f"trained_striped_{STEPS}_steps_00001_.safetensors" and saved["subfolder"] == "loras"
    loras = engine.env.models.roots[0] / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(engine.env.output_dir / "loras" / saved["filename"], loras / "trained.safetensors")
    reload = training_graph()
    reload["30"] = {"class_type": "LoraLoaderModelOnly",
                    "inputs": {"model": ["4", 0], "lora_name": "trained.safetensors", "strength_model": 1.0}}
    reload["3"]["inputs"]["model"] = ["30", 0]
    reloaded = engine.run(from_api(reload), outputs=["3"]).values["3"][0].samples
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)

    # LoraModelLoader: strength 0 is the very same model; strength 1 the trained weights
    ctx = NodeContext("x", "LoraModelLoader", engine.env)
    base_model = engine.run(from_api({"4": graph["4"]}), outputs=["4"]).values["4"][0]
    assert LoraModelLoader.execute(ctx, base_model, lora, 0.0)[0] is base_model
    loaded = LoraModelLoader.execute(ctx, base_model, lora, 1.0)[0].unet
    for name, weight in model_with_lora.unet.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[name], weight), name

    # existing_lora continues the saved file: its steps count on, and at a negligible learning rate the
    # continued layers are the file's (so the file was read back exactly)
    shutil.copy(loras / "trained.safetensors", loras / saved["filename"])
    more = training_graph(steps=2, existing_lora=saved["filename"], learning_rate=1e-7, optimizer="SGD")
    _, continued, _, total = engine.run(from_api(more), outputs=["12"]).values["12"]
    assert total == STEPS + 2
    for key, tensor in lora.tensors.items():
        torch.testing.assert_close(continued.tensors[key], tensor, rtol=0, atol=1e-6)


def test_an_interrupted_run_resumes_to_the_uninterrupted_lora(engine, tmp_path):
    graph = from_api(training_graph(seed=3))
    cancel = CancelToken()
    stopper = Recorder(stop_at=2, cancel=cancel)
    with pytest.raises(Interrupted):
        engine.run(graph, outputs=["12"], hooks=[stopper], cancel=cancel)
    assert [s[0] for s in stopper.steps] == [1, 2]
    state = list((engine.env.temp_dir / "training").glob("lora-*.safetensors"))
    assert state, "no training state was saved at the interrupt"
    resumed_steps = Recorder()
    resumed = engine.run(graph, outputs=["12"], hooks=[resumed_steps]).values["12"]
    assert [s[0] for s in resumed_steps.steps] == list(range(3, STEPS + 1))  # it went on from step 2

    fresh = _engine(tmp_path).run(graph, outputs=["12"]).values["12"]  # another temp folder: no state
    assert resumed[2].values == fresh[2].values
    assert resumed[1].tensors.keys() == fresh[1].tensors.keys()
    for key, tensor in fresh[1].tensors.items():
        assert torch.equal(resumed[1].tensors[key], tensor), key
    assert all(key.startswith("lora_unet_") for key in fresh[1].tensors)


def test_loss_graph_plots_each_step_between_min_and_max(tmp_path):
    ctx = NodeContext("g", "LossGraphNode", SimpleNamespace(temp_dir=tmp_path))
    result = LossGraphNode.execute(ctx, LossHistory((2.0, 1.0, 0.0, 1.0)), "loss_graph")
    saved = result.ui["images"][0]
    assert saved["type"] == "temp" and saved["filename"].startswith("loss_graph_")
    with Image.open(tmp_path / saved["filename"]) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape == (520, 840, 3)

    def blue(x: int, y: int) -> bool:
        patch = pixels[max(0, y - 2): y + 3, max(0, x - 2): x + 3].reshape(-1, 3)
        return any(b > 200 and r < 60 and g < 60 for r, g, b in patch)

    # step i of n at x = 40 + i / n * 800, loss l at y = 480 - (l - min) / (max - min) * 480
    assert blue(40 + 1, 0 + 1) and blue(240, 240) and blue(440, 479) and blue(640 - 1, 240)
    assert not blue(240, 100) and not blue(440, 240)
    with pytest.raises(ValueError, match="no loss"):
        LossGraphNode.execute(ctx, LossHistory(()), "loss_graph")
