"""CLIP vision towers (Radford et al. 2021, https://arxiv.org/abs/2103.00020): reading their files, ComfyUI's
image preprocessing, and the three outputs image-prompt nodes use.

A file holds a vision tower in one of two key layouts, both loaded into transformers'
CLIPVisionModelWithProjection:

- transformers' own (`vision_model.*`, `visual_projection.weight`), the layout of OpenAI's CLIP ViT-L/14 and of
  ComfyUI's `clip_vision` downloads;
- open_clip's (`visual.conv1`, `visual.transformer.resblocks.N.*`, `visual.proj`), as open_clip saves ViT-H and
  ViT-bigG and as SD2.1-unCLIP checkpoints embed theirs (under `embedder.model.`), mapped here key by key
  (open_clip's fused attention `in_proj` split into q, k, v; `proj` is the transpose of `visual_projection`).

The architecture is read from the shapes; the head count cannot be and the activation neither: the released
towers' values are known by width (ViT-L: 16 heads, quick-GELU; ViT-H and bigG: 16 heads, GELU), other widths
get 64-wide heads and their layout's usual activation (OpenAI's quick-GELU, open_clip's GELU), and a file may
state both in its `nodegraph_config` metadata. Outputs follow ComfyUI's CLIP_VISION_OUTPUT: `last_hidden_state` (the last layer's
tokens, before the final layer norm), `penultimate_hidden_states` (the layer before) and `image_embeds` (the
class token after the final norm, projected).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.models import ModelManager, ModelRef, resolve
from nodes.sd.loading.files import file_signature, read_raw

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The per-channel mean and deviation CLIP was trained with (OpenAI's preprocessing, which ComfyUI uses)."""
METADATA_KEY = "nodegraph_config"
KNOWN_WIDTHS: dict[int, tuple[int, str]] = {
    768: (12, "quick_gelu"),  # OpenAI ViT-B
    1024: (16, "quick_gelu"),  # OpenAI ViT-L/14 (ComfyUI's clip_vision_l, SD2.1-unCLIP-L)
    1280: (16, "gelu"),  # open_clip ViT-H/14 (clip_vision_h, SD2.1-unCLIP-H)
    1664: (16, "gelu"),  # open_clip ViT-bigG/14 (clip_vision_g)
}
"""Heads and activation of the released towers by width (neither shows in the weights' shapes)."""
PREFIXES = ("", "clip_vision.", "embedder.model.", "cond_stage_model.model.", "conditioner.embedders.0.model.")
"""Where a vision tower can sit in a file: alone, under ComfyUI's `clip_vision.` or inside an unCLIP checkpoint."""


@dataclass(frozen=True)
class ClipVisionHandle:
    """CLIP_VISION: the manager's ref to a CLIPVisionModelWithProjection and its input size.
    Shared with the cache and other branches: never mutate the module."""

    model_ref: ModelRef | torch.nn.Module
    image_size: int
    source: str = ""

    @property
    def model(self) -> torch.nn.Module:
        return resolve(self.model_ref)


@dataclass(frozen=True)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: what CLIPVisionEncode computed for a batch of images (float32, on the CPU)."""

    image_embeds: Tensor
    """[B, projection_dim]: the projected class token (unCLIP's image embedding)."""
    last_hidden_state: Tensor
    """[B, 1 + patches, hidden]: the last layer's tokens (style models read these)."""
    penultimate_hidden_states: Tensor
    """[B, 1 + patches, hidden]: the layer before the last."""


def preprocess(image: Tensor, size: int, *, crop: bool = True) -> Tensor:
    """ComfyUI's clip_preprocess: IMAGE [B, H, W, C] in 0..1 -> normalised [B, 3, size, size].

    With `crop` the shorter side is resized to `size` (bicubic, antialiased) and the centre cut out; without it
    the image is squashed to size x size. Pixels are rounded to 8 bits, then normalised by CLIP's mean and std.
    """
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"CLIP vision expects an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
    pixels = image[..., :3] if image.shape[-1] >= 3 else image.expand(-1, -1, -1, 3)
    pixels = pixels.movedim(-1, 1).float()
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (round(scale * height), round(scale * width))
        else:
            target = (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (pixels.shape[2] - size) // 2, (pixels.shape[3] - size) // 2
        pixels = pixels[:, :, top : top + size, left : left + size]
    pixels = torch.clip(torch.round(pixels * 255), 0, 255) / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def open_clip_to_transformers(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """open_clip `visual.*` keys -> transformers CLIPVisionModelWithProjection keys.

    Raises:
        ValueError: a `visual.` key that has no counterpart (e.g. a ModifiedResNet tower, which is not a ViT).
    """
    renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
               "attn.out_proj": "self_attn.out_proj"}
    fixed = {"visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
             "visual.class_embedding": "vision_model.embeddings.class_embedding",
             "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight"}
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if not key.startswith("visual."):
            continue
        if key in fixed:
            out[fixed[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key.startswith(("visual.ln_pre.", "visual.ln_post.")):
            name = "pre_layrnorm" if key.startswith("visual.ln_pre.") else "post_layernorm"
            out[f"vision_model.{name}.{key.rsplit('.', 1)[1]}"] = value
        elif key.startswith("visual.transformer.resblocks."):
            index, rest = key.removeprefix("visual.transformer.resblocks.").split(".", 1)
            base = f"vision_model.encoder.layers.{index}"
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight or bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}.self_attn.{name}.{kind}"] = part.contiguous()
                continue
            for old, new in renames.items():
                if rest.startswith(old + "."):
                    out[f"{base}.{new}{rest[len(old):]}"] = value
                    break
            else:
                raise ValueError(f"open_clip vision key {key!r} has no transformers counterpart")
        else:
            raise ValueError(f"open_clip vision key {key!r} has no transformers counterpart (only ViT towers load)")
    return out


def transformers_to_open_clip(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `open_clip_to_transformers` (writes files in open_clip's layout, e.g. for tests)."""
    back: dict[str, Tensor] = {}
    layers: dict[str, dict[str, Tensor]] = {}
    inverse = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    for key, value in tensors.items():
        if key == "visual_projection.weight":
            back["visual.proj"] = value.t().contiguous()
        elif key == "vision_model.embeddings.patch_embedding.weight":
            back["visual.conv1.weight"] = value
        elif key == "vision_model.embeddings.class_embedding":
            back["visual.class_embedding"] = value
        elif key == "vision_model.embeddings.position_embedding.weight":
            back["visual.positional_embedding"] = value
        elif key.startswith("vision_model.pre_layrnorm."):
            back["visual.ln_pre." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("vision_model.post_layernorm."):
            back["visual.ln_post." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("vision_model.encoder.layers."):
            index, rest = key.removeprefix("vision_model.encoder.layers.").split(".", 1)
            base = f"visual.transformer.resblocks.{index}"
            if rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                layers.setdefault(f"{base}.attn.in_proj_{rest.rsplit('.', 1)[1]}", {})[rest[10]] = value
                continue
            for new, old in inverse.items():
                if rest.startswith(new + "."):
                    back[f"{base}.{old}{rest[len(new):]}"] = value
                    break
    for key, parts in layers.items():
        back[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return back


def extract_vision_tensors(tensors: Mapping[str, Tensor], what: str) -> tuple[dict[str, Tensor], str]:
    """The vision tower's tensors in transformers' layout, and the layout found ("transformers" or "open_clip").

    Raises:
        ValueError: no vision tower under any known prefix (naming `what` and some keys found).
    """
    for prefix in PREFIXES:
        if f"{prefix}vision_model.embeddings.patch_embedding.weight" in tensors:
            found = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix + "vision_model.")
                     or k == prefix + "visual_projection.weight"}
            found.pop("vision_model.embeddings.position_ids", None)
            return found, "transformers"
        if f"{prefix}visual.conv1.weight" in tensors:
            visual = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix + "visual.")}
            return open_clip_to_transformers(visual), "open_clip"
    shown = ", ".join(sorted(tensors)[:5]) or "none"
    raise ValueError(f"{what}: no CLIP vision tower found (expected vision_model.* or visual.* keys, optionally "
                     f"under {', '.join(p for p in PREFIXES if p)}); found keys e.g. {shown}")


def vision_config(tensors: Mapping[str, Tensor], layout: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A CLIPVisionConfig read from the tensors' shapes (heads and activation from `overrides` or defaults)."""
    from transformers import CLIPVisionConfig

    patch = tensors["vision_model.embeddings.patch_embedding.weight"]
    hidden, channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    positions = int(tensors["vision_model.embeddings.position_embedding.weight"].shape[0])
    side = round((positions - 1) ** 0.5)
    layers = 1 + max(int(k.split(".")[3]) for k in tensors if k.startswith("vision_model.encoder.layers."))
    projection = tensors.get("visual_projection.weight")
    config: dict[str, Any] = dict(
        hidden_size=hidden, intermediate_size=int(tensors["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64), num_channels=channels,
        image_size=side * patch_size, patch_size=patch_size,
        projection_dim=int(projection.shape[0]) if projection is not None else hidden,
        hidden_act="gelu" if layout == "open_clip" else "quick_gelu", layer_norm_eps=1e-5,
    )
    if hidden in KNOWN_WIDTHS:
        config["num_attention_heads"], config["hidden_act"] = KNOWN_WIDTHS[hidden]
    config.update(overrides or {})
    return CLIPVisionConfig(**config)


def build_vision_model(tensors: Mapping[str, Tensor], what: str, overrides: Mapping[str, Any] | None = None,
                       ) -> torch.nn.Module:
    """A CLIPVisionModelWithProjection holding a file's vision tower (any layout, any known prefix)."""
    from transformers import CLIPVisionModelWithProjection

    found, layout = extract_vision_tensors(tensors, what)
    config = vision_config(found, layout, overrides)
    if "visual_projection.weight" not in found:  # a tower saved without its projection: identity, as ComfyUI
        found["visual_projection.weight"] = torch.eye(config.projection_dim, config.hidden_size)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(found), set(found) - expected
    if missing or unexpected:
        raise ValueError(f"{what}: the weights do not fit a CLIP vision tower ({layout} layout): missing "
                         f"{sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")
    model.load_state_dict({k: v.float() for k, v in found.items()}, strict=False, assign=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (position ids) are still on meta
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(
                leaf, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)
    model.requires_grad_(False)
    return model.eval()


def _file_overrides(metadata: Mapping[str, str] | None, what: str) -> dict[str, Any]:
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what}: {METADATA_KEY!r} metadata is not JSON: {error}") from error
    return dict(config.get("clip_vision", config))


def load_clip_vision(path: str | Path, *, manager: ModelManager) -> ClipVisionHandle:
    """CLIPVisionLoader: a handle whose tower the model manager loads (once per file identity)."""
    path = Path(path)
    what = f"CLIP vision file {path.name}"

    def load(device: str) -> torch.nn.Module:
        tensors, metadata = read_raw(path)
        if not isinstance(tensors, dict):
            raise ValueError(f"{what}: expected a dict of tensors, found {type(tensors).__name__}")
        tensors = {k: v for k, v in tensors.items() if isinstance(v, Tensor)}
        return build_vision_model(tensors, what, _file_overrides(metadata, what)).to(device)

    ref = manager.ref((file_signature(path), "clip_vision"), load, name=f"{path.name} CLIP vision")
    model = ref.get()
    return ClipVisionHandle(model_ref=ref, image_size=int(model.config.image_size), source=str(path))


@torch.no_grad()
def encode_image(model: torch.nn.Module, image: Tensor, *, crop: bool = True) -> ClipVisionOutput:
    """CLIPVisionEncode: preprocess an IMAGE batch for `model` and run it (ComfyUI's encode_image)."""
    size = int(model.config.image_size)
    parameter = next(model.parameters())
    pixels = preprocess(image, size, crop=crop).to(parameter.device, parameter.dtype)
    out = model(pixel_values=pixels, output_hidden_states=True)
    return ClipVisionOutput(
        image_embeds=out.image_embeds.float().cpu(),
        last_hidden_state=out.last_hidden_state.float().cpu(),
        penultimate_hidden_states=out.hidden_states[-2].float().cpu(),
    )
