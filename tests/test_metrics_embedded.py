"""The metrics out of the box on the embedded model: the shipped tiny CLIP vision tower for CLIP score, FID and
the Inception Score (zero-shot over the shapes captions), LPIPS's formula on that tower, and the analytic shapes
classifier for conditional accuracy; all on procedural renders, whose answers are known."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nodegraph.formats.api import from_api
from nodegraph.models import ModelManager
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH, default_adapter_path
from nodes.sd import clip_vision as cv
from nodes.sd.metrics import text_image as ti
from nodes.sd.shapes import caption, render, spec_from_seed
from tiny_models import engine_at

pytestmark = pytest.mark.skipif(not default_adapter_path("clip_vision").is_file(), reason="no shipped tower")
TOWER = default_adapter_path("clip_vision").name


def plain(spec):
    return replace(spec, mention_size=False, mention_position=False)


def renders(count: int, start: int = 0) -> tuple[torch.Tensor, list[str]]:
    """IMAGE [count, 128, 128, 3] of procedural shapes and their plain captions."""
    specs = [plain(spec_from_seed(seed)) for seed in range(start, start + count)]
    images = np.stack([np.asarray(render(spec, 128)[0], dtype=np.float32) / 255 for spec in specs])
    return torch.from_numpy(images), [caption(spec) for spec in specs]


@pytest.fixture(scope="module")
def embedded():
    from nodes.sd.loading import load_checkpoint

    return load_checkpoint(EMBEDDED_PATH).clip, cv.load_clip_vision(default_adapter_path("clip_vision"),
                                                                    manager=ModelManager("cpu"))


def test_expand_prompts_gives_every_combination_in_order():
    assert ti.expand_prompts("a {red|blue} {circle|star}\n\nplain") == \
        ["a red circle", "a red star", "a blue circle", "a blue star", "plain"]


def test_clip_score_is_torchmetrics_formula_and_prefers_the_right_caption(embedded):
    clip, tower = embedded
    images, captions = renders(6)
    image_embeds = cv.encode_image(tower.model, images).image_embeds
    right = ti.text_embeddings(clip, captions, image_embeds.shape[-1])
    expected = (100 * F.cosine_similarity(image_embeds, right, dim=-1).clamp(min=0)).mean()
    assert ti.clip_score(image_embeds, right) == pytest.approx(float(expected), rel=1e-6)
    wrong = ti.text_embeddings(clip, captions[1:] + captions[:1], image_embeds.shape[-1])
    assert ti.clip_score(image_embeds, right) > ti.clip_score(image_embeds, wrong) + 5


def test_conditional_accuracy_reads_what_the_prompt_asks():
    images, captions = renders(5)
    assert ti.asked_attributes("a red star on an orange background") == \
        {"foreground": "red", "shape": "star", "background": "orange"}
    assert ti.conditional_accuracy(images[:1], captions[:1]) == 1.0
    assert ti.conditional_accuracy(images, captions) >= 0.8  # the classifier reads clean renders (see its tests)
    shape = captions[0].split()[2]
    other = "ring" if shape != "ring" else "star"
    assert ti.conditional_accuracy(images[:1], [captions[0].replace(shape, other)], "shape") == 0.0
    assert ti.conditional_accuracy(images[:1], [captions[0].replace(shape, other)], "foreground") == 1.0
    with pytest.raises(ValueError, match="names no shape"):
        ti.conditional_accuracy(images[:1], ["a photo of a cat"], "shape")


def test_every_metric_runs_out_of_the_box_on_the_embedded_model(tmp_path):
    """One graph on the shipped files only: feature model with class prompts, FID/KID/IS/precision-recall against
    renders, LPIPS on the tower, CLIP score and conditional accuracy of the images against their caption."""
    images, captions = renders(8)
    others, _ = renders(8, start=100)
    engine = engine_at(tmp_path)
    assert TOWER in engine.env.models.list("lpips")
    from nodegraph.schema import Node, NodeSchema, Out

    def source(name, batch):
        class Images(Node):
            schema = NodeSchema(type_id=name, display_name=name, outputs=(Out("IMAGE"),))

            @classmethod
            def execute(cls, ctx):
                return (batch,)

        return Images

    engine.registry.register(source("TestImages", images))
    engine.registry.register(source("TestOthers", others))
    engine.registry.register(source("TestFirst", images[:1]))
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "tower": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": TOWER}},
        "fm": {"class_type": "CLIPVisionFeatureModel", "inputs": {
            "clip_vision": ["tower", 0], "clip": ["ckpt", 1],
            "class_prompts": "{a red|a blue|a green} {circle|square|star} on {a white|a black} background"}},
        "img": {"class_type": "TestImages", "inputs": {}},
        "ref": {"class_type": "TestOthers", "inputs": {}},
        "one": {"class_type": "TestFirst", "inputs": {}},
        "fid_self": {"class_type": "MetricFID", "inputs": {"images": ["img", 0], "feature_model": ["fm", 0],
                                                           "reference_folder": "", "reference_images": ["img", 0]}},
        "fid": {"class_type": "MetricFID", "inputs": {"images": ["img", 0], "feature_model": ["fm", 0],
                                                      "reference_folder": "", "reference_images": ["ref", 0]}},
        "kid": {"class_type": "MetricKID", "inputs": {"images": ["img", 0], "feature_model": ["fm", 0],
                                                      "reference_folder": "", "subsets": 10, "subset_size": 8,
                                                      "seed": 0, "reference_images": ["ref", 0]}},
        "is": {"class_type": "MetricInceptionScore", "inputs": {"images": ["img", 0], "feature_model": ["fm", 0],
                                                                "splits": 1}},
        "pr": {"class_type": "MetricPrecisionRecall", "inputs": {"images": ["img", 0], "feature_model": ["fm", 0],
                                                                 "reference_folder": "", "k": 3,
                                                                 "reference_images": ["img", 0]}},
        "lp_loader": {"class_type": "LPIPSLoader", "inputs": {"lpips_name": TOWER}},
        "lpips": {"class_type": "MetricLPIPS", "inputs": {"images": ["img", 0], "lpips_model": ["lp_loader", 0],
                                                          "mode": "diversity"}},
        "lpips_self": {"class_type": "MetricLPIPS", "inputs": {"images": ["img", 0], "lpips_model": ["lp_loader", 0],
                                                               "mode": "references", "references": ["img", 0]}},
        "clip": {"class_type": "MetricCLIPScore", "inputs": {"images": ["one", 0], "clip_vision": ["tower", 0],
                                                             "clip": ["ckpt", 1], "prompt": captions[0]}},
        "acc": {"class_type": "MetricConditionalAccuracy", "inputs": {"images": ["one", 0], "prompt": captions[0],
                                                                      "attribute": "all"}},
    }
    outputs = ["fid_self", "fid", "kid", "is", "pr", "lpips", "lpips_self", "clip", "acc"]
    result = engine.run(from_api(graph, engine.registry), outputs=outputs)
    value = {name: result.values[name] for name in outputs}
    assert abs(value["fid_self"][0]) < 1e-4 < 0.01 < value["fid"][0]  # 8 images in 64-d: round-off only
    assert len(value["kid"]) == 2 and value["kid"][1] >= 0
    assert 1.0 <= value["is"][0] <= 18.0  # 18 class prompts
    assert value["pr"] == (1.0, 1.0)
    assert value["lpips"][0] > 0 and value["lpips_self"][0] == 0.0
    assert 0 < value["clip"][0] <= 100 and value["acc"][0] == 1.0
    for name in outputs:  # every metric shows its number on the node
        assert result.ui[name]["text"]
