"""The embedded default model, as a user meets it: the shipped txt2img workflow follows the prompt.

Images come through the normal workflow path (CheckpointLoaderSimple on the packaged file, our text encoding,
KSampler, VAEDecode) with fixed seeds, and are scored by the analytic classifier of `training/classifier.py`
(calibrated on VAE reconstructions of real renders), not compared pixel by pixel."""

from pathlib import Path

import pytest

from nodegraph.formats import load_workflow_file
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH
from tiny_models import engine_at
from training.classifier import classify

WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "txt2img.json"
PROMPTS = [("circle", "red", "blue"), ("square", "yellow", "purple"), ("triangle", "green", "white"),
           ("star", "orange", "black"), ("ring", "cyan", "pink"), ("square", "blue", "yellow")]

pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model's weights are not built yet")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return engine_at(tmp_path_factory.mktemp("embedded"))


def test_embedded_model_is_listed_first(engine):
    assert engine.env.models.list("checkpoints")[0] == EMBEDDED_NAME
    assert EMBEDDED_PATH.stat().st_size <= 25 * 1024 * 1024


def test_txt2img_follows_the_prompt(engine):
    workflow = load_workflow_file(WORKFLOW, engine.registry)
    hits = {"fg": 0, "bg": 0, "shape": 0}
    total = 0
    for index, (shape, fg, bg) in enumerate(PROMPTS):
        run = workflow.with_widget("6", "text", f"a {fg} {shape} on a {bg} background").with_widget("3", "seed", index)
        images = engine.run(run, outputs=["8"]).values["8"][0]  # a batch of 4 from VAEDecode
        for image in images:
            found = classify((image.clamp(0, 1).numpy() * 255).round().astype("uint8"))
            hits["fg"] += found.fg == fg
            hits["bg"] += found.bg == bg
            hits["shape"] += found.shape == shape
            total += 1
    accuracy = {key: value / total for key, value in hits.items()}
    print(f"prompt adherence over {total} images: {accuracy}")
    # Chance is 1/9 for a colour and 1/5 for a shape. The bars are the acceptance of issue 4 (90/90/80), which
    # scripts/evaluate_embedded_model.py measures on 160 images (see the model card); measured here: 1.0 / 1.0 / 1.0.
    assert accuracy["fg"] >= 0.9 and accuracy["bg"] >= 0.9 and accuracy["shape"] >= 0.8, accuracy
