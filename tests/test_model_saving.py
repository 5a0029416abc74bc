"""CheckpointSave, ModelSave, VAESave and CLIPSave write real files that load back bit-identically through our
loaders, open in diffusers' single-file converters, carry ComfyUI's metadata, and stay inside the output folder."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import sd1_modules, sd2_modules, sdxl_modules, write_diffusers_folder

from nodegraph import NodeContext
from nodegraph.environment import Environment
from nodegraph.errors import ValidationFailed
from nodegraph.hooks import RunInfo
from nodegraph.registry import NodeRegistry
from nodegraph.validation import compile_workflow
from nodegraph.workflow import NodeInstance, Workflow
from nodes.model_merging import CheckpointSave, CLIPSave, LoraSave, ModelSave, VAESave
from nodes.sd.loading import load_checkpoint, load_vae
from nodes.sd.loading.build import fill, new_text_encoder, new_unet
from nodes.sd.loading.configs import family_defaults, nodegraph_config, text_config_from_weights, unet_config_from_ldm
from nodes.sd.loading.files import PrefixView, WeightFile
from nodes.sd.loading.handles import assemble
from nodes.sd.loading.keymap import clip_rules, unet_rules

BUILDERS = {"sd1": sd1_modules, "sd2": sd2_modules, "sdxl": sdxl_modules}
PROMPT = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}}}
WORKFLOW = {"nodes": [{"id": 4, "type": "CheckpointLoaderSimple"}], "links": []}


def _handles(modules):
    return assemble(family=modules.family, prediction=modules.prediction, schedule=None, unet=modules.unet,
                    vae=modules.vae, vae_config=dict(modules.vae.config), encoders=modules.encoders,
                    open_clip={"sd1": [False], "sd2": [True], "sdxl": [False, True]}[modules.family], device="cpu",
                    dtype=torch.float32, source=modules.family, metadata={})


@pytest.fixture()
def env(tmp_path):
    return Environment(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp")


def _ctx(env):
    return NodeContext("9", "Test", env, run=RunInfo(run_id="r", outputs=[],
                                                      metadata={"prompt": PROMPT, "workflow": WORKFLOW}))


def _path(env, result, index=0) -> Path:
    entry = result.ui["models"][index]
    return env.output_dir / entry["subfolder"] / entry["filename"]


def _same(module, reference):
    state = module.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key


def _metadata(path):
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_checkpoint_save_reloads_bit_identically_with_comfyui_metadata(env, family):
    modules = BUILDERS[family](0)
    handles = _handles(modules)
    result = CheckpointSave.execute(_ctx(env), handles.model, handles.clip, handles.vae, "checkpoints/ComfyUI")
    path = _path(env, result)
    assert path == env.output_dir / "checkpoints" / "ComfyUI_00001_.safetensors"
    loaded = load_checkpoint(path)
    assert loaded.family == family and loaded.model.prediction == modules.prediction
    _same(loaded.model.unet, modules.unet)
    _same(loaded.vae.vae, modules.vae)
    for encoder, reference in zip(loaded.clip.encoders, modules.encoders, strict=True):
        _same(encoder, reference)
    assert loaded.vae.scaling_factor == handles.vae.scaling_factor
    metadata = _metadata(path)
    assert json.loads(metadata["prompt"]) == PROMPT and json.loads(metadata["workflow"]) == WORKFLOW
    assert metadata["modelspec.predict_key"] == ("v" if family == "sd2" else "epsilon")
    assert nodegraph_config(metadata)["family"] == family
    if family == "sdxl":
        assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
        assert metadata["modelspec.title"] == "ComfyUI 1" and metadata["modelspec.sai_model_spec"] == "1.0.0"
    else:
        assert "modelspec.architecture" not in metadata
    with safe_open(str(path), "pt") as handle:
        assert ("v_pred" in handle.keys()) == (family == "sd2")


def test_saved_checkpoint_opens_in_diffusers_single_file_loaders(env, tmp_path):
    """diffusers converts our file itself (its own key maps) with configs from a local folder: no download."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    modules = sd1_modules(0)
    handles = _handles(modules)
    path = _path(env, CheckpointSave.execute(_ctx(env), handles.model, handles.clip, handles.vae, "ckpt"))
    folder = write_diffusers_folder(modules, tmp_path / "config")
    unet = UNet2DConditionModel.from_single_file(str(path), config=str(folder), subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_single_file(str(path), config=str(folder), subfolder="vae", local_files_only=True)
    text = create_diffusers_clip_model_from_ldm(CLIPTextModel, load_file(str(path)), subfolder="text_encoder",
                                                config=str(folder), local_files_only=True)
    _same(unet, modules.unet)
    _same(vae, modules.vae)
    _same(text, modules.encoders[0])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_model_save_writes_a_unet_only_file_that_rebuilds_exactly(env, family):
    modules = BUILDERS[family](1)
    result = ModelSave.execute(_ctx(env), _handles(modules).model, "diffusion_models/ComfyUI")
    path = _path(env, result)
    assert path.parent == env.output_dir / "diffusion_models"
    with WeightFile(path) as weights:
        assert all(key.startswith("model.diffusion_model.") for key in weights)
        config = nodegraph_config(weights.metadata)
        part = PrefixView(weights, "model.diffusion_model.")
        pooled = 64 if family == "sdxl" else None
        unet_config = unet_config_from_ldm(part, family, config["unet"], pooled)
        unet = new_unet(unet_config)
        unet = fill(unet, unet_rules(list(unet.state_dict()), unet_config), part, "UNet")
    _same(unet, modules.unet)
    assert config["family"] == family and json.loads(_metadata(path)["prompt"]) == PROMPT


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_vae_save_reloads_through_the_vae_loader(env, family):
    modules = BUILDERS[family](2)
    handles = _handles(modules)
    path = _path(env, VAESave.execute(_ctx(env), handles.vae, "vae/ComfyUI_vae"))
    assert path == env.output_dir / "vae" / "ComfyUI_vae_00001_.safetensors"
    loaded = load_vae(path)
    _same(loaded.vae, modules.vae)
    assert loaded.scaling_factor == handles.vae.scaling_factor
    assert all(not key.startswith("first_stage_model.") for key in load_file(str(path)))


def test_clip_save_writes_one_transformers_layout_file_per_encoder(env):
    modules = sdxl_modules(3)
    result = CLIPSave.execute(_ctx(env), _handles(modules).clip, "clip/ComfyUI")
    paths = [_path(env, result, i) for i in range(2)]
    assert [p.name for p in paths] == ["ComfyUI_clip_l_00001_.safetensors", "ComfyUI_clip_g_00001_.safetensors"]
    for index, (path, reference) in enumerate(zip(paths, modules.encoders)):
        tensors, metadata = load_file(str(path)), _metadata(path)
        assert metadata["format"] == "pt" and json.loads(metadata["prompt"]) == PROMPT
        assert all(key.startswith(("text_model.", "text_projection.")) for key in tensors)
        overrides = nodegraph_config(metadata)["text_encoders"][0]
        inner = {key.removeprefix("text_model."): value for key, value in tensors.items()}
        config = text_config_from_weights(inner, family_defaults("sdxl")["text_encoders"][index], overrides,
                                          open_clip=False)
        encoder = new_text_encoder(config, with_projection=index == 1)
        _same(fill(encoder, clip_rules(list(encoder.state_dict())), tensors, "text encoder"), reference)


def test_saving_twice_never_overwrites_and_leaves_no_partial_files(env):
    handles = _handles(sd1_modules(0))
    first = _path(env, VAESave.execute(_ctx(env), handles.vae, "vae/x"))
    second = _path(env, VAESave.execute(_ctx(env), handles.vae, "vae/x"))
    assert (first.name, second.name) == ("x_00001_.safetensors", "x_00002_.safetensors")
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name, second.name]


@pytest.mark.parametrize("node", [CheckpointSave, ModelSave, VAESave, CLIPSave, LoraSave])
def test_prefixes_that_leave_the_output_folder_are_refused_at_validation(env, node):
    env.output_dir.mkdir(parents=True)
    registry = NodeRegistry([node])
    for prefix in ("../escape", "/tmp/escape", "a/../../escape"):
        workflow = Workflow(nodes={"1": NodeInstance(type=node.schema.type_id, widgets={"filename_prefix": prefix})})
        with pytest.raises(ValidationFailed) as failed:
            compile_workflow(workflow, registry, env)
        assert any(issue.input_name == "filename_prefix" for issue in failed.value.issues), prefix


def test_checkpoint_save_refuses_parts_of_different_families(env):
    sd1, sdxl = _handles(sd1_modules(0)), _handles(sdxl_modules(0))
    with pytest.raises(ValueError, match="CLIP is sdxl but the MODEL is sd1"):
        CheckpointSave.execute(_ctx(env), sd1.model, sdxl.clip, sd1.vae, "x")
    assert not env.output_dir.exists() or not list(env.output_dir.rglob("*"))


def test_merge_and_save_workflow_writes_the_merged_embedded_model(tmp_path):
    """workflows/model_merge_save.json: the saved checkpoint holds 0.5 * base + 0.5 * (base + style LoRA) on every
    UNet and text-encoder tensor, and reloads through the checkpoint loader with the run's metadata."""
    from tiny_models import engine_at

    from nodegraph.formats import load_workflow_file, run_metadata
    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from nodes.sd.lora import match_lora, read_lora, with_updated_weights

    engine = engine_at(tmp_path)
    workflow = load_workflow_file(Path(__file__).parent.parent / "workflows" / "model_merge_save.json", engine.registry)
    save_id = next(node_id for node_id, node in workflow.nodes.items() if node.type == "CheckpointSave")
    engine.run(workflow, outputs=[save_id], metadata=run_metadata(workflow, engine.registry))
    path = engine.env.output_dir / "checkpoints" / "merged_00001_.safetensors"
    saved, base = load_checkpoint(path), load_checkpoint(EMBEDDED_PATH)
    matched = match_lora(read_lora(default_adapter_path("lora")), base.model.unet, base.clip.encoders)
    tuned = [with_updated_weights(base.model.unet, matched.unet),
             *(with_updated_weights(e, u) for e, u in zip(base.clip.encoders, matched.encoders))]
    assert matched.unet.by_param and matched.encoders[0].by_param  # the LoRA changes both sides
    for merged, one, two in zip([saved.model.unet, *saved.clip.encoders], [base.model.unet, *base.clip.encoders], tuned):
        s1, s2 = one.state_dict(), two.state_dict()
        for key, value in merged.state_dict().items():
            if key.endswith(".position_ids"):
                continue
            expected = s1[key].float() * 0.5 + 0.5 * s2[key].float()
            assert torch.equal(value, expected.to(s1[key].dtype)), key
    _same(saved.vae.vae, base.vae.vae)
    assert json.loads(_metadata(path)["prompt"])[save_id]["class_type"] == "CheckpointSave"


def test_a_save_that_fails_midway_leaves_no_file(env, monkeypatch):
    """The tensors go to a hidden temporary file that is linked under its name only once complete."""
    import nodes.sd.saving as saving

    def broken(path, tensors, metadata, config):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(saving, "write_safetensors", broken)
    handles = _handles(sd1_modules(0))
    with pytest.raises(OSError, match="disk full"):
        ModelSave.execute(_ctx(env), handles.model, "diffusion_models/broken")
    assert [p for p in env.output_dir.rglob("*") if p.is_file()] == []
