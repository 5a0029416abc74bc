"""Checkpoint loading: tiny models written in the real layouts must load back bit-exactly."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tiny_models as tm
from nodegraph.models import ModelManager
from nodes.sd.loading import load_checkpoint, load_vae
from nodes.sd.loading.build import new_text_encoder, new_unet, new_vae
from nodes.sd.loading.configs import template
from nodes.sd.loading.detect import detect_prediction
from nodes.sd.loading.export import ldm_state_dict, save_sd1_checkpoint
from nodes.sd.loading.handles import LoadedCheckpoint
from nodes.sd.loading.keymap import clip_rules, open_clip_rules, unet_rules, vae_rules

BUILDERS = {"sd1": tm.sd1_modules, "sd2": tm.sd2_modules, "sdxl": tm.sdxl_modules}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[tm.TinyModules, Path]]:
    """Each family's source modules and the single file they were written to."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for family, builder in BUILDERS.items():
        modules = builder(0)
        out[family] = (modules, tm.write_checkpoint(modules, root / f"{family}.safetensors"))
    return out


def _unet_inputs(modules: tm.TinyModules) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(1)
    config = modules.unet.config
    x = torch.randn(2, config.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    kwargs = {}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    return (x, torch.tensor([10, 500]), context), kwargs


def assert_same_outputs(modules: tm.TinyModules, loaded: LoadedCheckpoint) -> None:
    """UNet forward, VAE encode/decode and every text-encoder hidden state: identical in fp32."""
    args, kwargs = _unet_inputs(modules)
    with torch.no_grad():
        assert torch.equal(modules.unet(*args, **kwargs).sample, loaded.model.unet(*args, **kwargs).sample)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
        want, got = modules.vae.encode(image).latent_dist, loaded.vae.vae.encode(image).latent_dist
        assert torch.equal(want.mean, got.mean) and torch.equal(want.logvar, got.logvar)
        latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
        assert torch.equal(modules.vae.decode(latent).sample, loaded.vae.vae.decode(latent).sample)
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70])
        assert len(loaded.clip.encoders) == len(modules.encoders)
        for source, target in zip(modules.encoders, loaded.clip.encoders):
            assert type(source) is type(target)
            want, got = source(ids, output_hidden_states=True), target(ids, output_hidden_states=True)
            assert len(want.hidden_states) == len(got.hidden_states)
            assert all(torch.equal(a, b) for a, b in zip(want.hidden_states, got.hidden_states))
            assert torch.equal(want.last_hidden_state, got.last_hidden_state)
            if hasattr(want, "text_embeds"):
                assert torch.equal(want.text_embeds, got.text_embeds)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_round_trip_is_exact(tiny, family: str) -> None:
    modules, path = tiny[family]
    loaded = load_checkpoint(path)
    assert loaded.family == family and loaded.model.family == family and loaded.clip.family == family
    assert loaded.model.prediction == modules.prediction
    assert_same_outputs(modules, loaded)
    assert all(p.device.type == "cpu" and not p.requires_grad for p in loaded.model.unet.parameters())
    assert loaded.vae.scaling_factor == (0.13025 if family == "sdxl" else 0.18215)
    assert loaded.clip.layer_idx == (-1 if family == "sd1" else -2)  # ComfyUI: SD2/SDXL read the penultimate layer
    pads = [t.pad_token_id for t in loaded.clip.tokenizers]
    assert pads == {"sd1": [49407], "sd2": [0], "sdxl": [49407, 0]}[family]


def test_alphas_cumprod_is_sd_scaled_linear(tiny) -> None:
    loaded = load_checkpoint(tiny["sd1"][1])
    reference = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert loaded.model.alphas_cumprod.dtype == torch.float64 and loaded.model.alphas_cumprod.shape == (1000,)
    assert torch.allclose(loaded.model.alphas_cumprod.float(), reference, atol=1e-6)


@pytest.mark.parametrize("v_prediction", [True, False])
def test_sd2_prediction_type_detected(tmp_path: Path, v_prediction: bool) -> None:
    path = tm.make_sd2_checkpoint(tmp_path, v_prediction=v_prediction)
    assert load_checkpoint(path).model.prediction == ("v_prediction" if v_prediction else "epsilon")


def test_prediction_detection_sources() -> None:
    unet = "model.diffusion_model."
    conv_in = {unet + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}
    assert detect_prediction({"v_pred": torch.zeros(0)}, {}, "sd2", {}) == "v_prediction"
    assert detect_prediction({}, {"modelspec.prediction_type": "v"}, "sd1", {}) == "v_prediction"
    assert detect_prediction({}, {"ss_v_parameterization": "True"}, "sd1", {}) == "v_prediction"
    assert detect_prediction({"v_pred": torch.zeros(0)}, {}, "sd2", {"prediction": "epsilon"}) == "epsilon"
    # ComfyUI's tell for SD2 768-v: a wide spread in the last output block's norm1 bias.
    tell = unet + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    wide = {**conv_in, tell: torch.linspace(-0.5, 0.5, 320)}
    narrow = {**conv_in, tell: torch.linspace(-0.05, 0.05, 320)}
    assert detect_prediction(wide, {}, "sd2", {}) == "v_prediction"
    assert detect_prediction(narrow, {}, "sd2", {}) == "epsilon"
    assert detect_prediction(wide, {}, "sd1", {}) == "epsilon"
    inpaint = {unet + "input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3), tell: wide[tell]}
    assert detect_prediction(inpaint, {}, "sd2", {}) == "epsilon"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_written_layout_matches_diffusers_converters(tiny, family: str) -> None:
    """diffusers' own LDM->diffusers converters read our files back to the source weights: the layout is real."""
    modules, _ = tiny[family]
    original = ldm_state_dict(family, modules.unet, modules.vae, modules.encoders)

    def same(reference: dict, converted: dict) -> bool:
        return reference.keys() == converted.keys() and all(torch.equal(reference[k], converted[k]) for k in reference)

    assert same(modules.unet.state_dict(), convert_ldm_unet_checkpoint(original, modules.unet.config))
    assert same(modules.vae.state_dict(), convert_ldm_vae_checkpoint(original, modules.vae.config))
    clip_l = {"text_model." + k: v for k, v in modules.encoders[0].state_dict().items()}
    if family == "sd2":
        assert same(clip_l, convert_open_clip_checkpoint(modules.encoders[0], original))
    else:
        assert same(clip_l, convert_ldm_clip_checkpoint(original))
    if family == "sdxl":
        converted = convert_open_clip_checkpoint(modules.encoders[1], original, prefix="conditioner.embedders.1.model.")
        assert same(modules.encoders[1].state_dict(), converted)


def test_full_size_key_maps_match_real_checkpoints() -> None:
    """The templates' key maps give the real files' key counts and names (built on meta, nothing allocated)."""
    counts = {}
    for name in ("sd15", "sdxl"):
        config = template(f"{name}_unet.json")
        counts[name] = {r.source for r in unet_rules(list(new_unet(config).state_dict()), config)}
    vae = new_vae(template("sd15_vae.json"))
    vae_keys = {r.source: r for r in vae_rules(list(vae.state_dict()), vae.config)}
    clip_l = {r.source for r in clip_rules(list(new_text_encoder(template("clip_l_text.json"), with_projection=False).state_dict()))}
    big_g = {r.source for r in open_clip_rules(list(new_text_encoder(template("open_clip_bigg_text.json"), with_projection=True).state_dict()))}
    assert (len(counts["sd15"]), len(counts["sdxl"]), len(vae_keys), len(clip_l), len(big_g)) == (686, 1680, 248, 196, 389)
    assert "output_blocks.2.1.conv.weight" in counts["sd15"]  # SD1 upsampler after a block without attention
    assert "output_blocks.8.2.conv.weight" in counts["sd15"]
    assert "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight" in counts["sdxl"]
    assert "label_emb.0.2.weight" in counts["sdxl"] and "middle_block.1.transformer_blocks.9.ff.net.2.bias" in counts["sdxl"]
    assert vae_keys["decoder.mid.attn_1.proj_out.weight"].transform == "conv1x1"
    assert "decoder.up.3.upsample.conv.weight" in vae_keys and "decoder.up.0.upsample.conv.weight" not in vae_keys
    assert "text_model.encoder.layers.11.self_attn.q_proj.weight" in clip_l
    assert {"transformer.resblocks.31.attn.in_proj_weight", "text_projection", "positional_embedding"} <= big_g


def test_tiny_builders_are_deterministic() -> None:
    for builder in BUILDERS.values():
        first, again, other = builder(0), builder(0), builder(1)
        a, b, c = first.unet.state_dict(), again.unet.state_dict(), other.unet.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
        for x, y in zip(first.encoders, again.encoders):
            assert all(torch.equal(v, y.state_dict()[k]) for k, v in x.state_dict().items())


def test_diffusers_folders_load_exactly(tmp_path: Path) -> None:
    for family in ("sd1", "sdxl"):
        modules = BUILDERS[family](5)
        root = tm.write_diffusers_folder(modules, tmp_path / family)
        loaded = load_checkpoint(root)
        assert loaded.family == family and loaded.model.prediction == "epsilon"
        assert loaded.vae.scaling_factor == modules.vae.config.scaling_factor
        assert_same_outputs(modules, loaded)


def test_diffusers_folder_sd2_v_prediction(tmp_path: Path) -> None:
    loaded = load_checkpoint(tm.make_diffusers_folder(tmp_path, family="sd2"))
    assert (loaded.family, loaded.model.prediction, loaded.clip.tokenizers[0].pad_token_id) == ("sd2", "v_prediction", 0)


def test_file_without_metadata_uses_family_rules(tmp_path: Path) -> None:
    """SD1 fixes 8 UNet heads and CLIP uses 64-wide heads, so a metadata-free SD1 file loads exactly."""
    modules = tm.sd1_modules(3, text_hidden=64)
    loaded = load_checkpoint(tm.write_checkpoint(modules, tmp_path / "plain.safetensors", with_metadata=False))
    assert loaded.metadata == {}
    assert_same_outputs(modules, loaded)


def test_heads_that_shapes_cannot_tell_are_an_error(tmp_path: Path) -> None:
    path = tm.write_checkpoint(tm.sd2_modules(0), tmp_path / "sd2_plain.safetensors", with_metadata=False)
    with pytest.raises(ValueError, match="attention heads.*nodegraph_config"):
        load_checkpoint(path)


def test_pickle_checkpoints_load_through_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = tm.sd1_modules(0, text_hidden=64)  # pickles carry no metadata: use heads the family rule knows
    tensors = ldm_state_dict("sd1", modules.unet, modules.vae, modules.encoders)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": tensors, "global_step": 3}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_checkpoint(path)
    assert calls == [True] and loaded.family == "sd1"
    assert_same_outputs(modules, loaded)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickles_with_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=r"refusing to load a \.gguf file"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="refusing"):
        load_vae(path)


def test_unknown_layout_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"transformer.blocks.0.weight": torch.zeros(2), "head.bias": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=r"not a Stable Diffusion checkpoint.*head\.bias"):
        load_checkpoint(path)


def _edited_copy(source: Path, target: Path, edit) -> Path:
    """Copy a checkpoint with `edit` applied to its tensors, keeping its metadata."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    edit(tensors)
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_missing_and_unexpected_keys_are_named(tiny, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tiny["sd1"][1]
    missing = _edited_copy(source, tmp_path / "missing.safetensors", lambda t: t.pop("model.diffusion_model.output_blocks.3.1.proj_out.weight"))
    with pytest.raises(ValueError, match=r"UNet weights.*1 missing: output_blocks\.3\.1\.proj_out\.weight"):
        load_checkpoint(missing)
    extra = _edited_copy(source, tmp_path / "extra.safetensors", lambda t: t.update({"first_stage_model.decoder.extra.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"VAE weights.*1 unexpected: decoder\.extra\.weight"):
        load_checkpoint(extra)
    stray = _edited_copy(source, tmp_path / "stray.safetensors", lambda t: t.update({"lora_unet_down.alpha": torch.zeros(1)}))
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(stray).family == "sd1"  # cannot affect the modules: logged, not fatal
    assert "ignoring keys outside the UNet, VAE and text encoders: lora_unet_down.alpha" in caplog.text
    shape = _edited_copy(source, tmp_path / "shape.safetensors", lambda t: t.update({"model.diffusion_model.out.2.bias": torch.zeros(5)}))
    with pytest.raises(ValueError, match=r"out\.2\.bias: shape \(5,\) in the file, the model needs \(4,\)"):
        load_checkpoint(shape)


def test_parts_load_once_per_manager_until_the_file_changes(tmp_path: Path) -> None:
    path = tm.make_sd1_checkpoint(tmp_path)
    manager = ModelManager()
    first = load_checkpoint(path, manager=manager)
    assert not manager.is_loaded(first.model.unet_ref)  # opening reads the header only; parts load when used
    assert manager.loads == 1  # the header's inspection, kept for the next loader node naming this file
    unet = first.model.unet
    assert manager.loads == 2 and first.model.unet is unet
    second = load_checkpoint(path, manager=manager)
    assert second.model.unet is unet and manager.loads == 2  # another loader node, same file: nothing read again
    with_dirs = load_checkpoint(path, manager=manager, embedding_dirs=[tmp_path])
    assert with_dirs.clip.embedding_dirs == (str(tmp_path),) and with_dirs.model.unet is unet
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_checkpoint(path, manager=manager).model.unet is not unet and manager.loads == 4


def test_standalone_vae_in_both_layouts(tiny, tmp_path: Path) -> None:
    modules, checkpoint = tiny["sdxl"]
    ldm = {k.removeprefix("first_stage_model."): v for k, v in load_file(str(checkpoint)).items() if k.startswith("first_stage_model.")}
    save_file(ldm, str(tmp_path / "ldm_vae.safetensors"))
    save_file(modules.vae.state_dict(), str(tmp_path / "diffusers_vae.safetensors"))
    modules.vae.save_pretrained(tmp_path / "vae_folder")
    latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = modules.vae.decode(latent).sample
        for path in ("ldm_vae.safetensors", "diffusers_vae.safetensors", "vae_folder"):
            handle = load_vae(tmp_path / path, family="sdxl")
            assert handle.scaling_factor == 0.13025
            assert torch.equal(handle.vae.decode(latent).sample, want)
        assert load_vae(tmp_path / "ldm_vae.safetensors").scaling_factor == 0.18215  # no metadata: its latents measure as SD1
        assert load_vae(checkpoint).scaling_factor == 0.13025  # a full SDXL checkpoint knows its family


def test_save_sd1_checkpoint_round_trip(tmp_path: Path) -> None:
    modules = tm.sd1_modules(7)
    path = save_sd1_checkpoint(modules.unet, modules.vae, modules.encoders[0], tmp_path / "trained.safetensors", {"steps": 12})
    loaded = load_checkpoint(path)
    config = json.loads(loaded.metadata["nodegraph_config"])
    assert config["steps"] == 12 and config["family"] == "sd1" and config["prediction"] == "epsilon"
    assert_same_outputs(modules, loaded)
