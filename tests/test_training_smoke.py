"""A few steps of the real training code on tiny settings: it runs, resumes exactly, and exports a loadable file."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from training import pipeline
from training.checkpointing import read_state, read_tensors
from training.config import tiny_settings
from training.loop import run_phase

SETTINGS = tiny_settings(seed=3)


def _assert_same_checkpoint(a, b) -> None:
    left, right = read_tensors(a), read_tensors(b)
    assert left.keys() == right.keys()
    different = [key for key in left if not torch.equal(left[key], right[key])]
    assert not different, different[:5]
    state_a, state_b = read_state(a), read_state(b)
    for key in ("step", "total_steps", "done", "figures", "optimizer"):
        assert state_a[key] == state_b[key], key


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> pipeline.RunPaths:
    """A finished tiny run: VAE, latent cache, UNet (3 steps each)."""
    paths = pipeline.RunPaths(tmp_path_factory.mktemp("run"))
    torch.set_num_threads(1)
    assert pipeline.train_vae(SETTINGS, paths, "cpu", None, progress=False).done
    pipeline.encode_dataset(SETTINGS, paths, "cpu", progress=False)
    assert pipeline.train_unet(SETTINGS, paths, "cpu", None, progress=False).done
    return paths


def test_vae_resumes_exactly(run, tmp_path):
    interrupted = tmp_path / "vae.safetensors"
    run_phase(pipeline.vae_phase(SETTINGS, "cpu"), interrupted, total_steps=3, progress=False, stop_at=2)
    assert read_state(interrupted)["step"] == 2 and not read_state(interrupted)["done"]
    run_phase(pipeline.vae_phase(SETTINGS, "cpu"), interrupted, total_steps=3, progress=False)
    _assert_same_checkpoint(run.vae, interrupted)


def test_unet_resumes_exactly(run, tmp_path):
    interrupted = tmp_path / "unet.safetensors"
    run_phase(pipeline.unet_phase(SETTINGS, run, "cpu"), interrupted, total_steps=3, progress=False, stop_at=1)
    run_phase(pipeline.unet_phase(SETTINGS, run, "cpu"), interrupted, total_steps=3, progress=False)
    _assert_same_checkpoint(run.unet, interrupted)


def test_resume_refuses_other_settings(run, tmp_path):
    other = dataclasses.replace(SETTINGS, vae=dataclasses.replace(SETTINGS.vae, lr=1e-2))
    with pytest.raises(ValueError, match="other vae settings"):
        run_phase(pipeline.vae_phase(other, "cpu"), run.vae, total_steps=3, progress=False)


def test_latents_are_centred_and_the_fold_keeps_reconstructions(run):
    record = pipeline.latent_record(run)
    assert record["validation_l1_folded"] == pytest.approx(record["validation_l1"], abs=0.02)
    assert all(abs(m) < 1e-3 for m in record["scaled_mean"])
    assert all(abs(s - 1.0) < 1e-3 for s in record["scaled_std"])


def test_export_round_trips_through_the_loader(run, tmp_path):
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.text import encode
    from training.data import token_window
    from training.export import export_model
    from training.generate import generator_from_checkpoint

    unet, text_encoder = pipeline.ema_unet_and_text(SETTINGS, run)
    vae = pipeline.folded_vae(SETTINGS, run)
    path = export_model(tmp_path / "tiny.safetensors", unet, vae, text_encoder, {"smoke": True}, max_bytes=8 << 20)
    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.model.prediction, loaded.vae.scaling_factor) == ("sd1", "epsilon", 0.18215)
    assert all(tensor.dtype == torch.float16 for tensor in read_tensors(path).values())

    prompt = "a red circle on a blue background"
    expected = text_encoder(torch.tensor([token_window(prompt)])).last_hidden_state
    assert torch.allclose(encode(loaded.clip, prompt).embeds, expected, atol=2e-2)
    table = loaded.clip.encoders[0].get_input_embeddings().weight
    assert int((table.abs().sum(dim=1) > 0).sum()) == len(text_encoder.embeddings.token_embedding.token_ids)

    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        want = unet(x, t, encoder_hidden_states=expected).sample
        got = loaded.model.unet(x, t, encoder_hidden_states=expected).sample
        assert torch.allclose(got, want, atol=5e-2, rtol=5e-2)
        assert torch.allclose(loaded.vae.vae.decode(x).sample, vae.decode(x).sample, atol=5e-2)

    generate = generator_from_checkpoint(path, steps=2, resolution=64)
    images = generate([prompt, ""], [0, 1])
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    alone = np.asarray(generate([prompt], [0])[0]).astype(int)
    assert np.abs(np.asarray(images[0]).astype(int) - alone).max() <= 2  # the seed fixes the image


def test_command_trains_exports_and_records(tmp_path):
    """The whole `train` orchestration: a fresh tiny run finishes, exports, and the card gets its record."""
    from training.card import write_training_record
    from training.config import merged_settings
    from training.run import Budget, train

    settings = merged_settings(SETTINGS, {"unet": {"steps": 2}, "vae": {"steps": 2}})
    record = train(settings, tmp_path / "run", tmp_path / "model.safetensors", budget=Budget(None), progress=False)
    assert record["status"] == "complete" and record["unet"]["step"] == 2
    assert record["file"]["bytes"] == (tmp_path / "model.safetensors").stat().st_size
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# card\n<!-- training-record:start -->\nPLACEHOLDER-TEXT\n<!-- training-record:end -->\n")
    write_training_record(card, record)
    assert "PLACEHOLDER-TEXT" not in card.read_text() and record["file"]["sha256"] in card.read_text()
    again = train(settings, tmp_path / "run", None, budget=Budget(None), progress=False)  # nothing left to train
    assert again["unet"]["step"] == 2 and again["unet"]["seconds"] == record["unet"]["seconds"]


def test_decoder_fine_tune_keeps_the_encoder_and_resumes_exactly(run, tmp_path):
    """The decoder stage changes only the decoder side, so every latent the UNet learned stays valid."""
    from training.decoder import decoder_phase, finetuned_vae

    interrupted = tmp_path / "decoder.safetensors"
    paths = pipeline.RunPaths(run.root)
    run_phase(decoder_phase(SETTINGS, paths, "cpu"), interrupted, total_steps=3, progress=False, stop_at=1)
    run_phase(decoder_phase(SETTINGS, paths, "cpu"), interrupted, total_steps=3, progress=False)
    whole = tmp_path / "whole.safetensors"
    run_phase(decoder_phase(SETTINGS, paths, "cpu"), whole, total_steps=3, progress=False)
    _assert_same_checkpoint(whole, interrupted)
    shutil.copy(run.latents, tmp_path / run.latents.name)  # tmp_path: a run folder whose decoder is `interrupted`
    before, after = pipeline.folded_vae(SETTINGS, paths), finetuned_vae(SETTINGS, pipeline.RunPaths(tmp_path))
    for name, value in before.state_dict().items():
        same = torch.equal(value, after.state_dict()[name])
        assert same == (not name.startswith(("decoder.", "post_quant_conv."))) or "norm" in name, name


@pytest.mark.parametrize("adapter", ["lora", "controlnet"])
def test_adapter_training_writes_a_file_the_loaders_read(adapter, tmp_path):
    """Two steps of each adapter's training on a tiny SD1 checkpoint; the written file loads with every key placed."""
    from tiny_models import sd1_modules, write_checkpoint

    checkpoint = write_checkpoint(sd1_modules(seed=2, text_hidden=64), tmp_path / "base.safetensors")
    output = tmp_path / f"{adapter}.safetensors"
    small = {"dataset_size": 4, "batch_size": 2, "warmup": 1, "steps": 2}
    if adapter == "lora":
        from nodes.sd.loading import load_checkpoint
        from nodes.sd.lora import match_lora, read_lora
        from training.lora import LoraSettings, train_lora

        assert train_lora(LoraSettings(**small), tmp_path / "run", checkpoint, output, seconds=None, progress=False).done
        loaded = load_checkpoint(checkpoint)
        matched = match_lora(read_lora(output), loaded.model.unet, loaded.clip.encoders)
        assert matched.not_loaded == ()
        assert any(k.startswith("lora_te_text_model_") for k in read_tensors(output))
    else:
        from nodes.sd.controlnet import load_controlnet
        from training.controlnet import ControlSettings, train_controlnet

        done = train_controlnet(ControlSettings(**small), tmp_path / "run", checkpoint, output, seconds=None,
                                progress=False).done  # fmt: skip
        assert done and all(k.startswith("control_model.") for k in read_tensors(output))
        assert tuple(load_controlnet(output).model.config.conditioning_embedding_out_channels) == (16, 32, 64, 128)
