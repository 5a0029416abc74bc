"""The embedded model's InstructPix2Pix: edits a shapes image as a written instruction says.

Brooks et al. 2023 ("InstructPix2Pix: Learning to Follow Image Editing Instructions") fine-tune a text-to-image
UNet on (input image, instruction, edited image) triples: the input image's (unscaled) latent is stacked onto
the noisy latent through 4 new, zero-initialised input channels, and the instruction is the text
conditioning. Here the triples come straight from the shapes generator, so every edit is exact:

- colour: "make the circle green" (the shape's colour changes, nothing else),
- shape: "turn the square into a triangle" (same place, size, rotation and colours),
- background: "make the background yellow".

As in the paper, 5 % of examples drop the instruction, 5 % the image, and 5 % both, so one model gives the
two unconditional predictions its image and text guidance scales need (DualCFGGuider at sampling). The text
encoder and VAE stay the embedded model's (frozen); the words "make", "turn" and "into" have zero embeddings
there (they never occur in captions), so the instruction's kind shows in its word order and the other words.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from nodes.sd.shapes import COLOURS, SHAPES, ShapeSpec
from training import data
from training.adapters import base_modules, caption_tokens, encode_items
from training.concat_unet import ConcatInput, train_and_write_unet_only, widen_conv_in
from training.config import UnetSettings
from training.ema import EMA
from training.loop import Phase, PhaseResult
from training.unet import alphas_cumprod, diffusion_loss

IP2P_STREAM = 20
"""Data stream of the InstructPix2Pix triples (kept apart from every other model's images)."""
EDIT_KINDS = ("colour", "shape", "background")
IN_CHANNELS = 8


@dataclass(frozen=True)
class Edit:
    """One training or evaluation triple: `source` edited into `target` by `instruction`."""

    kind: str
    source: ShapeSpec
    target: ShapeSpec
    instruction: str


def make_edit(source: ShapeSpec, kind: str, rng: random.Random) -> Edit:
    """A random edit of a kind ('colour', 'shape' or 'background') applied to `source`."""
    if kind == "colour":
        colour = rng.choice([c for c in COLOURS if c not in (source.fg, source.bg)])
        return Edit(kind, source, replace(source, fg=colour), f"make the {source.shape} {colour}")
    if kind == "shape":
        shape = rng.choice([s for s in SHAPES if s != source.shape])
        return Edit(kind, source, replace(source, shape=shape), f"turn the {source.shape} into a {shape}")
    if kind == "background":
        colour = rng.choice([c for c in COLOURS if c not in (source.fg, source.bg)])
        return Edit(kind, source, replace(source, bg=colour), f"make the background {colour}")
    raise ValueError(f"unknown edit kind {kind!r} (one of {', '.join(EDIT_KINDS)})")


def edit_for(run_seed: int, stream: int, index: int) -> Edit:
    """Triple `index` of a stream: a fresh spec and an edit kind cycling colour, shape, background."""
    seed = data.data_seed(run_seed, stream, index)
    source = data.spec_from_seed(seed)
    return make_edit(source, EDIT_KINDS[index % len(EDIT_KINDS)], random.Random(seed ^ 0x5EED))


@dataclass(frozen=True)
class Pix2PixSettings:
    seed: int = 0
    batch_size: int = 16
    dataset_size: int = 1536
    drop_text: float = 0.05
    drop_image: float = 0.05
    drop_both: float = 0.05
    lr: float = 2e-4
    warmup: int = 50
    min_lr_fraction: float = 0.1
    ema: float = 0.995
    input_gain: float = 4.0
    """Training multiplies the extra input by this (see training.concat_unet.ConcatInput); folded in at export."""
    steps: int = 6000
    resolution: int = 128

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def pix2pix_phase(settings: Pix2PixSettings, run_dir: Path, checkpoint: str | Path, device: str, progress: bool) -> Phase:
    from training.pipeline import step_generator

    unet, text_encoder, vae = base_modules(checkpoint, device)
    edits = [edit_for(settings.seed, IP2P_STREAM, i) for i in range(settings.dataset_size)]
    cache = run_dir / "pix2pix_latents.safetensors"
    encode_items([(e.source, False) for e in edits] + [(e.target, False) for e in edits], vae, cache,
                 settings.resolution, progress)
    latents = load_file(str(cache))["latents"]
    sources, targets = latents[: len(edits)], latents[len(edits) :]
    scaling = float(vae.config.scaling_factor)
    text_encoder.requires_grad_(False)
    widen_conv_in(unet, IN_CHANNELS)
    unet.requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas, loss_settings = alphas_cumprod(), UnetSettings()

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(settings.seed, IP2P_STREAM, step)
        rows = torch.randint(0, len(edits), (settings.batch_size,), generator=generator).tolist()
        rng = random.Random(data.data_seed(settings.seed, IP2P_STREAM, 2**31 + step))
        texts, keep_image = [], []
        for row in rows:
            draw = rng.random()
            both = draw < settings.drop_both
            no_text = both or draw < settings.drop_both + settings.drop_text
            no_image = both or (not no_text and draw < settings.drop_both + settings.drop_text + settings.drop_image)
            texts.append("" if no_text else edits[row].instruction)
            keep_image.append(0.0 if no_image else 1.0)
        image = sources[rows] / scaling * torch.tensor(keep_image).view(-1, 1, 1, 1)  # unscaled, as in the paper
        with torch.no_grad():
            states = text_encoder(caption_tokens(texts, device)).last_hidden_state
        model = ConcatInput(unet, image.to(device) * settings.input_gain)
        loss = diffusion_loss(model, states, targets[rows].to(device), loss_settings, generator, alphas)  # type: ignore[arg-type]
        return loss, {}

    return Phase(
        name="instruct_pix2pix", modules={"unet": unet}, emas={"unet": EMA(unet, settings.ema)}, optimizer=optimizer,
        loss_at=loss_at, peak_lr=settings.lr, warmup=settings.warmup, min_lr_fraction=settings.min_lr_fraction,
        settings=settings.to_json(),
    )  # fmt: skip


def train_pix2pix(
    settings: Pix2PixSettings,
    run_dir: str | Path,
    checkpoint: str | Path,
    output: str | Path | None,
    *,
    seconds: float | None,
    dtype: str = "fp16",
    device: str = "cpu",
    progress: bool = True,
    metadata: dict[str, str] | None = None,
) -> PhaseResult:
    """Train (or resume) the InstructPix2Pix UNet; when complete, write its EMA weights as a UNet-only file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    phase = pix2pix_phase(settings, run_dir, checkpoint, device, progress)
    return train_and_write_unet_only(phase, settings, run_dir, checkpoint, output, kind="instruct_pix2pix", seconds=seconds,
                                     dtype=dtype, progress=progress, metadata=metadata)
