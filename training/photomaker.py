"""A tiny PhotoMaker ID encoder for the embedded model (Li et al. 2023, arXiv:2312.04461), on the shapes data.

PhotoMaker's "identity" is a person's face, learnt from many photos per person; here it is what a set of
reference renders share: the shape and its colour (their size, place, rotation and background vary). The ID
encoder is the shipped tiny CLIP vision tower (frozen; scripts/train_clip_vision.py) with two new projections and
the fuse module (nodes/sd/photomaker.py), trained through the frozen embedded UNet and text encoder:

- prompt: "a photograph of shape photomaker on a <bg> background"; PhotoMakerEncode's prompt handling drops the
  trigger word and repeats "shape" once per reference image (1-4), and the fused embeddings replace those copies;
- target: a render of the references' shape and colour on <bg>, at its own size and place; loss: the UNet's
  noise loss on its latent (x0-weighted at t >= min_timestep, where the picture's layout is decided).

The two projections start from the tower's contrastive projection (its first and second halves), whose output
already sits near the text encoder's caption embeddings, so the fuse module starts from a useful signal.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from nodes.sd import clip_vision as cv
from nodes.sd.photomaker import FuseModule, PhotoMakerIDEncoder, class_token_states
from nodes.sd.shapes import COLOURS, SHAPES, ShapeSpec
from training import data
from training.adapters import encode_items
from training.clip_vision import images_of
from training.gligen import layout_loss
from training.unet import alphas_cumprod

PHOTOMAKER_STREAM = 23
"""Target renders (apart from the other models' streams)."""
REFERENCE_STREAM = 24
"""Reference renders: drawn until each (shape, colour) has `references` of them."""
PROMPT = "a photograph of shape photomaker on a {bg} background"
"""The training (and evaluation) prompt; "shape" is the class word."""
MAX_IMAGES = 4


@dataclass(frozen=True)
class PhotoMakerSettings:
    seed: int = 0
    targets: int = 1024
    references: int = 12
    """Reference renders per (shape, foreground colour)."""
    batch_size: int = 16
    lr: float = 1e-3
    seconds: float = 900.0
    max_steps: int = 3000
    min_timestep: int = 200
    resolution: int = 128


def reference_pool(settings: PhotoMakerSettings, seed: int | None = None) -> dict[tuple[str, str], list[ShapeSpec]]:
    """`references` specs per (shape, fg): fresh renders of the reference stream, any background."""
    pool: dict[tuple[str, str], list[ShapeSpec]] = {(s, c): [] for s in SHAPES for c in COLOURS}
    index = 0
    while any(len(v) < settings.references for v in pool.values()):
        spec = data.spec_from_seed(data.data_seed(settings.seed if seed is None else seed, REFERENCE_STREAM, index))
        index += 1
        if len(pool[(spec.shape, spec.fg)]) < settings.references:
            pool[(spec.shape, spec.fg)].append(spec)
    return pool


def new_id_encoder(tower: nn.Module, text_width: int) -> PhotoMakerIDEncoder:
    """The shipped tower with two half-width projections (from its own projection's halves) and a new fuse."""
    hidden = int(tower.config.hidden_size)
    first = text_width // 2
    full = tower.visual_projection.weight.detach()
    if full.shape[0] < text_width:
        raise ValueError(f"the tower's projection is {full.shape[0]} wide, less than the text width {text_width}")
    projection_1 = nn.Linear(hidden, first, bias=False)
    projection_2 = nn.Linear(hidden, text_width - first, bias=False)
    with torch.no_grad():
        projection_1.weight.copy_(full[:first])
        projection_2.weight.copy_(full[first:text_width])
    tower.visual_projection = projection_1
    return PhotoMakerIDEncoder(tower, projection_2, FuseModule(text_width))


def trainable(model: PhotoMakerIDEncoder) -> list[nn.Parameter]:
    return [*model.visual_projection.parameters(), *model.visual_projection_2.parameters(),
            *model.fuse_module.parameters()]


def fused_states(model: PhotoMakerIDEncoder, prompts: dict[tuple[str, int], tuple[torch.Tensor, list[int]]],
                 features: list[torch.Tensor], bgs: list[str]) -> torch.Tensor:
    """Text states [B, 77, d] for each row: the prompt for its background with its references' IDs fused in."""
    rows = []
    for pooled, bg in zip(features, bgs):
        states, positions = prompts[(bg, pooled.shape[0])]
        ids = torch.cat([model.visual_projection(pooled), model.visual_projection_2(pooled)], dim=-1)
        rows.append(model.fuse(states, positions, ids)[0])
    return torch.stack(rows)


def train_photomaker(settings: PhotoMakerSettings, loaded, tower: nn.Module, work_dir: str | Path, *,
                     log=print) -> tuple[PhotoMakerIDEncoder, dict]:
    """Train for `settings.seconds` (or max_steps); returns the ID encoder (eval, frozen) and a record."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    unet = loaded.model.unet.float().eval().requires_grad_(False)
    vae = loaded.vae.vae.float().eval().requires_grad_(False)
    text_width = int(loaded.clip.encoders[0].config.hidden_size)
    specs = data.stream_specs(settings.seed, PHOTOMAKER_STREAM, 0, settings.targets)
    cache = work_dir / f"photomaker_latents_{settings.targets}.safetensors"
    encode_items([(spec, False) for spec in specs], vae, cache, settings.resolution, progress=False)
    latents = load_file(str(cache))["latents"]
    torch.manual_seed(settings.seed)
    model = new_id_encoder(tower, text_width)
    model.requires_grad_(False)
    params = trainable(model)
    for param in params:
        param.requires_grad_(True)
    pool = reference_pool(settings)
    with torch.no_grad():
        pooled = {key: model.vision_model(pixel_values=cv.preprocess(images_of(refs, settings.resolution),
                                                                      model.image_size)).pooler_output
                  for key, refs in pool.items()}
        prompts = {}
        for bg in COLOURS:
            for n in range(1, MAX_IMAGES + 1):
                item, positions = class_token_states(loaded.clip, PROMPT.format(bg=bg), n)
                prompts[(bg, n)] = (item.embeds, positions)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas = alphas_cumprod()
    rng = random.Random(settings.seed)
    started, losses, step = time.perf_counter(), [], 0
    while step < settings.max_steps and time.perf_counter() - started < settings.seconds:
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + step)
        rows = [rng.randrange(len(specs)) for _ in range(settings.batch_size)]
        features = []
        for r in rows:
            refs = pooled[(specs[r].shape, specs[r].fg)]
            features.append(refs[rng.sample(range(refs.shape[0]), rng.randint(1, MAX_IMAGES))])
        states = fused_states(model, prompts, features, [specs[r].bg for r in rows])
        loss = layout_loss(unet, states, latents[rows], generator, alphas, settings.min_timestep)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log(f"step {step} loss {sum(losses[-50:]) / 50:.4f} ({time.perf_counter() - started:.0f} s)")
    seconds = time.perf_counter() - started
    record = {"settings": asdict(settings), "steps": step, "train_seconds": round(seconds, 1),
              "final_loss": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 4),
              "first_loss": round(sum(losses[:50]) / max(1, len(losses[:50])), 4)}
    model.requires_grad_(False)
    return model.eval(), record


def file_state_dict(model: PhotoMakerIDEncoder) -> dict[str, torch.Tensor]:
    """The ID encoder under the released file's names (`id_encoder.*`), fp16."""
    return {f"id_encoder.{k}": v.detach().half().contiguous() for k, v in model.state_dict().items()
            if not k.endswith("position_ids")}
