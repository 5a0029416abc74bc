"""CLIP tokenizer built offline: exact ids, both padding conventions, OpenAI's own tokenizer as the oracle."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from nodes.sd.tokenizer import (
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    bpe_vocab_path,
    clip_bpe_tokenizer,
    clip_l_tokenizer,
    open_clip_tokenizer,
)


def test_known_ids() -> None:
    assert clip_l_tokenizer()("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_l_tokenizer().word_ids("A  Photo,\nof a CAT!") == [320, 1125, 267, 539, 320, 2368, 256]


def test_vocabulary_and_specials() -> None:
    tokenizer = clip_bpe_tokenizer()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS_TOKEN_ID, EOS_TOKEN_ID) == (49406, 49407)
    assert tokenizer.convert_ids_to_tokens([320, 49406, 49407]) == ["a</w>", "<|startoftext|>", "<|endoftext|>"]


def test_padding_conventions() -> None:
    ids = clip_l_tokenizer()("a cat")
    assert clip_l_tokenizer().window(ids) == ids + [49407] * 73  # OpenAI CLIP-L pads with end-of-text
    assert open_clip_tokenizer().window(ids) == ids + [0] * 73  # OpenCLIP pads with 0
    with pytest.raises(ValueError, match="78 tokens do not fit"):
        clip_l_tokenizer().window(list(range(78)))


def test_long_text_is_not_truncated() -> None:
    assert len(clip_l_tokenizer().word_ids(" ".join(["cat"] * 100))) == 100


def test_built_once_from_the_bundled_file_without_importing_clip() -> None:
    assert bpe_vocab_path().name == "bpe_simple_vocab_16e6.txt.gz" and bpe_vocab_path().is_file()
    assert clip_bpe_tokenizer() is clip_bpe_tokenizer() and clip_l_tokenizer() is clip_l_tokenizer()
    assert clip_l_tokenizer().tokenizer is open_clip_tokenizer().tokenizer
    assert "clip" not in sys.modules  # the package needs torchvision; we read only its vocabulary file


def test_matches_openai_simple_tokenizer() -> None:
    """OpenAI's reference tokenizer (loaded by file path, not through the `clip` package) agrees."""
    pytest.importorskip("ftfy")
    spec = importlib.util.spec_from_file_location("_openai_simple_tokenizer", bpe_vocab_path().parent / "simple_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.SimpleTokenizer(str(bpe_vocab_path()))
    for text in [
        "a photo of a cat",
        "masterpiece, best quality, 1girl, (detailed eyes:1.2)",
        "it's a dog's life, isn't it?",
        "Crème brûlée at 3:45pm — 東京 🚀",
        "ultra-detailed 8k HDR photograph of an astronaut riding a horse on mars",
    ]:
        assert clip_l_tokenizer().word_ids(text) == reference.encode(text), text
