"""The embedded model's training run as resumable stages: VAE, latent cache, UNet + text encoder, export.

Each stage leaves a file in the run folder and is skipped when that file says it is complete, so one
command can be re-run across sessions until the model is finished:

    vae.safetensors      VAE phase checkpoint (weights, EMA, AdamW, RNG, step)
    latents.safetensors  the folded (centred) EMA VAE, its latent statistics and the cached dataset latents
    unet.safetensors     UNet + text encoder phase checkpoint
    decoder.safetensors  decoder fine-tuning phase checkpoint (`training.decoder`)
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from training import data
from training.checkpointing import read_state, read_tensors
from training.config import SD1_SCALING_FACTOR, RunSettings
from training.ema import EMA
from training.loop import Phase, PhaseResult, run_phase
from training.unet import alphas_cumprod, build_text_encoder, build_unet, diffusion_loss
from training.vae import build_vae, encode_means, fold_latent_statistics, latent_statistics, reconstruction_l1, vae_loss

VALIDATION_IMAGES = 64
ENCODE_CHUNK = 256


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def vae(self) -> Path:
        return self.root / "vae.safetensors"

    @property
    def latents(self) -> Path:
        return self.root / "latents.safetensors"

    @property
    def unet(self) -> Path:
        return self.root / "unet.safetensors"

    @property
    def decoder(self) -> Path:
        return self.root / "decoder.safetensors"

    @property
    def settings(self) -> Path:
        return self.root / "settings.json"


def pick_device(requested: str | None = None) -> str:
    """CUDA when available (or asked for), else the CPU."""
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; on the CPU fp32 (bf16 matmuls there are slower and less exact)."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_generator(run_seed: int, stream: int, step: int) -> torch.Generator:
    """A CPU generator seeded by the step: the noise of a step never depends on what ran before."""
    return torch.Generator().manual_seed(data.data_seed(run_seed, stream, step))


def validation_images(settings: RunSettings) -> torch.Tensor:
    """Renders never trained on: half of them from held-out combinations."""
    half = VALIDATION_IMAGES // 2
    specs = data.stream_specs(settings.seed, data.VALIDATION_STREAM, 0, half)
    specs += data.stream_specs(settings.seed, data.VALIDATION_STREAM, half, half, held_out=True)
    return data.render_specs(specs, settings.resolution)


def vae_phase(settings: RunSettings, device: str) -> Phase:
    vs = settings.vae
    torch.manual_seed(settings.seed)
    vae = build_vae(vs, settings.resolution).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=vs.lr, betas=(0.9, 0.99), weight_decay=0.01)
    stride = max(vs.batch_size, vs.full_batch_size)
    full_cost = 1.2 * (vs.full_batch_size * settings.resolution**2) / (vs.batch_size * vs.crop**2)

    def cropped(step: int, total: int) -> bool:
        return step < vs.crop_fraction * total

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        crop = cropped(step, total)
        generator = step_generator(settings.seed, data.NOISE_STREAM, step)
        batch = data.vae_batch(settings.seed, step * stride, vs.batch_size if crop else vs.full_batch_size,
                               settings.resolution, vs.crop if crop else None, generator)  # fmt: skip
        with autocast(device):
            return vae_loss(vae, batch.to(device), vs, generator)

    return Phase(
        name="vae", modules={"vae": vae}, emas={"vae": EMA(vae, vs.ema)}, optimizer=optimizer, loss_at=loss_at,
        peak_lr=vs.lr, warmup=vs.warmup, min_lr_fraction=vs.min_lr_fraction,
        settings={"seed": settings.seed, "resolution": settings.resolution, **settings.to_json()["vae"]},
        relative_cost=lambda step, total: 1.0 if cropped(step, total) else full_cost,
    )  # fmt: skip


def train_vae(
    settings: RunSettings, paths: RunPaths, device: str, seconds: float | None, progress: bool
) -> PhaseResult:
    """Train (or continue training) the VAE; at most `seconds` of wall-clock in this session."""
    phase = vae_phase(settings, device)
    return run_phase(phase, paths.vae, total_steps=settings.vae.steps, seconds=seconds, progress=progress)


def ema_vae(settings: RunSettings, paths: RunPaths, device: str) -> torch.nn.Module:
    """The VAE with its EMA weights from the phase checkpoint."""
    vae = build_vae(settings.vae, settings.resolution)
    weights = read_tensors(paths.vae, "model/vae/")
    weights.update(read_tensors(paths.vae, "ema/vae/"))
    vae.load_state_dict(weights)
    return vae.to(device).eval()


def encode_dataset(settings: RunSettings, paths: RunPaths, device: str, progress: bool) -> dict[str, Any]:
    """Fold the latent statistics into the EMA VAE and cache the UNet's dataset as scaled latents."""
    started = time.perf_counter()
    vae = ema_vae(settings, paths, device)
    validation = validation_images(settings).to(device)
    l1_before = reconstruction_l1(vae, validation)
    seeds = data.dataset_seeds(settings.seed, settings.unet.dataset_size)
    chunks = []
    for start in tqdm(range(0, len(seeds), ENCODE_CHUNK), desc="encode", disable=not progress, dynamic_ncols=True):
        specs = [data.spec_from_seed(int(s)) for s in seeds[start : start + ENCODE_CHUNK]]
        with autocast(device):
            chunks.append(encode_means(vae, data.render_specs(specs, settings.resolution).to(device)).float().cpu())
    raw = torch.cat(chunks)
    mean, std = latent_statistics(raw)
    scale = fold_latent_statistics(vae, mean.to(device), std.to(device)).cpu()
    latents = ((raw - mean.float().view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)) * SD1_SCALING_FACTOR
    record = {
        "raw_mean": mean.tolist(), "raw_std": std.tolist(), "fold_scale": scale.tolist(),
        "scaled_mean": latents.mean(dim=(0, 2, 3)).tolist(), "scaled_std": latents.std(dim=(0, 2, 3)).tolist(),
        "validation_l1": l1_before, "validation_l1_folded": reconstruction_l1(vae, validation),
        "images": len(seeds), "seconds": time.perf_counter() - started,
    }  # fmt: skip
    tensors = {"latents": latents.contiguous(), "seeds": seeds}
    tensors.update({f"vae/{k}": v.detach().cpu().contiguous() for k, v in vae.state_dict().items()})
    temporary = paths.latents.with_name(paths.latents.name + ".tmp")
    save_file(tensors, str(temporary), metadata={"latents": json.dumps(record)})
    temporary.replace(paths.latents)
    return record


def folded_vae(settings: RunSettings, paths: RunPaths, device: str = "cpu") -> torch.nn.Module:
    """The shipped VAE: EMA weights with the latent statistics folded in (from the latent cache)."""
    vae = build_vae(settings.vae, settings.resolution)
    tensors = load_file(str(paths.latents))
    vae.load_state_dict({k[len("vae/") :]: v for k, v in tensors.items() if k.startswith("vae/")})
    return vae.to(device).eval()


def unet_modules(settings: RunSettings) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(settings.seed + 1)
    latent_size = settings.resolution // 8
    return build_unet(settings.unet, latent_size), build_text_encoder(settings.unet, data.caption_token_ids())


def unet_phase(settings: RunSettings, paths: RunPaths, device: str) -> Phase:
    us = settings.unet
    tensors = load_file(str(paths.latents))
    dataset = data.LatentDataset(tensors["latents"], tensors["seeds"], settings.seed)
    unet, text_encoder = (m.to(device) for m in unet_modules(settings))
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=us.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas = alphas_cumprod()

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        latents, tokens, _ = dataset.batch(step, us.batch_size, us.caption_dropout)
        generator = step_generator(settings.seed, data.NOISE_STREAM, step)
        with autocast(device):
            states = text_encoder(tokens.to(device)).last_hidden_state
            return diffusion_loss(unet, states, latents.to(device), us, generator, alphas), {}

    return Phase(
        name="unet", modules={"unet": unet, "text_encoder": text_encoder},
        emas={"unet": EMA(unet, us.ema), "text_encoder": EMA(text_encoder, us.ema)},
        optimizer=optimizer, loss_at=loss_at, peak_lr=us.lr, warmup=us.warmup, min_lr_fraction=us.min_lr_fraction,
        settings={"seed": settings.seed, "resolution": settings.resolution, **settings.to_json()["unet"]},
    )  # fmt: skip


def train_unet(
    settings: RunSettings, paths: RunPaths, device: str, seconds: float | None, progress: bool
) -> PhaseResult:
    """Train (or continue training) the UNet and text encoder on the cached latents."""
    phase = unet_phase(settings, paths, device)
    return run_phase(phase, paths.unet, total_steps=settings.unet.steps, seconds=seconds, progress=progress)


def ema_unet_and_text(settings: RunSettings, paths: RunPaths) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The UNet and (compact) text encoder with their EMA weights, on the CPU, in eval mode."""
    unet, text_encoder = unet_modules(settings)
    for name, module in (("unet", unet), ("text_encoder", text_encoder)):
        weights = read_tensors(paths.unet, f"model/{name}/")
        weights.update(read_tensors(paths.unet, f"ema/{name}/"))
        module.load_state_dict(weights)
        module.eval()
    return unet, text_encoder


def phase_state(path: Path) -> dict[str, Any] | None:
    """A phase checkpoint's JSON (step, total_steps, done, seconds, figures), or None before it exists."""
    return read_state(path) if path.exists() else None


def latent_record(paths: RunPaths) -> dict[str, Any] | None:
    if not paths.latents.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(paths.latents), framework="pt") as handle:
        return json.loads((handle.metadata() or {})["latents"])
