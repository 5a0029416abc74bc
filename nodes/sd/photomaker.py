"""PhotoMaker v1's ID encoder (Li et al. 2023, "PhotoMaker: Customizing Realistic Human Photos via Stacked ID
Embedding", https://arxiv.org/abs/2312.04461): reading its files and writing the stacked ID embedding into a
prompt's text states.

The ID encoder is a CLIP vision tower whose pooled class token goes through two projections (`visual_projection`
to 768 and `visual_projection_2` to 1280 in the released file; concatenated they are as wide as SDXL's text
states) and a fuse module. For each reference image i, the fuse module takes the text state of the class word
(the word before the trigger word, e.g. "man" in "a man photomaker") and that image's ID embedding and returns
(paper Sec. 3.2, Eq. 1-2):

    h   = MLP1(concat(t, e_i)) + t                 MLP(x) = fc2(GELU(fc1(LayerNorm(x))))
    h   = MLP2(h) + h                              (MLP2 is residual, MLP1 is not)
    out = LayerNorm(h)

The trigger word is removed from the prompt and the class word's last token is repeated once per reference image
(the "stacked ID embedding"), so each copy's text state is replaced by one image's fused embedding; everything
else in the prompt is left as the text encoder wrote it. ComfyUI 0.3.64 writes one such token (and so uses only
the first image, at the token position equal to the class word's word index); the stacking here follows the
paper's pipeline, and for one image and one-token words both agree.

Files: `photomaker-v1.bin` (a pickle: {"id_encoder": {...}, "lora_weights": {...}}) or a safetensors file with
`id_encoder.*` keys (or bare keys). The LoRA part is ignored, as ComfyUI does (users load it with LoraLoader).
The tower's size is read from the shapes (nodes/sd/clip_vision.py), so a tiny file loads the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nodegraph.models import ModelManager, ModelRef, resolve
from nodes.sd import text as text_encoding
from nodes.sd.clip_vision import METADATA_KEY, build_vision_model, preprocess
from nodes.sd.loading.files import file_signature, read_raw
from nodes.sd.prompt import parse_prompt
from nodes.sd.types import ClipHandle, CondItem

TRIGGER_WORD = "photomaker"
"""The word ComfyUI's PhotoMakerEncode looks for; the word before it is the class word."""
PREFIX = "id_encoder."
FUSE_PREFIX = "fuse_module."


@dataclass(frozen=True)
class PhotoMakerHandle:
    """PHOTOMAKER: the manager's ref to a PhotoMakerIDEncoder. Shared with the cache: never mutate the module."""

    model_ref: ModelRef | nn.Module
    source: str = ""

    @property
    def model(self) -> PhotoMakerIDEncoder:
        return resolve(self.model_ref)


class FuseMLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, optionally residual (the paper's MLP blocks)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, residual: bool) -> None:
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError(f"a residual MLP needs equal widths, got {in_dim} -> {out_dim}")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class FuseModule(nn.Module):
    """Fuses a class word's text state with one image's ID embedding (paper Sec. 3.2)."""

    def __init__(self, width: int, hidden1: int | None = None, hidden2: int | None = None) -> None:
        super().__init__()
        self.mlp1 = FuseMLP(2 * width, hidden1 or width, width, residual=False)
        self.mlp2 = FuseMLP(width, hidden2 or width, width, residual=True)
        self.layer_norm = nn.LayerNorm(width)

    def forward(self, class_states: Tensor, id_embeds: Tensor) -> Tensor:
        """class_states, id_embeds [n, width] -> fused [n, width]."""
        fused = self.mlp1(torch.cat([class_states, id_embeds], dim=-1)) + class_states
        return self.layer_norm(self.mlp2(fused))


class PhotoMakerIDEncoder(nn.Module):
    """A CLIP vision tower + two projections + the fuse module, with the file's parameter names."""

    def __init__(self, tower: nn.Module, projection_2: nn.Linear, fuse: FuseModule) -> None:
        super().__init__()
        self.vision_model = tower.vision_model
        self.visual_projection = tower.visual_projection
        self.visual_projection_2 = projection_2
        self.fuse_module = fuse
        self.image_size = int(tower.config.image_size)
        self.vision_config = tower.config

    @property
    def width(self) -> int:
        """The text-state width the fuse module works in."""
        return int(self.fuse_module.layer_norm.normalized_shape[0])

    def id_embeds(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels [n, 3, s, s] -> ID embeddings [n, width]: both projections of the pooled class token."""
        pooled = self.vision_model(pixel_values=pixels).pooler_output
        return torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)

    def fuse(self, states: Tensor, positions: list[int], id_embeds: Tensor) -> Tensor:
        """A copy of text states [1, T, width] with the class-token `positions` replaced, one per ID embedding."""
        if len(positions) != id_embeds.shape[0]:
            raise ValueError(f"PhotoMaker: {len(positions)} class tokens for {id_embeds.shape[0]} ID images")
        out = states.clone()
        index = torch.tensor(positions, device=states.device)
        fused = self.fuse_module(states[0, index].to(id_embeds.dtype), id_embeds)
        out[0, index] = fused.to(out.dtype)
        return out


def id_encoder_tensors(data: Any, what: str) -> dict[str, Tensor]:
    """The ID encoder's tensors under bare names (vision_model.*, visual_projection*.weight, fuse_module.*).

    Raises:
        ValueError: no ID encoder in the file (naming the keys found).
    """
    if isinstance(data, Mapping) and isinstance(data.get("id_encoder"), Mapping):
        data = data["id_encoder"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected a dict of tensors, found {type(data).__name__}")
    tensors = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if any(k.startswith(PREFIX) for k in tensors):
        tensors = {k.removeprefix(PREFIX): v for k, v in tensors.items() if k.startswith(PREFIX)}
    needed = ("vision_model.embeddings.patch_embedding.weight", "visual_projection.weight",
              "visual_projection_2.weight", "fuse_module.layer_norm.weight")
    missing = [k for k in needed if k not in tensors]
    if missing:
        shown = ", ".join(sorted(map(str, data))[:5]) or "none"
        raise ValueError(f"{what}: not a PhotoMaker file: no ID encoder weights (expected id_encoder.* keys or an "
                         f"'id_encoder' dict with {', '.join(missing)}); found keys e.g. {shown}")
    return tensors


def build_id_encoder(tensors: Mapping[str, Tensor], what: str, overrides: Mapping[str, Any] | None = None,
                     ) -> PhotoMakerIDEncoder:
    """A PhotoMakerIDEncoder sized from the tensors' shapes, holding them (float32, eval, no gradients)."""
    tower = build_vision_model({k: v for k, v in tensors.items() if not k.startswith(("fuse_module.",
                                "visual_projection_2."))}, what, overrides)
    projection_2 = tensors["visual_projection_2.weight"]
    width = int(tensors["fuse_module.layer_norm.weight"].shape[0])
    fuse = FuseModule(width, int(tensors["fuse_module.mlp1.fc1.weight"].shape[0]),
                      int(tensors["fuse_module.mlp2.fc1.weight"].shape[0]))
    linear = nn.Linear(int(projection_2.shape[1]), int(projection_2.shape[0]), bias=False)
    ids = int(tower.visual_projection.out_features) + int(projection_2.shape[0])
    if ids != width:
        raise ValueError(f"{what}: the two projections give {ids}-wide ID embeddings but the fuse module is "
                         f"{width} wide")
    fuse_state = {k.removeprefix(FUSE_PREFIX): v.float() for k, v in tensors.items() if k.startswith(FUSE_PREFIX)}
    try:
        fuse.load_state_dict(fuse_state)
    except RuntimeError as error:
        raise ValueError(f"{what}: the fuse_module weights do not fit PhotoMaker's fuse module: {error}") from error
    linear.load_state_dict({"weight": projection_2.float()})
    model = PhotoMakerIDEncoder(tower, linear, fuse)
    model.requires_grad_(False)
    return model.eval()


def load_photomaker(path: str | Path, *, manager: ModelManager) -> PhotoMakerHandle:
    """PhotoMakerLoader: a handle whose ID encoder the model manager loads (once per file identity)."""
    path = Path(path)
    what = f"PhotoMaker file {path.name}"

    def load(device: str) -> nn.Module:
        data, metadata = read_raw(path)
        raw = (metadata or {}).get(METADATA_KEY)
        overrides = json.loads(raw).get("clip_vision", {}) if raw else {}
        return build_id_encoder(id_encoder_tensors(data, what), what, overrides).to(device)

    ref = manager.ref((file_signature(path), "photomaker"), load, name=f"{path.name} PhotoMaker")
    ref.get()  # a file without an ID encoder fails in the loader, not in a later node
    return PhotoMakerHandle(model_ref=ref, source=str(path))


# -- prompt side ---------------------------------------------------------------------------------------------


def trigger_groups(clip: ClipHandle, index: int, text: str, copies: int,
                   ) -> tuple[list[list[text_encoding.Token]], list[text_encoding.Token]] | None:
    """Encoder `index`'s token groups (one per word) with the first trigger word removed and the class word's
    last token repeated `copies` times; and those class tokens. None when the prompt has no trigger word.

    Raises:
        ValueError: the trigger word has no word before it, or an embedding stands before it.
    """
    tokenizer = clip.tokenizers[index]
    groups: list[list[text_encoding.Token]] = []
    class_tokens: list[text_encoding.Token] | None = None
    for part in parse_prompt(text):
        if part.embedding is not None:
            key = text_encoding.EMBEDDING_KEYS[clip.family][index]
            width = int(text_encoding._text_model(clip.encoders[index]).config.hidden_size)
            vectors = text_encoding.load_embedding(part.embedding, clip.embedding_dirs, key=key, width=width)
            groups.append([text_encoding.Token(text_encoding._PLACEHOLDER_ID, part.weight, v) for v in vectors])
            continue
        for word in part.text.split():
            if word == TRIGGER_WORD and class_tokens is None:
                if not groups or not groups[-1] or groups[-1][-1].vector is not None:
                    raise ValueError(f"PhotoMakerEncode: {TRIGGER_WORD!r} must follow a class word (e.g. "
                                     f"'a photo of a man {TRIGGER_WORD}'), got {text!r}")
                last = groups[-1][-1]
                class_tokens = [text_encoding.Token(last.id, last.weight) for _ in range(copies)]
                groups[-1] = groups[-1][:-1] + class_tokens
                continue
            groups.append([text_encoding.Token(t, part.weight) for t in tokenizer.word_ids(word)])
    return None if class_tokens is None else (groups, class_tokens)


@torch.no_grad()
def class_token_states(clip: ClipHandle, text: str, copies: int) -> tuple[CondItem, list[int]] | None:
    """The prompt's text encoding with the trigger word removed and the class word's last token repeated `copies`
    times, and where those copies sit in `embeds`; None when the prompt has no trigger word."""
    found = [trigger_groups(clip, i, text, copies) for i in range(len(clip.encoders))]
    if found[0] is None:
        return None
    windows, positions = [], []
    for i, (groups, class_tokens) in enumerate(found):
        packed = text_encoding._windows(groups, clip.tokenizers[i])
        flat = [token for window in packed for token in window]
        windows.append(packed)
        positions.append([next(p for p, t in enumerate(flat) if t is c) for c in class_tokens])
    if any(p != positions[0] for p in positions):
        raise ValueError("PhotoMakerEncode: the class word sits at different positions for this CLIP's encoders")
    return text_encoding.encode(clip, text, token_windows=windows), positions[0]


@torch.no_grad()
def photomaker_encode(model: PhotoMakerIDEncoder, clip: ClipHandle, image: Tensor, text: str) -> CondItem:
    """PhotoMakerEncode: the prompt's conditioning with each reference image's fused ID embedding written at one
    copy of the class word's last token. Without the trigger word: the plain text encoding (ComfyUI does this).

    Args:
        model: the ID encoder.
        clip: the CLIP whose text states are edited (as wide as the fuse module).
        image: IMAGE [n, H, W, C], the n reference images.
        text: the prompt, e.g. "a photograph of a man photomaker".
    """
    prepared = class_token_states(clip, text, int(image.shape[0]))
    if prepared is None:
        return text_encoding.encode(clip, text)
    item, positions = prepared
    if item.embeds.shape[-1] != model.width:
        raise ValueError(f"PhotoMakerEncode: the PhotoMaker model fuses {model.width}-wide text states but this "
                         f"CLIP gives {item.embeds.shape[-1]}-wide ones (PhotoMaker v1 is made for SDXL's CLIP)")
    parameter = next(model.parameters())
    pixels = preprocess(image, model.image_size, crop=True).to(parameter.device, parameter.dtype)
    embeds = model.fuse(item.embeds.to(parameter.device), positions, model.id_embeds(pixels))
    return replace(item, embeds=embeds.float().cpu())
