"""Training and measuring the shipped 2x upscaler: a tiny SRVGGNetCompact (Real-ESRGAN's compact network,
Wang et al. 2021, https://arxiv.org/abs/2107.10833) on the procedural shapes.

Pairs are a render of a spec (data.py's streams, plain and striped) and its 2x2 area average (ComfyUI's "area"
downscale), the degradation the model learns to undo. Training sees random aligned crops, flips and transposes of a
fixed set of renders; the measurement uses whole held-out images (shape/colour combinations never trained on,
from the evaluation stream), against bicubic interpolation of the same inputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.shapes import render, render_striped
from nodes.sd.upscale_srvgg import SRVGGConfig, SRVGGNetCompact
from training.data import EVALUATION_STREAM, images_to_tensor, stream_specs

UPSCALER_STREAM = 8
"""The data stream the upscaler trains on (apart from the embedded model's and the adapters' streams)."""


@dataclass(frozen=True)
class UpscalerSettings:
    features: int = 32
    convolutions: int = 4
    low_resolution: int = 64
    images: int = 384
    """Distinct training renders (half plain, half striped)."""
    crop: int = 32
    """Low-resolution crop side; the target crop is twice that."""
    batch_size: int = 16
    steps: int = 1500
    learning_rate: float = 2e-3
    seed: int = 0

    def model_config(self) -> SRVGGConfig:
        return SRVGGConfig(features=self.features, convolutions=self.convolutions, scale=2, activation="prelu")


def pairs(stream: int, count: int, low_resolution: int, *, held_out: bool = False,
          run_seed: int = 0) -> tuple[Tensor, Tensor]:
    """(low, high) images of `count` specs of a stream, [N, 3, r, r] and [N, 3, 2r, 2r] in 0..1: the high one
    rendered (the second half of the specs striped), the low one its 2x2 area average."""
    specs = stream_specs(run_seed, stream, 0, count, held_out=held_out)
    highs = [(render_striped if index >= count // 2 else render)(spec, 2 * low_resolution)[0]
             for index, spec in enumerate(specs)]
    high = (images_to_tensor(highs) + 1) / 2
    return F.avg_pool2d(high, 2), high


def random_crops(low: Tensor, high: Tensor, size: int, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Aligned random crops (low side `size`) of random pairs, randomly flipped and transposed."""
    picks = torch.randint(0, low.shape[0], (batch,), generator=generator)
    offsets = torch.randint(0, low.shape[-1] - size + 1, (batch, 2), generator=generator)
    flips = torch.randint(0, 2, (batch, 3), generator=generator)
    lows, highs = [], []
    for pick, (y, x), (flip_y, flip_x, transpose) in zip(picks.tolist(), offsets.tolist(), flips.tolist()):
        a = low[pick, :, y:y + size, x:x + size]
        b = high[pick, :, 2 * y:2 * (y + size), 2 * x:2 * (x + size)]
        for do, dims in ((flip_y, (1,)), (flip_x, (2,))):
            if do:
                a, b = a.flip(dims), b.flip(dims)
        if transpose:
            a, b = a.transpose(1, 2), b.transpose(1, 2)
        lows.append(a)
        highs.append(b)
    return torch.stack(lows), torch.stack(highs)


def train_upscaler(settings: UpscalerSettings, *, log: Callable[[str], None] = print) -> SRVGGNetCompact:
    """Train the tiny 2x SRVGGNetCompact (mean squared error, Adam, cosine-decayed learning rate).

    Squared error, not the usual L1: nearly every pixel of a shapes image is flat, where the nearest-neighbour
    base is already exact, so the median that L1 seeks is a zero residual, and a tiny model trained with L1
    learns exactly that (measured: no better than nearest-neighbour); squared error weighs the edges."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    low, high = pairs(UPSCALER_STREAM, settings.images, settings.low_resolution, run_seed=settings.seed)
    model = SRVGGNetCompact(settings.model_config())
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / settings.steps, 1.0))))
    started = time.perf_counter()
    for step in range(1, settings.steps + 1):
        x, y = random_crops(low, high, settings.crop, settings.batch_size, generator)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == settings.steps:
            log(f"step {step}/{settings.steps} mse {loss.item():.5f} ({time.perf_counter() - started:.0f} s)")
    model.requires_grad_(False)
    return model.eval()


def psnr(prediction: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in 0..1, over the whole set (mean squared error pooled)."""
    mse = F.mse_loss(prediction.clamp(0, 1).double(), target.double()).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def bicubic_2x(low: Tensor) -> Tensor:
    """The baseline: bicubic interpolation (ComfyUI's ImageScale "bicubic"), clamped to 0..1."""
    return F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)


def evaluate_upscaler(model: torch.nn.Module, *, count: int = 64, low_resolution: int = 64) -> dict[str, float]:
    """PSNR of the model and of bicubic on `count` held-out shapes (half of them striped), in dB."""
    low, high = pairs(EVALUATION_STREAM, count, low_resolution, held_out=True)
    with torch.inference_mode():
        predicted = model(low).clamp(0, 1)
    return {"model_psnr_db": round(psnr(predicted, high), 3), "bicubic_psnr_db": round(psnr(bicubic_2x(low), high), 3),
            "images": count, "low_resolution": low_resolution}


def settings_record(settings: UpscalerSettings) -> dict[str, object]:
    return asdict(settings)

