"""LoraSave: a LoRA extracted from (base + known low-rank delta) - base by ComfyUI's truncated SVD loads back
through our LoraLoader and reproduces the delta's effect; the file uses ComfyUI's key names and options."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import sd1_modules, write_kohya_lora

from nodegraph import NodeContext
from nodegraph.environment import Environment, ModelPaths
from nodes.lora_nodes import LoraLoader
from nodes.model_merging import CLIPMergeSubtract, LoraSave, ModelMergeSubtract
from nodes.sd.loading.handles import assemble
from nodes.sd.lora import DiffLayer, parse_lora
from nodes.sd.lora_extract import CLAMP_QUANTILE, extract_lora


def _comfyui_reference(diff, rank):
    """ComfyUI's extraction written out: full SVD of the (flattened / squeezed) difference, U_r diag(S_r) and
    Vh_r, both clamped to +-(0.99 quantile of their joined entries), reshaped for convolutions."""
    out_dim, in_dim = diff.shape[:2]
    rank = min(rank, out_dim, in_dim)
    matrix = diff.flatten(1) if diff.dim() == 4 and diff.shape[2:] != (1, 1) else diff.reshape(out_dim, -1)
    u, s, vh = torch.linalg.svd(matrix.float())
    up, down = u[:, :rank] @ torch.diag(s[:rank]), vh[:rank]
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), CLAMP_QUANTILE)
    up, down = up.clamp(-high, high), down.clamp(-high, high)
    if diff.dim() == 4:
        up, down = up.reshape(out_dim, rank, 1, 1), down.reshape(rank, in_dim, *diff.shape[2:])
    return up, down


@pytest.mark.parametrize("shape", [(24, 16), (24, 8, 3, 3), (24, 8, 1, 1), (6, 40)])
def test_extract_lora_is_comfyuis_clamped_truncated_svd(shape):
    generator = torch.Generator().manual_seed(1)
    diff = torch.randn(shape, generator=generator)
    up, down = extract_lora(diff, 8)
    ref_up, ref_down = _comfyui_reference(diff, 8)
    rank = min(8, shape[0], shape[1])
    assert up.shape == ref_up.shape and down.shape == ref_down.shape and up.shape[1] == rank
    # singular vectors are defined up to sign per component: compare the product, which is not
    product = (up.flatten(1) @ down.flatten(1))
    torch.testing.assert_close(product, ref_up.flatten(1) @ ref_down.flatten(1), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def delta_setup(tmp_path_factory):
    """base (tiny SD1) and base + a known rank-4 kohya LoRA on UNet and text encoder, plus their differences."""
    root = tmp_path_factory.mktemp("extract")
    modules = sd1_modules(0)
    base = assemble(family="sd1", prediction="epsilon", schedule=None, unet=modules.unet, vae=modules.vae,
                    vae_config=dict(modules.vae.config), encoders=modules.encoders, open_clip=[False], device="cpu",
                    dtype=torch.float32, source="sd1", metadata={})
    env = Environment(output_dir=root / "output", models=ModelPaths(roots=[root / "models"]))
    write_kohya_lora(modules, root / "models" / "loras" / "known.safetensors", rank=4, alpha=4.0, seed=3)
    ctx = NodeContext("1", "Test", env)
    tuned_model, tuned_clip = LoraLoader.execute(ctx, base.model, base.clip, "known.safetensors", 1.0, 1.0)
    (model_diff,) = ModelMergeSubtract.execute(ctx, tuned_model, base.model, 1.0)
    (clip_diff,) = CLIPMergeSubtract.execute(ctx, tuned_clip, base.clip, 1.0)
    return ctx, base, tuned_model, tuned_clip, model_diff, clip_diff


def _extract_and_load(ctx, base, model_diff, clip_diff, lora_type, rank=4):
    result = LoraSave.execute(ctx, f"loras/extracted_{lora_type}", rank, lora_type, True, model_diff, clip_diff)
    entry = result.ui["models"][0]
    path = ctx.env.output_dir / entry["subfolder"] / entry["filename"]
    shutil.copy(path, ctx.env.models.roots[0] / "loras" / entry["filename"])
    model, clip = LoraLoader.execute(ctx, base.model, base.clip, entry["filename"], 1.0, 1.0)
    return path, model, clip


def _outputs(model, clip):
    generator = torch.Generator().manual_seed(0)
    latent, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 32, generator=generator)
    tokens = torch.randint(0, 49407, (1, 77), generator=generator)
    with torch.no_grad():
        return model.unet(latent, 500, context).sample, clip.encoders[0](tokens).last_hidden_state


@pytest.mark.parametrize("lora_type, tolerance", [("standard", 0.35), ("full_diff", 1e-3)])
def test_extracted_lora_reproduces_the_known_deltas_effect(delta_setup, lora_type, tolerance, caplog):
    ctx, base, tuned_model, tuned_clip, model_diff, clip_diff = delta_setup
    _, model, clip = _extract_and_load(ctx, base, model_diff, clip_diff, lora_type)
    assert "not loaded" not in caplog.text  # every key of the extracted file found its weight
    base_unet, base_text = _outputs(base.model, base.clip)
    tuned_unet, tuned_text = _outputs(tuned_model, tuned_clip)
    got_unet, got_text = _outputs(model, clip)
    # the error left, relative to the delta's own effect: small for full differences; for rank-r pairs it
    # is ComfyUI's 0.99-quantile clamp of the factors that keeps it from vanishing
    assert float((got_unet - tuned_unet).norm() / (tuned_unet - base_unet).norm()) < tolerance
    assert float((got_text - tuned_text).norm() / (tuned_text - base_text).norm()) < tolerance


def test_lora_file_uses_comfyui_names_fp16_and_the_options(delta_setup):
    ctx, base, _, _, model_diff, clip_diff = delta_setup
    standard = load_file(str(_extract_and_load(ctx, base, model_diff, clip_diff, "standard", rank=3)[0]))
    assert all(t.dtype == torch.float16 for t in standard.values())
    assert standard["diffusion_model.input_blocks.1.1.proj_in.lora_up.weight"].shape[1] == 3
    assert "diffusion_model.input_blocks.1.0.in_layers.2.lora_down.weight" in standard  # a conv, LDM-named
    assert "diffusion_model.input_blocks.1.1.norm.diff" in standard  # 1-D weights whole (bias_diff)
    assert "diffusion_model.out.2.diff_b" in standard
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_up.weight" in standard
    assert not any(key.endswith(".alpha") for key in standard)
    full = load_file(str(_extract_and_load(ctx, base, model_diff, clip_diff, "full_diff")[0]))
    assert not any("lora_" in key for key in full)
    weight = model_diff.unet.state_dict()["down_blocks.0.attentions.0.proj_in.weight"]
    assert torch.equal(full["diffusion_model.input_blocks.1.1.proj_in.diff"], weight.half())
    parsed = parse_lora(full, {}, "full")
    assert isinstance(parsed.layers["diffusion_model.out.2.diff_b"], DiffLayer)


def test_without_bias_diff_only_low_rank_pairs_are_written(delta_setup):
    ctx, base, _, _, model_diff, _ = delta_setup
    result = LoraSave.execute(ctx, "loras/nobias", 2, "standard", False, model_diff, None)
    entry = result.ui["models"][0]
    tensors = load_file(str(ctx.env.output_dir / entry["subfolder"] / entry["filename"]))
    assert tensors and all(key.endswith((".lora_up.weight", ".lora_down.weight")) for key in tensors)
    assert not any(key.startswith("text_encoders.") for key in tensors)


def test_lora_save_with_no_difference_linked_writes_nothing(delta_setup):
    ctx = delta_setup[0]
    result = LoraSave.execute(ctx, "loras/none", 8, "standard", True)
    assert result.ui == {} and not list((ctx.env.output_dir).glob("loras/none*"))


def test_sdxl_difference_loads_back_on_every_weight_of_both_text_encoders(tmp_path):
    """full_diff from SDXL (label_emb, CLIP-L as clip_l, bigG and its projection as clip_g): every key places."""
    from tiny_models import sdxl_modules

    from nodes.sd.lora import match_lora, with_updated_weights

    one, two = sdxl_modules(0), sdxl_modules(5)
    handles = [assemble(family="sdxl", prediction="epsilon", schedule=None, unet=m.unet, vae=m.vae,
                        vae_config=dict(m.vae.config), encoders=m.encoders, open_clip=[False, True], device="cpu",
                        dtype=torch.float32, source="sdxl", metadata={}) for m in (one, two)]
    ctx = NodeContext("1", "Test", Environment(output_dir=tmp_path))
    (model_diff,) = ModelMergeSubtract.execute(ctx, handles[0].model, handles[1].model, 1.0)
    (clip_diff,) = CLIPMergeSubtract.execute(ctx, handles[0].clip, handles[1].clip, 1.0)
    entry = LoraSave.execute(ctx, "lora", 4, "full_diff", True, model_diff, clip_diff).ui["models"][0]
    tensors = load_file(str(tmp_path / entry["filename"]))
    assert "diffusion_model.label_emb.0.0.diff" in tensors
    assert "text_encoders.clip_g.transformer.text_projection.diff" in tensors
    matched = match_lora(parse_lora(tensors, {}, "x"), two.unet, two.encoders)
    assert matched.not_loaded == ()
    for target, source, updates in zip([two.unet, *two.encoders], [one.unet, *one.encoders],
                                       [matched.unet, *matched.encoders]):
        restored = with_updated_weights(target, updates).state_dict()
        for key, value in source.state_dict().items():
            if value.is_floating_point() and not key.endswith(".position_ids"):
                torch.testing.assert_close(restored[key], value, atol=2e-3, rtol=2e-3)
