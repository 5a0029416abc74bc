"""Settings of the embedded model's training run: architecture, optimisation and budget, as JSON-able dataclasses.

They are written into every checkpoint, so a resumed run can refuse settings that would change the model
(architecture, batch, schedule) while budget settings (minutes, threads) may change between sessions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SD_SCHEDULE: dict[str, Any] = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}
"""Stable Diffusion's own DDPM schedule: the model loads and samples like any SD1 checkpoint."""

SD1_SCALING_FACTOR = 0.18215
"""SD1's latent scale. Our centred latents are stretched so this same factor gives them unit variance,
so tools that ignore our metadata still scale them right."""


@dataclass
class VaeSettings:
    """AutoencoderKL (4 latent channels, downsampling by 8) and its reconstruction training."""

    channels: tuple[int, ...] = (32, 64, 64, 64)
    layers_per_block: int = 1
    batch_size: int = 16
    crop: int = 64
    """Side of the random crops trained on for the first `crop_fraction` of the steps (4x cheaper than 128 px)."""
    crop_fraction: float = 0.7
    full_batch_size: int = 8
    lr: float = 1.5e-3
    warmup: int = 100
    min_lr_fraction: float = 0.1
    gradient_weight: float = 1.0
    """Weight of the L1 loss on image gradients: sharp edges (the trials' 0.5 left them 3-4 px soft)."""
    kl_weight: float = 1e-4
    ema: float = 0.999
    steps: int = 4000
    """Planned steps; with a time budget, the cap (the budget usually allows fewer on 2 CPU cores)."""


@dataclass
class UnetSettings:
    """UNet2DConditionModel + a small CLIP text encoder trained jointly on cached latents."""

    channels: tuple[int, ...] = (64, 128, 128)
    cross_attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    heads: int = 8
    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 2
    text_intermediate: int = 256
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    min_lr_fraction: float = 0.1
    caption_dropout: float = 0.1
    offset_noise: float = 0.1
    """Per-channel constant noise added to the noise (Guttenberg 2023): lets the model move flat colours."""
    min_snr_gamma: float = 5.0
    """Min-SNR loss weighting (Hang et al. 2023, arXiv:2303.09556)."""
    ema: float = 0.999
    dataset_size: int = 16384
    """Images rendered, encoded once and cached as latents (encoding costs 10-25 ms an image on the CPU)."""
    steps: int = 20000
    """Planned steps; with a time budget, the cap."""


@dataclass
class DecoderSettings:
    """Fine-tuning the VAE's decoder with the encoder frozen (as SD's ft-MSE VAE): the latent space, and so
    the UNet trained on it, stays valid while reconstructions get sharper and their colours exact."""

    batch_size: int = 8
    striped_fraction: float = 0.25
    """Share of each batch drawn in the style LoRA's striped look, so the decoder can draw its bands."""
    lr: float = 5e-4
    warmup: int = 50
    min_lr_fraction: float = 0.1
    gradient_weight: float = 1.0
    ema: float = 0.998
    steps: int = 3000


@dataclass
class RunSettings:
    """One training run: both phases, the seed and where the run lives."""

    seed: int = 0
    resolution: int = 128
    vae: VaeSettings = field(default_factory=VaeSettings)
    unet: UnetSettings = field(default_factory=UnetSettings)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        def build(kind: type, values: dict[str, Any]) -> Any:
            names = {f.name: f for f in dataclasses.fields(kind)}
            unknown = set(values) - set(names)
            if unknown:
                raise ValueError(f"unknown {kind.__name__} settings: {', '.join(sorted(unknown))}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        return cls(
            seed=data["seed"],
            resolution=data["resolution"],
            vae=build(VaeSettings, data["vae"]),
            unet=build(UnetSettings, data["unet"]),
            decoder=build(DecoderSettings, data.get("decoder", {})),  # runs from before the decoder stage
        )


def merged_settings(base: RunSettings, overrides: dict[str, Any]) -> RunSettings:
    """`base` with a (partial) JSON object of settings applied, e.g. {"unet": {"channels": [32, 64, 128]}}."""
    merged = base.to_json()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        elif key in merged:
            merged[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}")
    return RunSettings.from_json(merged)


def tiny_settings(seed: int = 0) -> RunSettings:
    """Settings small enough for a seconds-long smoke test (CI); the architecture keeps every SD feature."""
    return RunSettings(
        seed=seed,
        resolution=64,
        vae=VaeSettings(channels=(32, 32, 32, 32), batch_size=2, crop=32, full_batch_size=2, warmup=1, steps=3),
        unet=UnetSettings(
            channels=(32, 32), cross_attention=(False, True), heads=2, text_hidden=32, text_layers=1,
            text_intermediate=64, batch_size=2, warmup=1, dataset_size=8, steps=3,
        ),
        decoder=DecoderSettings(batch_size=2, striped_fraction=0.5, warmup=1, steps=3),
    )  # fmt: skip
