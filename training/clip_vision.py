"""Training and measuring the shipped tiny CLIP vision tower and its style model on the procedural shapes.

The tower (transformers' CLIPVisionModelWithProjection, 48 px input, 8 px patches) learns CLIP's contrastive task
(Radford et al. 2021) against a frozen text side: the embedded model's own text encoder's pooled embeddings of
every caption the generator can write (colour, shape, background: 450 captions). Each image's logits are the
cosine similarities of its image embedding with all caption embeddings over a learned temperature, trained with
cross-entropy toward its own caption, so image embeddings land where the embedded model's captions are.

The style model (T2I-Adapter's style adapter, nodes/sd/style_model.py) learns at the same time to turn the
tower's tokens into the embedded text encoder's hidden states of the image's caption words (positions 1-8 of
"a red circle on a blue background": the words and the end token), by mean squared error. Appended to a
prompt's conditioning (StyleModelApply), those tokens ask the UNet for what the reference image shows.

Images are rendered at the embedded model's 128 px and go through ComfyUI's CLIP preprocessing
(nodes/sd/clip_vision.preprocess), as CLIPVisionEncode does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.clip_vision import preprocess
from nodes.sd.shapes import COLOURS, SHAPES, ShapeSpec, caption, render
from nodes.sd.style_model import StyleAdapter, StyleAdapterConfig
from training.data import EVALUATION_STREAM, stream_specs, token_window

CLIP_VISION_STREAM = 9
"""The data stream the tower trains on (apart from the other models' streams)."""
STYLE_POSITIONS = slice(1, 9)
"""Which caption token positions the style tokens learn: the caption's words and its end token."""


@dataclass(frozen=True)
class ClipVisionSettings:
    image_size: int = 48
    patch_size: int = 8
    hidden: int = 64
    layers: int = 3
    heads: int = 2
    intermediate: int = 256
    style_layers: int = 1
    style_heads: int = 2
    images: int = 4096
    render_resolution: int = 128
    batch_size: int = 64
    steps: int = 2400
    learning_rate: float = 2e-3
    style_weight: float = 4.0
    seed: int = 0

    def vision_config(self, projection_dim: int):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(hidden_size=self.hidden, intermediate_size=self.intermediate,
                                num_hidden_layers=self.layers, num_attention_heads=self.heads, image_size=self.image_size,
                                patch_size=self.patch_size, projection_dim=projection_dim, hidden_act="quick_gelu")

    def style_config(self, context_dim: int) -> StyleAdapterConfig:
        return StyleAdapterConfig(width=self.hidden, context_dim=context_dim, heads=self.style_heads,
                                  layers=self.style_layers, tokens=STYLE_POSITIONS.stop - STYLE_POSITIONS.start)


def plain(spec: ShapeSpec) -> ShapeSpec:
    """The spec with its caption naming only colour, shape and background."""
    return replace(spec, mention_size=False, mention_position=False)


def all_captions() -> list[str]:
    """Every caption naming colour, shape and background (the contrastive task's classes)."""
    base = stream_specs(0, EVALUATION_STREAM, 0, 1)[0]
    out = []
    for fg in COLOURS:
        for shape in SHAPES:
            for bg in COLOURS:
                if fg != bg:
                    out.append(caption(plain(replace(base, shape=shape, fg=fg, bg=bg))))
    return out


@torch.no_grad()
def text_targets(encoder: torch.nn.Module, captions: list[str]) -> tuple[Tensor, Tensor]:
    """(pooled [N, dim], word hidden states [N, 8, dim]) of captions from the embedded text encoder (SD1's final
    layer, after its final norm: what CLIPTextEncode gives the UNet)."""
    ids = torch.tensor([token_window(text) for text in captions])
    out = encoder(input_ids=ids)
    return out.pooler_output.float(), out.last_hidden_state[:, STYLE_POSITIONS].float()


def images_of(specs: list[ShapeSpec], resolution: int) -> Tensor:
    """IMAGE [B, H, W, 3] in 0..1 of specs."""
    return torch.from_numpy(np.stack([np.asarray(render(s, resolution)[0], dtype=np.float32) / 255 for s in specs]))


@lru_cache(maxsize=1)
def caption_index() -> dict[str, int]:
    return {text: index for index, text in enumerate(all_captions())}


def dataset(specs: list[ShapeSpec], settings: ClipVisionSettings) -> tuple[Tensor, Tensor]:
    """(preprocessed pixels [N, 3, s, s], caption class [N]) of specs, rendered in chunks."""
    pixels, labels = [], []
    for start in range(0, len(specs), 256):
        chunk = specs[start : start + 256]
        pixels.append(preprocess(images_of(chunk, settings.render_resolution), settings.image_size))
        labels += [caption_index()[caption(plain(s))] for s in chunk]
    return torch.cat(pixels), torch.tensor(labels)


def train_clip_vision(encoder: torch.nn.Module, settings: ClipVisionSettings, *, log=print):
    """Train the tower and the style model; returns (tower, style model), both in eval mode."""
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(settings.seed)
    pooled, words = text_targets(encoder, all_captions())
    tower = CLIPVisionModelWithProjection(settings.vision_config(pooled.shape[-1]))
    style = StyleAdapter(settings.style_config(words.shape[-1]))
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    pixels, labels = dataset(stream_specs(settings.seed, CLIP_VISION_STREAM, 0, settings.images), settings)
    text = F.normalize(pooled, dim=-1)
    params = [*tower.parameters(), *style.parameters(), logit_scale]
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(settings.seed)
    for step in range(settings.steps):
        lr = settings.learning_rate * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        pick = torch.randint(0, len(labels), (settings.batch_size,), generator=generator)
        batch = pixels[pick]
        if torch.rand((), generator=generator) < 0.5:  # shapes are symmetric enough; colours are what matters
            batch = batch.flip(-1)
        out = tower(pixel_values=batch)
        logits = F.normalize(out.image_embeds, dim=-1) @ text.t() * logit_scale.exp().clamp(max=100)
        contrastive = F.cross_entropy(logits, labels[pick])
        style_loss = F.mse_loss(style(out.last_hidden_state), words[labels[pick]])
        loss = contrastive + settings.style_weight * style_loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 250 == 0 or step == settings.steps - 1:
            log(f"step {step}: contrastive {contrastive.item():.3f} style {style_loss.item():.4f} lr {lr:.2e}")
    return tower.eval().requires_grad_(False), style.eval().requires_grad_(False)


@torch.no_grad()
def retrieval(tower: torch.nn.Module, encoder: torch.nn.Module, settings: ClipVisionSettings, *, count: int = 512,
              held_out: bool = False) -> dict[str, float]:
    """Top-1 caption retrieval over all 450 captions on fresh images (of held-out combinations if `held_out`), and
    how often the retrieved caption names the right colour, shape and background."""
    specs = stream_specs(settings.seed, EVALUATION_STREAM, 0, count, held_out=held_out)
    pixels, labels = dataset(specs, settings)
    text = F.normalize(text_targets(encoder, all_captions())[0], dim=-1)
    best = (F.normalize(tower(pixel_values=pixels).image_embeds, dim=-1) @ text.t()).argmax(-1)
    captions = all_captions()
    hits = {"caption": 0, "fg": 0, "shape": 0, "bg": 0}
    for spec, found, label in zip(specs, best.tolist(), labels.tolist()):
        words = captions[found].split()
        hits["caption"] += found == label
        hits["fg"] += spec.fg in words[:3]
        hits["shape"] += spec.shape in words
        hits["bg"] += words[-2] == spec.bg
    return {f"{key}_accuracy": round(value / count, 4) for key, value in hits.items()}


def settings_record(settings: ClipVisionSettings) -> dict:
    return asdict(settings)
