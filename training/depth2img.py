"""The embedded model's depth-to-image UNet (SD2-depth layout): the shape is drawn where a depth map says.

Stability's SD2-depth model is the text-to-image UNet with one more input channel, the depth map (from a
MiDaS/DPT estimator) resized to the latent and min-max normalised to -1..1, fine-tuned with the new weights
starting at zero. Here the depth map is the shapes generator's exact height field of the shape
(`nodes.sd.depth.height_field`), and the captions are the base model's, a share dropped so the depth map
alone places the shape and CFG has its unconditional prediction.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from nodes.sd.depth import depth_to_latent, height_field
from nodes.sd.shapes import ShapeSpec, caption, render
from training import data
from training.adapters import base_modules, caption_tokens, encode_items
from training.concat_unet import ConcatInput, train_and_write_unet_only, widen_conv_in
from training.config import UnetSettings
from training.ema import EMA
from training.loop import Phase, PhaseResult
from training.unet import alphas_cumprod, diffusion_loss

DEPTH_STREAM = 21
"""Data stream of the depth model's images (kept apart from every other model's images)."""
IN_CHANNELS = 5
LATENT_FACTOR = 8


def spec_depth(spec: ShapeSpec, resolution: int) -> torch.Tensor:
    """The depth map of a spec at `resolution` pixels, [H, W] in 0..1 (the height field of its mask)."""
    mask = np.asarray(render(spec, resolution)[1], dtype=np.float32) >= 128
    return torch.from_numpy(height_field(mask))


@dataclass(frozen=True)
class DepthSettings:
    seed: int = 0
    batch_size: int = 16
    dataset_size: int = 2048
    caption_dropout: float = 0.1
    lr: float = 2e-4
    warmup: int = 50
    min_lr_fraction: float = 0.1
    ema: float = 0.995
    input_gain: float = 10.0
    """Training multiplies the extra input by this (see training.concat_unet.ConcatInput); folded in at export."""
    steps: int = 6000
    resolution: int = 128

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def depth_phase(settings: DepthSettings, run_dir: Path, checkpoint: str | Path, device: str, progress: bool) -> Phase:
    from training.pipeline import step_generator

    unet, text_encoder, vae = base_modules(checkpoint, device)
    specs = data.stream_specs(settings.seed, DEPTH_STREAM, 0, settings.dataset_size)
    cache = run_dir / "depth_latents.safetensors"
    encode_items([(spec, False) for spec in specs], vae, cache, settings.resolution, progress)
    latents = load_file(str(cache))["latents"]
    side = settings.resolution // LATENT_FACTOR
    depths = depth_to_latent(torch.stack([spec_depth(s, settings.resolution) for s in specs]), side, side)
    text_encoder.requires_grad_(False)
    widen_conv_in(unet, IN_CHANNELS)
    unet.requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas, loss_settings = alphas_cumprod(), UnetSettings()

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(settings.seed, DEPTH_STREAM, step)
        rows = torch.randint(0, len(specs), (settings.batch_size,), generator=generator).tolist()
        rng = random.Random(data.data_seed(settings.seed, DEPTH_STREAM, 2**31 + step))
        texts = [caption(data.caption_variant(specs[row], rng)) for row in rows]
        texts = ["" if rng.random() < settings.caption_dropout else text for text in texts]
        with torch.no_grad():
            states = text_encoder(caption_tokens(texts, device)).last_hidden_state
        model = ConcatInput(unet, depths[rows].to(device) * settings.input_gain)
        loss = diffusion_loss(model, states, latents[rows].to(device), loss_settings, generator, alphas)  # type: ignore[arg-type]
        return loss, {}

    return Phase(
        name="depth2img", modules={"unet": unet}, emas={"unet": EMA(unet, settings.ema)}, optimizer=optimizer,
        loss_at=loss_at, peak_lr=settings.lr, warmup=settings.warmup, min_lr_fraction=settings.min_lr_fraction,
        settings=settings.to_json(),
    )  # fmt: skip


def train_depth(
    settings: DepthSettings,
    run_dir: str | Path,
    checkpoint: str | Path,
    output: str | Path | None,
    *,
    seconds: float | None,
    dtype: str = "fp8",
    device: str = "cpu",
    progress: bool = True,
    metadata: dict[str, str] | None = None,
) -> PhaseResult:
    """Train (or resume) the depth UNet; when complete, write its EMA weights as a UNet-only file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    phase = depth_phase(settings, run_dir, checkpoint, device, progress)
    return train_and_write_unet_only(phase, settings, run_dir, checkpoint, output, kind="depth2img", seconds=seconds,
                                     dtype=dtype, progress=progress, metadata=metadata)
