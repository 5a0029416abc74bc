"""The real-world corpus against our real node set: every file imports, SD1 graphs validate with their
models mapped to ones that are here, and run end to end on the embedded model (its VAE, style LoRA and outline
ControlNet standing in for the files the workflows name; 2 steps each, at a quarter of their pixel sizes)."""

import json

import pytest
import torch
from PIL import Image

from corpus_util import CORPUS, raw, ui
from nodegraph import default_registry
from nodegraph.formats import map_models, to_workflow
from nodegraph.validation import validate_workflow
from nodes.image import image_to_png_bytes
from nodes.models.embedded import ADAPTERS, EMBEDDED_NAME, EMBEDDED_PATH
from tiny_models import engine_at

# Node types of newer model families (and one mask node) that we do not implement.
REROUTE_TEST_GRAPHS = ("ui_reroute_nodes.json", "ui_native_reroutes.json")
"""ComfyUI's reroute test graphs: no output node, sockets left open on purpose."""
NOT_YET = {"ui_subgraph_text_to_image.json": {"EmptySD3LatentImage"}}
# (its ModelSamplingAuraFlow node is bypassed, so it never needs to exist)
PIXEL_WIDGETS = {"EmptyLatentImage": ("width", "height"), "LatentUpscale": ("width", "height"),
                 "ImageScale": ("width", "height"), "ConditioningSetArea": ("width", "height", "x", "y"),
                 "ImagePadForOutpaint": ("left", "top", "right", "bottom", "feathering")}
SD1_GRAPHS = ["api_default_graph.json", "ui_default_graph.json", "ui_default_template.json", "ui_img2img.json",
              "png_area_composition.json", "png_hiresfix_latent.json", "png_outpaint.json", "png_lora.json",
              "png_controlnet.json"]


def load(name, registry):
    data = ui(name) if name.startswith("png_") else raw(name)
    return to_workflow(data, registry, name)


def names_of(workflow, node_type, widget):
    return {n.widgets[widget] for n in workflow.nodes.values() if n.type == node_type and widget in n.widgets}


def shrink(workflow, factor=4):
    """A smoke-run copy: every pixel size divided by `factor` (multiples of 8, within each input's range)."""
    registry = default_registry()
    for node_id, node in workflow.nodes.items():
        for name in PIXEL_WIDGETS.get(node.type, ()):
            if name in node.widgets:
                spec = registry[node.type].schema.input(name)
                value = max(spec.min or 0, round(node.widgets[name] / factor / 8) * 8)
                workflow = workflow.with_widget(node_id, name, value)
    return workflow


def mapped(workflow):
    """Every model name mapped to the embedded model and its adapters (`--map-model` does the same)."""
    mapping = {old: EMBEDDED_NAME for old in names_of(workflow, "CheckpointLoaderSimple", "ckpt_name")}
    mapping.update({old: "embedded-vae.safetensors" for old in names_of(workflow, "VAELoader", "vae_name")})
    mapping.update({old: ADAPTERS["lora"][1] for old in names_of(workflow, "LoraLoader", "lora_name")})
    mapping.update({old: ADAPTERS["controlnet"][1]
                    for old in names_of(workflow, "ControlNetLoader", "control_net_name")})
    return map_models(workflow, mapping)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for folder in ("checkpoints", "vae", "loras", "controlnet"):
        (root / "models" / folder).mkdir(parents=True)
    from safetensors.torch import load_file, save_file  # a standalone VAE file, as VAE downloads come (LDM keys)

    vae_keys = {k.removeprefix("first_stage_model."): v for k, v in load_file(EMBEDDED_PATH).items()
                if k.startswith("first_stage_model.")}
    save_file(vae_keys, root / "models" / "vae" / "embedded-vae.safetensors")
    return engine_at(root)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.json")))
def test_every_corpus_file_validates_with_models_mapped(name, engine):
    registry = engine.registry
    workflow = mapped(load(name, registry))
    for image in names_of(workflow, "LoadImage", "image"):
        (engine.env.input_dir / image).write_bytes(image_to_png_bytes(torch.rand(64, 64, 3)))
    issues = validate_workflow(workflow, registry, engine.env)
    unimplemented = {i.class_type for i in issues if i.type == "missing_node_type"}
    assert unimplemented == NOT_YET.get(name, set())
    # What remains is only what those missing nodes would have fed, or a test graph with no output node.
    others = [i for i in issues if i.type != "missing_node_type"]
    if not unimplemented and name not in REROUTE_TEST_GRAPHS:
        assert others == [], "\n".join(map(str, others))


@pytest.mark.parametrize("name", SD1_GRAPHS)
def test_sd1_corpus_graph_runs_end_to_end_on_a_mapped_model(name, engine):
    workflow = shrink(mapped(load(name, engine.registry)))
    for image in names_of(workflow, "LoadImage", "image"):
        (engine.env.input_dir / image).write_bytes(image_to_png_bytes(torch.rand(128, 192, 3)))
    for node_id, node in workflow.nodes.items():  # a smoke run: 2 steps, small latents
        if node.type in ("KSampler", "KSamplerAdvanced"):
            workflow = workflow.with_widget(node_id, "steps", 2)
            if node.type == "KSamplerAdvanced":
                workflow = workflow.with_widget(node_id, "end_at_step", min(node.widgets.get("end_at_step", 2), 2))
    engine.cache.clear()  # each file's images are saved with its own workflow, not reused from another file
    result = engine.run(workflow, metadata={"workflow": ui(name) if not name.startswith("api_") else None})
    saved = [entry for ui_out in result.ui.values() for entry in ui_out.get("images", [])]
    assert saved, f"{name}: no image saved"
    for entry in saved:
        folder = engine.env.output_dir if entry["type"] == "output" else engine.env.temp_dir
        with Image.open(folder / entry["subfolder"] / entry["filename"]) as image:
            assert image.width >= 96 and image.height >= 96
            if not name.startswith("api_"):
                assert json.loads(image.text["workflow"])["nodes"]  # the UI workflow travels with the image
