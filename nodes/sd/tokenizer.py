"""CLIP's BPE tokenizer, built offline from the vocabulary file that ships with `openai-clip`.

Nothing here may download: the 49,408-token vocabulary is rebuilt from `bpe_simple_vocab_16e6.txt.gz`
(found through the installed distribution's file list, so `clip` itself, which needs torchvision, is
never imported) and handed to transformers' `CLIPTokenizer` in memory.

SD's text encoders share the vocabulary but not the padding: OpenAI CLIP-L (SD1, SDXL's first encoder)
pads with end-of-text (49407), OpenCLIP (SD2, SDXL's bigG) pads with 0. `SDTokenizer` carries that.
"""

from __future__ import annotations

import gzip
import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
VOCAB_SIZE = 49408
MAX_LENGTH = 77
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGE_COUNT = 49152 - 256 - 2  # OpenAI CLIP keeps the first 48,894 merges of the file.


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table that byte-level BPE vocabularies are written in.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points from 256 upward,
    in byte order, so every byte has a visible, non-whitespace stand-in. The insertion order (printable
    bytes first) is the order CLIP's vocabulary lists them in, so it matters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bpe_vocab_path() -> Path:
    """Where the installed `openai-clip` distribution keeps CLIP's merges file."""
    try:
        files = importlib.metadata.files("openai-clip") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeError("the 'openai-clip' package (which carries CLIP's BPE vocabulary) is not installed") from error
    for file in files:
        if file.name == _BPE_FILE:
            return Path(str(file.locate()))
    raise RuntimeError(f"'openai-clip' is installed but has no {_BPE_FILE}")


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild CLIP's vocabulary the way CLIP did: bytes, bytes ending a word, every merge, then the specials."""
    lines = gzip.open(bpe_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
    symbols = list(_byte_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"{_BPE_FILE} gave {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {token: index for index, token in enumerate(tokens)}, merges  # type: ignore[return-value]


@lru_cache(maxsize=1)
def clip_bpe_tokenizer() -> CLIPTokenizer:
    """transformers' CLIPTokenizer over the real 49,408-token vocabulary (bos 49406, eos 49407)."""
    vocab, merges = _vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    if tokenizer.bos_token_id != BOS_TOKEN_ID or tokenizer.eos_token_id != EOS_TOKEN_ID:
        raise RuntimeError("CLIP tokenizer special tokens are not 49406/49407")
    return tokenizer


@dataclass(frozen=True)
class SDTokenizer:
    """One text encoder's view of CLIP tokenization: 77-token windows of bos + 75 tokens + eos + padding."""

    tokenizer: CLIPTokenizer
    pad_token_id: int
    max_length: int = MAX_LENGTH
    bos_token_id: int = BOS_TOKEN_ID
    eos_token_id: int = EOS_TOKEN_ID

    def word_ids(self, text: str) -> list[int]:
        """Token ids of `text` without bos/eos: the unit prompts are built from."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, text: str) -> list[int]:
        """bos + tokens + eos, unpadded and untruncated (CLIP's own convention for one string)."""
        return [self.bos_token_id, *self.word_ids(text), self.eos_token_id]

    def window(self, ids: list[int]) -> list[int]:
        """Pad a bos...eos window to `max_length` with this encoder's pad token."""
        if len(ids) > self.max_length:
            raise ValueError(f"{len(ids)} tokens do not fit a {self.max_length}-token window")
        return ids + [self.pad_token_id] * (self.max_length - len(ids))


@lru_cache(maxsize=None)
def clip_l_tokenizer() -> SDTokenizer:
    """OpenAI CLIP ViT-L/14's tokenizer (SD1, SDXL's first encoder): pads with end-of-text."""
    return SDTokenizer(clip_bpe_tokenizer(), pad_token_id=EOS_TOKEN_ID)


@lru_cache(maxsize=None)
def open_clip_tokenizer() -> SDTokenizer:
    """OpenCLIP's tokenizer (SD2's ViT-H, SDXL's bigG): same vocabulary, pads with 0."""
    return SDTokenizer(clip_bpe_tokenizer(), pad_token_id=0)
