"""The real-world corpus against our real node set: every file imports, SD1 graphs validate with their
checkpoint mapped to a model that is here, and run end to end (a tiny SD1 checkpoint, 2 steps each)."""

import json

import pytest
import torch
from PIL import Image

from corpus_util import CORPUS, prompt, raw, ui
from nodegraph import default_registry
from nodegraph.app import AppConfig, build_engine
from nodegraph.formats import map_models, to_workflow
from nodegraph.validation import validate_workflow
from nodes.images import image_to_png_bytes
from nodes.sd.loading.export import ldm_state_dict
from tiny_models import sd1_modules, write_checkpoint

# Node types of later issues (LoRA, ControlNet) and of newer model families we do not implement.
NOT_YET = {"png_lora.json": {"LoraLoader"}, "png_controlnet.json": {"ControlNetLoader", "ControlNetApply"},
           "ui_native_reroutes.json": {"InvertMask"},
           "ui_subgraph_text_to_image.json": {"CLIPLoader", "EmptySD3LatentImage", "UNETLoader"}}
# (its ModelSamplingAuraFlow node is bypassed, so it never needs to exist)
PIXEL_WIDGETS = {"EmptyLatentImage": ("width", "height"), "LatentUpscale": ("width", "height"),
                 "ImageScale": ("width", "height"), "ConditioningSetArea": ("width", "height", "x", "y"),
                 "ImagePadForOutpaint": ("left", "top", "right", "bottom", "feathering")}
SD1_GRAPHS = ["api_default_graph.json", "ui_default_graph.json", "ui_default_template.json", "ui_img2img.json",
              "png_area_composition.json", "png_hiresfix_latent.json", "png_outpaint.json"]


def load(name, registry):
    data = ui(name) if name.startswith("png_") else raw(name)
    return to_workflow(data, registry, name)


def names_of(workflow, node_type, widget):
    return {n.widgets[widget] for n in workflow.nodes.values() if n.type == node_type and widget in n.widgets}


def shrink(workflow, factor=8):
    """A smoke-run copy: every pixel size divided by `factor` (multiples of 8, within each input's range)."""
    from nodegraph import default_registry

    registry = default_registry()
    for node_id, node in workflow.nodes.items():
        for name in PIXEL_WIDGETS.get(node.type, ()):
            if name in node.widgets:
                spec = registry[node.type].schema.input(name)
                value = max(spec.min or 0, round(node.widgets[name] / factor / 8) * 8)
                workflow = workflow.with_widget(node_id, name, value)
    return workflow


def mapped(workflow):
    """Every checkpoint and VAE name mapped to the tiny files that are here."""
    mapping = {old: "tiny.safetensors" for old in names_of(workflow, "CheckpointLoaderSimple", "ckpt_name")}
    mapping.update({old: "tiny-vae.safetensors" for old in names_of(workflow, "VAELoader", "vae_name")})
    return map_models(workflow, mapping)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for folder in ("checkpoints", "vae"):
        (root / "models" / folder).mkdir(parents=True)
    modules = sd1_modules(seed=5, text_hidden=64)
    write_checkpoint(modules, root / "models" / "checkpoints" / "tiny.safetensors")
    from safetensors.torch import save_file  # a standalone VAE file, as VAE downloads come (LDM keys)

    vae_keys = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in
                ldm_state_dict("sd1", modules.unet, modules.vae, modules.encoders).items()
                if k.startswith("first_stage_model.")}
    save_file(vae_keys, root / "models" / "vae" / "tiny-vae.safetensors")
    return build_engine(AppConfig(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                                  models_dir=root / "models", device="cpu"))


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
    if not unimplemented and name != "ui_reroute_nodes.json":
        assert others == [], "\n".join(map(str, others))


@pytest.mark.parametrize("name", SD1_GRAPHS)
def test_sd1_corpus_graph_runs_end_to_end_on_a_mapped_model(name, engine):
    workflow = shrink(mapped(load(name, engine.registry)))
    for image in names_of(workflow, "LoadImage", "image"):
        (engine.env.input_dir / image).write_bytes(image_to_png_bytes(torch.rand(64, 96, 3)))
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
            assert image.width >= 64 and image.height >= 64
            if not name.startswith("api_"):
                assert json.loads(image.text["workflow"])["nodes"]  # the UI workflow travels with the image
