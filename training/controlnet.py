"""The embedded model's outline ControlNet: the shape is drawn where a white outline on black says.

A diffusers `ControlNetModel` is made from the shipped UNet's encoder (`from_unet`, zero convolutions at
zero, as in Zhang et al. 2023), trained with the UNet and text encoder frozen on the shapes generator's
own ground truth (`render`'s 1-2 px edge map of the shape), and written in the original LDM layout
(`control_model.*`) that ComfyUI and A1111 read. A share of captions is dropped so the outline alone
must place the shape, as in the paper's training.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from nodes.sd.shapes import caption, render
from training import data
from training.adapters import base_modules, caption_tokens, encode_items, train_and_write
from training.config import UnetSettings
from training.ema import EMA
from training.loop import Phase, PhaseResult
from training.unet import alphas_cumprod, diffusion_loss


@dataclass(frozen=True)
class ControlSettings:
    seed: int = 0
    hint_channels: tuple[int, ...] = (16, 32, 64, 128)
    """The hint encoder's conv widths (three stride-2 steps: 128 px outline -> 16 x 16 latent)."""
    batch_size: int = 16
    dataset_size: int = 4096
    caption_dropout: float = 0.3
    lr: float = 3e-4
    warmup: int = 50
    min_lr_fraction: float = 0.1
    ema: float = 0.995
    steps: int = 6000
    resolution: int = 128

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def outline(spec: data.ShapeSpec, resolution: int) -> torch.Tensor:
    """The control image of a spec: its white 1-2 px outline on black, [3, H, W] in 0..1 (a hint as nodes pass it)."""
    edges = np.asarray(render(spec, resolution)[2], dtype=np.float32) / 255.0
    return torch.from_numpy(edges)[None].expand(3, -1, -1)


def controlnet_phase(settings: ControlSettings, run_dir: Path, checkpoint: str | Path, device: str, progress: bool) -> Phase:
    from diffusers import ControlNetModel

    from training.pipeline import step_generator

    unet, text_encoder, vae = base_modules(checkpoint, device)
    specs = data.stream_specs(settings.seed, data.CONTROL_STREAM, 0, settings.dataset_size)
    cache = run_dir / "control_latents.safetensors"
    encode_items([(spec, False) for spec in specs], vae, cache, settings.resolution, progress)
    latents = load_file(str(cache))["latents"]
    for module in (unet, text_encoder):
        module.requires_grad_(False)
    torch.manual_seed(settings.seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=settings.hint_channels).to(device)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas, loss_settings = alphas_cumprod(), UnetSettings()

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(settings.seed, data.CONTROL_STREAM, step)
        rows = torch.randint(0, len(specs), (settings.batch_size,), generator=generator).tolist()
        rng = random.Random(data.data_seed(settings.seed, data.CONTROL_STREAM, 2**31 + step))
        captions = [caption(data.caption_variant(specs[row], rng)) for row in rows]
        captions = ["" if rng.random() < settings.caption_dropout else text for text in captions]
        hints = torch.stack([outline(specs[row], settings.resolution) for row in rows]).to(device)
        with torch.no_grad():
            states = text_encoder(caption_tokens(captions, device)).last_hidden_state

        def residuals(noisy: torch.Tensor, timesteps: torch.Tensor) -> dict:
            down, mid = controlnet(noisy, timesteps, encoder_hidden_states=states, controlnet_cond=hints,
                                   return_dict=False)  # fmt: skip
            return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

        loss = diffusion_loss(unet, states, latents[rows].to(device), loss_settings, generator, alphas, residuals)
        return loss, {}

    return Phase(
        name="controlnet", modules={"controlnet": controlnet}, emas={"controlnet": EMA(controlnet, settings.ema)},
        optimizer=optimizer, loss_at=loss_at, peak_lr=settings.lr, warmup=settings.warmup,
        min_lr_fraction=settings.min_lr_fraction, settings=settings.to_json(),
    )  # fmt: skip


def train_controlnet(
    settings: ControlSettings,
    run_dir: str | Path,
    checkpoint: str | Path,
    output: str | Path | None,
    *,
    seconds: float | None,
    device: str = "cpu",
    progress: bool = True,
    metadata: dict[str, str] | None = None,
) -> PhaseResult:
    """Train (or resume) the outline ControlNet; when complete, write its EMA weights (fp16, LDM layout)."""
    from nodes.sd.loading.export import save_controlnet_ldm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    phase = controlnet_phase(settings, run_dir, checkpoint, device, progress)

    def write(path: Path) -> None:
        save_controlnet_ldm(copy.deepcopy(phase.modules["controlnet"]).cpu().half(), path, metadata=metadata)

    return train_and_write(phase, run_dir / "controlnet.safetensors", steps=settings.steps, seconds=seconds,
                           progress=progress, output=output, write=write)  # fmt: skip
