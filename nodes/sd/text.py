"""Prompt -> CONDITIONING, matching ComfyUI's CLIPTextEncode so shared workflows give the same embeddings.

- Weights (`(word:1.2)`) act per token ComfyUI-style: z = z_empty + (z - z_empty) * weight, where z_empty
  is the encoding of the empty prompt at the same position.
- Prompts longer than 75 tokens become several 77-token windows (bos + 75 + eos/pad), encoded
  separately and concatenated along the token axis. Words stay whole across a window boundary unless
  they are 8 tokens or longer.
- `ClipHandle.layer_idx` picks the hidden state (-1 last, -2 penultimate, ...). SD1/SD2 pass it through
  the final layer norm; SDXL uses it raw and concatenates CLIP-L and bigG (ComfyUI's defaults).
  SDXL's pooled embedding is bigG's projection of the first window's last layer.
- `embedding:name` inserts a textual-inversion embedding's vectors in place of tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nodes.sd.loading.files import read_raw
from nodes.sd.prompt import parse_prompt
from nodes.sd.tokenizer import SDTokenizer
from nodes.sd.types import ClipHandle, CondItem, Family

LARGE_WORD = 8
"""ComfyUI splits a word across windows only when it has at least this many tokens."""
EMBEDDING_SUFFIXES = ("", ".safetensors", ".pt", ".bin", ".pth")
EMBEDDING_KEYS: dict[Family, tuple[str, ...]] = {"sd1": ("clip_l",), "sd2": ("clip_h",), "sdxl": ("clip_l", "clip_g")}
"""Per family, per encoder: the key SDXL-style embedding files use for that encoder's vectors."""
_PLACEHOLDER_ID = 0  # any id but end-of-text: transformers pools at the first end-of-text


@dataclass(frozen=True, eq=False)
class Token:
    """One position of a window: a token id (or an embedding vector standing in for it) and its weight."""

    id: int
    weight: float = 1.0
    vector: torch.Tensor | None = None


@dataclass
class ClipRun:
    """What CLIP patches act on during one `encode`: "weights" patches may swap `encoders` for patched copies."""

    encoders: list[torch.nn.Module]
    handle: ClipHandle
    extras: dict[str, Any] = field(default_factory=dict)


def _text_model(encoder: torch.nn.Module) -> torch.nn.Module:
    """The CLIPTextModel inside a CLIPTextModelWithProjection (or the model itself)."""
    return getattr(encoder, "text_model", encoder)


def find_embedding(name: str, dirs: Sequence[str | Path]) -> Path | None:
    """The file `embedding:name` refers to: the first of `dirs` holding `name` (as given, or with one of
    EMBEDDING_SUFFIXES); None when none does. A name that escapes its folder never matches."""
    for folder in dirs:
        root = Path(folder).resolve()
        for suffix in EMBEDDING_SUFFIXES:
            candidate = (root / f"{name}{suffix}").resolve()
            if candidate.is_relative_to(root) and candidate.is_file() and (suffix or candidate.suffix):
                return candidate
    return None


def load_embedding(name: str, dirs: Sequence[str | Path], *, key: str, width: int) -> torch.Tensor:
    """A textual-inversion embedding's vectors [n, width] for one encoder.

    Args:
        name: the file name, with or without extension; it must stay inside one of `dirs`.
        dirs: folders to search, in order.
        key: this encoder's key in SDXL-style files ("clip_l", "clip_g", "clip_h").
        width: the encoder's hidden size, which the vectors must match.

    Files: A1111 (`string_to_param`), `emb_params`, SDXL (`clip_l`/`clip_g`), or a single tensor; pickles are
    read with `weights_only=True` only.
    """
    if not dirs:
        raise FileNotFoundError(f"embedding {name!r}: no embedding folders are configured for this CLIP")
    path = find_embedding(name, dirs)
    if path is None:
        raise FileNotFoundError(f"embedding {name!r} not found in {', '.join(str(d) for d in dirs)}")
    data, _ = read_raw(path)
    if isinstance(data, dict):
        if key in data:
            data = data[key]
        elif "emb_params" in data:
            data = data["emb_params"]
        elif isinstance(data.get("string_to_param"), dict):
            data = next(iter(data["string_to_param"].values()))
        elif len(data) == 1:
            data = next(iter(data.values()))
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"embedding {name!r} ({path.name}): no vectors found for {key}")
    vectors = data.detach().float().reshape(-1, data.shape[-1])
    if vectors.shape[-1] != width:
        raise ValueError(f"embedding {name!r} has {vectors.shape[-1]}-wide vectors; this text encoder ({key}) is {width} wide")
    return vectors


def _token_groups(clip: ClipHandle, index: int, text: str) -> list[list[Token]]:
    """The prompt as groups of tokens for encoder `index`: one group per word or embedding."""
    tokenizer: SDTokenizer = clip.tokenizers[index]
    key = EMBEDDING_KEYS[clip.family][index]
    width = int(_text_model(clip.encoders[index]).config.hidden_size)
    groups: list[list[Token]] = []
    for part in parse_prompt(text):
        if part.embedding is not None:
            vectors = load_embedding(part.embedding, clip.embedding_dirs, key=key, width=width)
            groups.append([Token(_PLACEHOLDER_ID, part.weight, vector) for vector in vectors])
            continue
        for word in part.text.split():
            groups.append([Token(token_id, part.weight) for token_id in tokenizer.word_ids(word)])
    return groups


def _windows(groups: list[list[Token]], tokenizer: SDTokenizer) -> list[list[Token]]:
    """Pack groups into bos ... eos windows of `max_length`, padded with the encoder's pad token."""
    room = tokenizer.max_length - 2
    windows: list[list[Token]] = []
    current: list[Token] = []

    def close() -> None:
        window = [Token(tokenizer.bos_token_id), *current, Token(tokenizer.eos_token_id)]
        window += [Token(tokenizer.pad_token_id)] * (tokenizer.max_length - len(window))
        windows.append(window)
        current.clear()

    for group in groups:
        large = len(group) >= LARGE_WORD
        while len(current) + len(group) > room:
            if large:
                split = room - len(current)
                current.extend(group[:split])
                group = group[split:]
            close()
        current.extend(group)
    close()
    return windows


def tokenize(clip: ClipHandle, text: str) -> list[list[list[Token]]]:
    """Per encoder, the prompt's 77-token windows with weights (and embedding vectors)."""
    return [_windows(_token_groups(clip, i, text), clip.tokenizers[i]) for i in range(len(clip.encoders))]


def _hidden_states(
    encoder: torch.nn.Module, window: list[Token], layer_idx: int, final_norm: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One window through one encoder: the chosen hidden state [1, 77, d] and, with a projection, pooled [1, p]."""
    model = _text_model(encoder)
    layers = int(model.config.num_hidden_layers)
    if not -layers <= layer_idx <= -1:
        raise ValueError(f"CLIP layer {layer_idx} does not exist: this text encoder has {layers} layers (-1 .. -{layers})")
    device = next(encoder.parameters()).device
    ids = torch.tensor([[t.id for t in window]], device=device)
    replacements = [(col, t.vector) for col, t in enumerate(window) if t.vector is not None]

    def insert_vectors(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for col, vector in replacements:
            output[0, col] = vector.to(output)
        return output

    hook = model.embeddings.token_embedding.register_forward_hook(insert_vectors) if replacements else None
    try:
        out = encoder(input_ids=ids, output_hidden_states=True)
    finally:
        if hook is not None:
            hook.remove()
    hidden = out.hidden_states[layer_idx]
    if final_norm:
        hidden = model.final_layer_norm(hidden)
    return hidden.float(), getattr(out, "text_embeds", None)


def _apply_weights(z: torch.Tensor, z_empty: torch.Tensor, windows: list[list[Token]]) -> torch.Tensor:
    """ComfyUI's default ("comfy") weighting: move each weighted token along its offset from the empty prompt."""
    weights = torch.tensor([[t.weight for t in window] for window in windows], dtype=z.dtype, device=z.device)[..., None]
    # Weight-1 tokens are left untouched: e + (z - e) * 1 is not always z in floating point.
    return torch.where(weights != 1.0, z_empty + (z - z_empty) * weights, z)


def _encode_one(
    encoder: torch.nn.Module, tokenizer: SDTokenizer, windows: list[list[Token]], layer_idx: int, final_norm: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One encoder's [1, 77 * windows, d] embeddings and (with a projection) the first window's pooled output.

    Windows run one at a time, so a window's embedding never depends on what else is in the prompt (batched
    matrix products can differ in the last bit); text encoding is cheap next to sampling.
    """
    hidden, pooled = zip(*(_hidden_states(encoder, window, layer_idx, final_norm) for window in windows))
    z = torch.cat(hidden)
    if any(t.weight != 1.0 for window in windows for t in window):
        empty = [Token(i) for i in tokenizer.window([tokenizer.bos_token_id, tokenizer.eos_token_id])]
        z = _apply_weights(z, _hidden_states(encoder, empty, layer_idx, final_norm)[0], windows)
    return z.reshape(1, -1, z.shape[-1]), None if pooled[0] is None else pooled[0].float()


@torch.no_grad()
def encode(clip: ClipHandle, text: str, *, token_windows: list[list[list[Token]]] | None = None) -> CondItem:
    """Encode a prompt into one conditioning entry (ComfyUI's CLIPTextEncode).

    Args:
        clip: the CLIP handle (its encoders, tokenizers, layer choice, embedding folders and patches).
        text: the prompt, with ComfyUI weighting syntax and `embedding:name` references.
        token_windows: per encoder, windows already tokenized (PhotoMakerEncode edits the tokens); `text` is
            then not read.

    Returns:
        A CondItem with `embeds` [1, 77 * windows, dim] (SDXL: CLIP-L and bigG concatenated, pooled set),
        float32 on the CPU.
    """
    run = ClipRun(encoders=list(clip.encoders), handle=clip)
    undos: list[Callable[[], Any]] = []
    try:
        for patch in clip.patches:
            if patch.kind != "weights":
                raise ValueError(f"CLIP patch {patch.name!r} has kind {patch.kind!r}; CLIP supports only 'weights'")
            undo = patch.apply(run)
            if undo is not None:
                undos.append(undo)
        if token_windows is None:
            token_windows = tokenize(clip, text)
        final_norm = clip.family != "sdxl"
        outputs = [
            _encode_one(encoder, tokenizer, windows, clip.layer_idx, final_norm)
            for encoder, tokenizer, windows in zip(run.encoders, clip.tokenizers, token_windows)
        ]
    finally:
        for undo in reversed(undos):
            undo()
    if clip.family == "sdxl":
        (z_l, _), (z_g, pooled) = outputs
        length = min(z_l.shape[1], z_g.shape[1])
        return CondItem(embeds=torch.cat([z_l[:, :length], z_g[:, :length]], dim=-1).cpu(), pooled=pooled.cpu())
    return CondItem(embeds=outputs[0][0].cpu())
