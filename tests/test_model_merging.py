"""Model and CLIP merge nodes: every merged tensor equals ComfyUI's formula (strength_model * w1 +
strength_patch * w2 in float32), block ratios follow ComfyUI's LDM block names, and nothing loaded changes."""

import logging
import re

import pytest
import torch
from tiny_models import make_sd1_checkpoint, sd1_modules, sdxl_modules

from nodegraph.models import ModelManager
from nodes.model_merging import (
    CLIPMergeAdd,
    CLIPMergeSimple,
    CLIPMergeSubtract,
    ModelMergeAdd,
    ModelMergeBlocks,
    ModelMergeSD1,
    ModelMergeSD2,
    ModelMergeSDXL,
    ModelMergeSimple,
    ModelMergeSubtract,
)
from nodes.sd.loading import load_checkpoint
from nodes.sd.loading.handles import assemble
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.merging import MergeRecipe, merge_modules


def _handles(modules):
    return assemble(family=modules.family, prediction=modules.prediction, schedule=None, unet=modules.unet,
                    vae=modules.vae, vae_config=dict(modules.vae.config), encoders=modules.encoders,
                    open_clip={"sd1": [False], "sd2": [True], "sdxl": [False, True]}[modules.family], device="cpu",
                    dtype=torch.float32, source=modules.family, metadata={})


@pytest.fixture(scope="module")
def sd1_pair():
    a, b = sd1_modules(0), sd1_modules(7)
    return a, b, _handles(a), _handles(b)


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _expected(w1, w2, a, b):
    """ComfyUI's patch arithmetic, written out: w1 scaled (unless a == 1), then b * w2 added, in float32."""
    out = w1.float().clone()
    if a != 1.0:
        out = out * a
    if b != 0.0:
        out = out + b * w2.float()
    return out.to(w1.dtype)


def _ldm(unet):
    return {r.target: r.source for r in unet_rules(list(unet.state_dict()), unet.config)}


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_model_merge_simple_is_the_weighted_sum_on_every_tensor(sd1_pair, ratio):
    a, b, ha, hb = sd1_pair
    before = _snapshot(a.unet)
    (merged,) = ModelMergeSimple.execute(None, ha.model, hb.model, ratio)
    state, s1, s2 = merged.unet.state_dict(), a.unet.state_dict(), b.unet.state_dict()
    assert set(state) == set(s1)
    for key in state:
        assert torch.equal(state[key], _expected(s1[key], s2[key], 1 - ratio, ratio)), key
    if ratio == 1.0:
        assert all(torch.equal(state[k], s2[k]) for k in state)
    assert all(torch.equal(before[k], v) for k, v in a.unet.state_dict().items()), "model1 was changed"
    assert (merged.unet is a.unet) == (ratio == 0.0) and ha.model.unet is a.unet  # ratio 0 shares model1
    assert merged.family == "sd1" and merged.alphas_cumprod is ha.model.alphas_cumprod


def test_subtract_and_add_follow_comfyui_strengths(sd1_pair):
    a, b, ha, hb = sd1_pair
    s1, s2 = a.unet.state_dict(), b.unet.state_dict()
    (diff,) = ModelMergeSubtract.execute(None, ha.model, hb.model, 0.7)
    (total,) = ModelMergeAdd.execute(None, ha.model, hb.model)
    for key, value in diff.unet.state_dict().items():
        assert torch.equal(value, _expected(s1[key], s2[key], 0.7, -0.7)), key
        torch.testing.assert_close(value, 0.7 * (s1[key] - s2[key]), rtol=1e-5, atol=1e-6)
    for key, value in total.unet.state_dict().items():
        assert torch.equal(value, s1[key] + s2[key]), key


def test_model_merge_blocks_picks_the_ratio_by_ldm_block(sd1_pair):
    a, b, ha, hb = sd1_pair
    (merged,) = ModelMergeBlocks.execute(None, ha.model, hb.model, input=0.2, middle=0.5, out=0.9)
    s1, s2, names = a.unet.state_dict(), b.unet.state_dict(), _ldm(a.unet)
    seen = set()
    for key, value in merged.unet.state_dict().items():
        name = names[key]
        # "out" also starts "output_blocks"; time_embed (no block prefix) takes the first ratio, input's
        ratio = 0.5 if name.startswith("middle") else 0.9 if name.startswith("out") else 0.2
        seen.add(ratio)
        assert torch.equal(value, _expected(s1[key], s2[key], 1 - ratio, ratio)), (key, name)
    assert seen == {0.2, 0.5, 0.9}


def _block_of(name: str) -> str:
    """The SD1 node input that covers an LDM weight name, worked out from the name's own numbering."""
    match = re.match(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.", name)
    return f"{match.group(1)}.{match.group(2)}." if match else name.split(".")[0] + "."


@pytest.mark.parametrize("node", [ModelMergeSD1, ModelMergeSD2])
def test_sd1_block_merge_gives_each_block_its_own_ratio(sd1_pair, node):
    a, b, ha, hb = sd1_pair
    inputs = [spec.name for spec in node.schema.inputs[2:]]
    ratios = {name: round((index + 1) / (len(inputs) + 1), 4) for index, name in enumerate(inputs)}
    (merged,) = node.execute(None, ha.model, hb.model, **ratios)
    s1, s2, names = a.unet.state_dict(), b.unet.state_dict(), _ldm(a.unet)
    blocks = set()
    for key, value in merged.unet.state_dict().items():
        block = _block_of(names[key])
        blocks.add(block)
        ratio = ratios[block]
        assert torch.equal(value, _expected(s1[key], s2[key], 1 - ratio, ratio)), (key, names[key])
    assert {"time_embed.", "input_blocks.0.", "input_blocks.3.", "middle_block.1.", "output_blocks.3.", "out."} <= blocks


def test_sdxl_block_merge_covers_label_embedding_and_prefixes_without_dots():
    a, b = sdxl_modules(0), sdxl_modules(3)
    ha, hb = _handles(a), _handles(b)
    inputs = [spec.name for spec in ModelMergeSDXL.schema.inputs[2:]]
    assert inputs[:3] == ["time_embed.", "label_emb.", "input_blocks.0"] and inputs[-1] == "out."
    ratios = {name: round(index / len(inputs), 4) for index, name in enumerate(inputs)}
    (merged,) = ModelMergeSDXL.execute(None, ha.model, hb.model, **ratios)
    s1, s2, names = a.unet.state_dict(), b.unet.state_dict(), _ldm(a.unet)
    for key, value in merged.unet.state_dict().items():
        block = _block_of(names[key]).rstrip(".") if names[key].startswith(("input", "middle", "output")) \
            else _block_of(names[key])
        ratio = ratios[block]
        assert torch.equal(value, _expected(s1[key], s2[key], 1 - ratio, ratio)), (key, names[key])
    assert any(names[k].startswith("label_emb.") for k in names)


def test_clip_merges_skip_position_ids_and_cover_both_sdxl_encoders():
    a, b = sdxl_modules(0), sdxl_modules(3)
    ha, hb = _handles(a), _handles(b)
    (simple,) = CLIPMergeSimple.execute(None, ha.clip, hb.clip, 0.25)
    (diff,) = CLIPMergeSubtract.execute(None, ha.clip, hb.clip, 2.0)
    (total,) = CLIPMergeAdd.execute(None, ha.clip, hb.clip)
    for handle, (sm, sp) in ((simple, (0.75, 0.25)), (diff, (2.0, -2.0)), (total, (1.0, 1.0))):
        assert len(handle.encoders) == 2
        for merged, e1, e2 in zip(handle.encoders, a.encoders, b.encoders):
            s1, s2 = e1.state_dict(), e2.state_dict()
            for key, value in merged.state_dict().items():
                if key.endswith(".position_ids"):
                    assert torch.equal(value, s1[key])
                elif value.is_floating_point():
                    assert torch.equal(value, _expected(s1[key], s2[key], sm, sp)), key
    assert simple.tokenizers == ha.clip.tokenizers and simple.layer_idx == ha.clip.layer_idx


def test_merged_model_is_derived_once_by_the_manager_and_the_loaded_model_is_untouched(tmp_path):
    manager = ModelManager(ram_budget=1 << 40)
    first = load_checkpoint(make_sd1_checkpoint(tmp_path / "a", seed=0), manager=manager)
    second = load_checkpoint(make_sd1_checkpoint(tmp_path / "b", seed=4), manager=manager)
    before = _snapshot(first.model.unet)
    (merged,) = ModelMergeSimple.execute(None, first.model, second.model, 0.5)
    (again,) = ModelMergeSimple.execute(None, first.model, second.model, 0.5)
    (other,) = ModelMergeSimple.execute(None, first.model, second.model, 0.6)
    assert merged.unet_ref == again.unet_ref and merged.unet_ref != other.unet_ref
    assert merged.unet_ref.base == first.model.unet_ref
    second.model.unet  # loaded beforehand, so the count below is the merge alone
    loads = manager.loads
    assert merged.unet is again.unet and manager.loads == loads + 1  # built once, then kept
    assert all(torch.equal(before[k], v) for k, v in first.model.unet.state_dict().items())
    s1, s2 = first.model.unet.state_dict(), second.model.unet.state_dict()
    for key, value in merged.unet.state_dict().items():
        assert torch.equal(value, _expected(s1[key], s2[key], 0.5, 0.5))


def test_half_precision_merge_is_formed_in_float32_and_cast_once():
    torch.manual_seed(0)
    one = torch.nn.Linear(16, 16).half()
    two = torch.nn.Linear(16, 16)
    merged = merge_modules(one, two, MergeRecipe("simple", (("", 0.37),)))
    assert merged.weight.dtype == torch.float16
    expected = (one.weight.float() * 0.63 + 0.37 * two.weight.float()).half()
    assert torch.equal(merged.weight, expected)


def test_mismatched_shapes_keep_model1_values_with_a_warning(caplog):
    one, two = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)
    with caplog.at_level(logging.WARNING):
        merged = merge_modules(one, two, MergeRecipe("add"))
    assert torch.equal(merged.weight, one.weight) and torch.equal(merged.bias, one.bias + two.bias)
    assert "differ in shape" in caplog.text and "weight" in caplog.text


def test_block_merge_contracts_match_comfyui_names():
    assert [s.name for s in ModelMergeSD1.schema.inputs][:5] == ["model1", "model2", "time_embed.", "label_emb.",
                                                                   "input_blocks.0."]
    assert len(ModelMergeSD1.schema.inputs) == 2 + 2 + 12 + 3 + 12 + 1
    assert len(ModelMergeSDXL.schema.inputs) == 2 + 2 + 9 + 3 + 9 + 1
    assert all(s.default == 1.0 and s.min == 0.0 and s.max == 1.0 for s in ModelMergeSDXL.schema.inputs[2:])


def test_block_inputs_named_with_dots_survive_api_and_ui_formats_and_validate(tmp_path):
    """ComfyUI names ModelMergeSD1's inputs by weight prefix ("input_blocks.4."): they are ordinary inputs here."""
    import json

    from tiny_models import engine_at

    from nodegraph.formats import load_workflow_file, ui_from_native
    from nodegraph.formats.api import from_api, to_api
    from nodegraph.validation import compile_workflow

    engine = engine_at(tmp_path)
    registry = engine.registry
    ratios = {spec.name: 0.25 for spec in ModelMergeSD1.schema.inputs[2:]}
    ratios["output_blocks.11."] = 0.75
    api = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nodegraph-tiny-shapes.safetensors"}},
           "5": {"class_type": "ModelMergeSD1", "inputs": {"model1": ["4", 0], "model2": ["4", 0], **ratios}},
           "6": {"class_type": "ModelSave", "inputs": {"model": ["5", 0], "filename_prefix": "diffusion_models/x"}}}
    workflow = from_api(api)
    (tmp_path / "ui.json").write_text(json.dumps(ui_from_native(workflow, registry)))
    for graph in (workflow, load_workflow_file(tmp_path / "ui.json", registry)):
        exported = to_api(graph, registry)
        assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in exported.items()} == api
    compile_workflow(workflow, registry, engine.env)
