"""Prompt encoding: diffusers' pipelines as the oracle for plain prompts, ComfyUI's rules for the rest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTokenizer

import tiny_models as tm
from nodegraph import NodeExecutionError
from nodes.sd.loading import load_checkpoint
from nodes.sd.loading.handles import LoadedCheckpoint
from nodes.sd.text import ClipRun, encode, tokenize
from nodes.sd.tokenizer import _vocab_and_merges, clip_bpe_tokenizer, clip_l_tokenizer
from nodes.sd.types import ClipHandle, ModelPatch


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedCheckpoint]:
    root = tmp_path_factory.mktemp("text")
    return {
        "sd1": load_checkpoint(tm.make_sd1_checkpoint(root)),
        "sd2": load_checkpoint(tm.make_sd2_checkpoint(root)),
        "sdxl": load_checkpoint(tm.make_sdxl_checkpoint(root)),
    }


def test_sd1_matches_diffusers_encode_prompt(checkpoints) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    loaded = checkpoints["sd1"]
    pipe = StableDiffusionPipeline(
        vae=loaded.vae.vae, text_encoder=loaded.clip.encoders[0], tokenizer=clip_bpe_tokenizer(),
        unet=loaded.model.unet, scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    want, _ = pipe.encode_prompt("a photo of a cat", "cpu", 1, False)
    got = encode(loaded.clip, "a photo of a cat")
    assert got.pooled is None and torch.equal(got.embeds, want)
    # diffusers' clip_skip path needs transformers 4's `text_model` attribute; its rule, by hand:
    encoder = loaded.clip.encoders[0]
    out = encoder(torch.tensor([clip_l_tokenizer().window(clip_l_tokenizer()("a photo of a cat"))]), output_hidden_states=True)
    skipped = encode(replace(loaded.clip, layer_idx=-2), "a photo of a cat").embeds
    assert torch.equal(skipped, encoder.final_layer_norm(out.hidden_states[-2]))


def test_sdxl_matches_diffusers_encode_prompt(checkpoints) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    loaded = checkpoints["sdxl"]
    vocab, merges = _vocab_and_merges()
    pipe = StableDiffusionXLPipeline(
        vae=loaded.vae.vae, text_encoder=loaded.clip.encoders[0], text_encoder_2=loaded.clip.encoders[1],
        tokenizer=clip_bpe_tokenizer(), tokenizer_2=CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77),
        unet=loaded.model.unet, scheduler=EulerDiscreteScheduler(),
    )  # fmt: skip
    embeds, _, pooled, _ = pipe.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=False)
    got = encode(loaded.clip, "a photo of a cat")
    assert got.embeds.shape == (1, 77, 32 + 64) and torch.equal(got.embeds, embeds)
    assert torch.equal(got.pooled, pooled) and "time_ids" not in got.extras


def test_weight_one_equals_plain(checkpoints) -> None:
    for loaded in checkpoints.values():
        plain = encode(loaded.clip, "a photo of a cat")
        assert torch.equal(encode(loaded.clip, "a photo of a (cat:1.0)").embeds, plain.embeds)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_weight_scales_the_offset_from_the_empty_prompt(checkpoints, family: str) -> None:
    clip = checkpoints[family].clip
    plain = encode(clip, "a photo of a cat").embeds
    weighted = encode(clip, "a photo of a (cat:1.5)")
    empty = encode(clip, "").embeds
    cat = 5  # bos a photo of a [cat]
    others = [i for i in range(77) if i != cat]
    assert torch.equal(weighted.embeds[:, others], plain[:, others])
    assert torch.allclose(weighted.embeds[:, cat], empty[:, cat] + 1.5 * (plain[:, cat] - empty[:, cat]), atol=1e-6)
    assert (weighted.embeds[:, cat] - empty[:, cat]).norm() > (plain[:, cat] - empty[:, cat]).norm()
    if family == "sdxl":  # pooled comes from the unweighted first window
        assert torch.equal(weighted.pooled, encode(clip, "a photo of a cat").pooled)


def test_long_prompt_is_two_windows(checkpoints) -> None:
    clip = checkpoints["sd1"].clip
    words = ["cat"] * 100
    long = encode(clip, " ".join(words))
    assert long.embeds.shape == (1, 154, 32)
    first, second = encode(clip, " ".join(words[:75])), encode(clip, " ".join(words[75:]))
    assert torch.equal(long.embeds, torch.cat([first.embeds, second.embeds], dim=1))


def test_windows_keep_words_whole() -> None:
    clip = ClipHandle(encoder_refs=(_Width(),), tokenizers=(clip_l_tokenizer(),), family="sd1")
    word = "photosynthesis"  # several tokens
    size = len(clip_l_tokenizer().word_ids(word))
    assert 1 < size < 8
    windows = tokenize_ids(clip, "cat " * 74 + word)
    assert len(windows) == 2 and all(len(w) == 77 for w in windows)
    assert windows[0][:2] == [49406, 2368] and windows[0][75:] == [49407, 49407]  # padded, the word moved on
    assert windows[1][1 : 1 + size] == clip_l_tokenizer().word_ids(word)
    long_word = "a" * 60  # >= 8 tokens: split across the boundary rather than moved
    split = tokenize_ids(clip, "cat " * 74 + long_word)
    assert split[0][75] != 49407 and split[0][76] == 49407


def tokenize_ids(clip: ClipHandle, text: str) -> list[list[int]]:
    return [[token.id for token in window] for window in tokenize(clip, text)[0]]


class _Width(torch.nn.Module):
    """Enough of a text encoder for tokenize(): its config's hidden size."""

    class config:  # noqa: N801
        hidden_size = 32


def test_clip_skip_changes_the_embeddings(checkpoints) -> None:
    for family, loaded in checkpoints.items():
        last = encode(replace(loaded.clip, layer_idx=-1), "a photo of a cat").embeds
        penultimate = encode(replace(loaded.clip, layer_idx=-2), "a photo of a cat").embeds
        assert not torch.allclose(last, penultimate)
        assert torch.equal(encode(loaded.clip, "a photo of a cat").embeds, last if family == "sd1" else penultimate)
    with pytest.raises(ValueError, match="CLIP layer -3 does not exist: this text encoder has 2 layers"):
        encode(replace(checkpoints["sd1"].clip, layer_idx=-3), "cat")


def _token_rows(encoder: torch.nn.Module, text: str) -> torch.Tensor:
    ids = clip_l_tokenizer().word_ids(text)
    return getattr(encoder, "text_model", encoder).embeddings.token_embedding.weight[ids].clone()


def test_embedding_vectors_replace_tokens(checkpoints, tmp_path: Path) -> None:
    """An embedding holding the token vectors of "photo of" encodes exactly like those words."""
    sd1 = checkpoints["sd1"].clip
    save_file({"emb_params": _token_rows(sd1.encoders[0], "photo of")}, str(tmp_path / "style.safetensors"))
    torch.save({"string_to_param": {"*": torch.nn.Parameter(_token_rows(sd1.encoders[0], "photo of"))}, "name": "old"}, tmp_path / "old.pt")
    clip = replace(sd1, embedding_dirs=(str(tmp_path),))
    want = encode(clip, "a photo of a cat").embeds
    assert torch.equal(encode(clip, "a embedding:style a cat").embeds, want)
    assert torch.equal(encode(clip, "a embedding:old.pt a cat").embeds, want)
    weighted = encode(clip, "a (embedding:style:1.3) a cat").embeds
    assert torch.allclose(weighted, encode(clip, "a (photo of:1.3) a cat").embeds, atol=1e-6)

    xl = checkpoints["sdxl"].clip
    rows = {"clip_l": _token_rows(xl.encoders[0], "photo of"), "clip_g": _token_rows(xl.encoders[1], "photo of")}
    save_file(rows, str(tmp_path / "xl.safetensors"))
    xl = replace(xl, embedding_dirs=(str(tmp_path / "missing"), str(tmp_path)))
    got, want = encode(xl, "a embedding:xl a cat"), encode(xl, "a photo of a cat")
    assert torch.equal(got.embeds, want.embeds) and torch.equal(got.pooled, want.pooled)


def test_embedding_errors(checkpoints, tmp_path: Path) -> None:
    clip = replace(checkpoints["sd1"].clip, embedding_dirs=(str(tmp_path),))
    with pytest.raises(FileNotFoundError, match="embedding 'nothing' not found in"):
        encode(clip, "embedding:nothing")
    with pytest.raises(FileNotFoundError, match="embedding '../text0/x' not found"):
        encode(clip, "embedding:../text0/x")
    save_file({"emb_params": torch.zeros(2, 768)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ValueError, match="768-wide vectors; this text encoder \\(clip_l\\) is 32 wide"):
        encode(clip, "embedding:wide")
    with pytest.raises(FileNotFoundError, match="no embedding folders"):
        encode(checkpoints["sd1"].clip, "embedding:wide")


def test_weights_patches_act_for_one_encode(checkpoints) -> None:
    sd1, sd2 = checkpoints["sd1"].clip, checkpoints["sd2"].clip
    undone = []

    def swap_encoder(run: ClipRun):
        run.encoders[0] = sd2.encoders[0]
        return lambda: undone.append(True)

    patched = sd1.with_patch(ModelPatch(kind="weights", name="swap", apply=swap_encoder))
    got = encode(patched, "a cat").embeds
    assert undone == [True] and sd1.encoders[0] is checkpoints["sd1"].clip.encoders[0]
    assert torch.equal(got, encode(replace(sd1, encoder_refs=sd2.encoder_refs), "a cat").embeds)
    assert not torch.equal(got, encode(sd1, "a cat").embeds)
    with pytest.raises(ValueError, match="kind 'guidance'"):
        encode(sd1.with_patch(ModelPatch(kind="guidance", name="x", apply=lambda run: None)), "a cat")


def test_clip_text_encode_re_encodes_when_an_embedding_file_changes(tmp_path: Path) -> None:
    """The node's cache key covers the embedding files its text names: editing one is not served stale."""
    from nodegraph.formats.api import from_api

    tm.write_checkpoint(tm.sd1_modules(seed=0), tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    style = tmp_path / "models" / "embeddings" / "style.safetensors"
    style.parent.mkdir(parents=True)
    save_file({"emb_params": torch.ones(2, 32)}, str(style))
    engine = tm.engine_at(tmp_path)
    api = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
           "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a embedding:style, cat", "clip": ["1", 1]}}}
    first = engine.run(from_api(api), outputs=["2"])
    assert engine.run(from_api(api), outputs=["2"]).cached == ["2"]  # unchanged: from the cache
    save_file({"emb_params": torch.full((2, 32), -1.0)}, str(style))
    second = engine.run(from_api(api), outputs=["2"])
    assert second.executed == ["2"]
    assert not torch.equal(first.values["2"][0][0].embeds, second.values["2"][0][0].embeds)
    style.unlink()
    with pytest.raises(NodeExecutionError, match="embedding 'style' not found"):
        engine.run(from_api(api), outputs=["2"])
