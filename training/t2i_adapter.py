"""The embedded model's silhouette T2I-Adapter: the shape is drawn where a white silhouette on black says.

A diffusers `T2IAdapter` (Mou et al. 2023) shaped for the shipped UNet is trained with the UNet and text
encoder frozen on the shapes generator's own ground truth: the shape's filled coverage mask (`render`'s mask,
a segmentation- or depth-like map: the near object white, the far background black), a second condition beside
the outline ControlNet's edge map. Its features are added inside the UNet's down blocks
(`down_intrablock_additional_residuals`), as diffusers' StableDiffusionAdapterPipeline does.

The shipped UNet's first down block has no attention (as SDXL's), so its first residual lands after that block's
downsampling: the adapter is diffusers' `full_adapter_xl` kind (pixel-unshuffle by 16, one learned level without
downsampling), widths (64, 128, 128) as the UNet's. Written in TencentARC's original key layout. A share of
captions is dropped so the silhouette alone must place the shape.
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

ADAPTER_STREAM = 21
"""The data stream of the adapter's training shapes (apart from the model's and the ControlNet's)."""


@dataclass(frozen=True)
class AdapterSettings:
    seed: int = 0
    num_res_blocks: int = 1
    batch_size: int = 16
    dataset_size: int = 2048
    caption_dropout: float = 0.3
    lr: float = 5e-4
    warmup: int = 50
    min_lr_fraction: float = 0.1
    ema: float = 0.99
    steps: int = 2000
    resolution: int = 128

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def silhouette(spec: data.ShapeSpec, resolution: int) -> torch.Tensor:
    """The control image of a spec: its filled shape white on black, [3, H, W] in 0..1 (a hint as nodes pass it)."""
    mask = np.asarray(render(spec, resolution)[1], dtype=np.float32) / 255.0
    return torch.from_numpy(mask)[None].expand(3, -1, -1)


def new_adapter(unet: torch.nn.Module, settings: AdapterSettings) -> torch.nn.Module:
    """A T2IAdapter whose features fit `unet`'s down blocks (see the module docstring)."""
    from diffusers import T2IAdapter

    first_plain = unet.config.down_block_types[0] == "DownBlock2D"
    return T2IAdapter(in_channels=3, channels=list(unet.config.block_out_channels),
                      num_res_blocks=settings.num_res_blocks, downscale_factor=16 if first_plain else 8,
                      adapter_type="full_adapter_xl" if first_plain else "full_adapter")


def adapter_phase(settings: AdapterSettings, run_dir: Path, checkpoint: str | Path, device: str, progress: bool) -> Phase:
    from training.pipeline import step_generator

    unet, text_encoder, vae = base_modules(checkpoint, device)
    specs = data.stream_specs(settings.seed, ADAPTER_STREAM, 0, settings.dataset_size)
    cache = run_dir / "adapter_latents.safetensors"
    encode_items([(spec, False) for spec in specs], vae, cache, settings.resolution, progress)
    latents = load_file(str(cache))["latents"]
    for module in (unet, text_encoder):
        module.requires_grad_(False)
    torch.manual_seed(settings.seed)
    adapter = new_adapter(unet, settings).to(device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas, loss_settings = alphas_cumprod(), UnetSettings()

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(settings.seed, ADAPTER_STREAM, step)
        rows = torch.randint(0, len(specs), (settings.batch_size,), generator=generator).tolist()
        rng = random.Random(data.data_seed(settings.seed, ADAPTER_STREAM, 2**31 + step))
        captions = [caption(data.caption_variant(specs[row], rng)) for row in rows]
        captions = ["" if rng.random() < settings.caption_dropout else text for text in captions]
        hints = torch.stack([silhouette(specs[row], settings.resolution) for row in rows]).to(device)
        with torch.no_grad():
            states = text_encoder(caption_tokens(captions, device)).last_hidden_state
        features = adapter(hints)  # independent of the timestep: once a step

        def residuals(noisy: torch.Tensor, timesteps: torch.Tensor) -> dict:
            return {"down_intrablock_additional_residuals": list(features)}

        loss = diffusion_loss(unet, states, latents[rows].to(device), loss_settings, generator, alphas, residuals)
        return loss, {}

    return Phase(
        name="t2i_adapter", modules={"adapter": adapter}, emas={"adapter": EMA(adapter, settings.ema)},
        optimizer=optimizer, loss_at=loss_at, peak_lr=settings.lr, warmup=settings.warmup,
        min_lr_fraction=settings.min_lr_fraction, settings=settings.to_json(),
    )  # fmt: skip


def train_t2i_adapter(
    settings: AdapterSettings,
    run_dir: str | Path,
    checkpoint: str | Path,
    output: str | Path | None,
    *,
    seconds: float | None,
    device: str = "cpu",
    progress: bool = True,
    metadata: dict[str, str] | None = None,
) -> PhaseResult:
    """Train (or resume) the silhouette adapter; when complete, write its EMA weights (fp16, TencentARC layout)."""
    from nodes.sd.t2i_adapter import save_adapter_original

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    phase = adapter_phase(settings, run_dir, checkpoint, device, progress)

    def write(path: Path) -> None:
        save_adapter_original(copy.deepcopy(phase.modules["adapter"]).cpu().half(), path, metadata=metadata)

    return train_and_write(phase, run_dir / "t2i_adapter.safetensors", steps=settings.steps, seconds=seconds,
                           progress=progress, output=output, write=write)  # fmt: skip


# -- measuring what it draws ----------------------------------------------------------------------------------


def write_silhouette(spec: data.ShapeSpec, folder: Path) -> str:
    """Save a spec's silhouette as a control image in `folder`; returns its file name (LoadImage's widget)."""
    import hashlib

    name = f"silhouette_{hashlib.sha1(repr(spec).encode()).hexdigest()[:12]}.png"
    render(spec)[1].convert("RGB").save(folder / name)
    return name


def silhouette_iou(engine, spec: data.ShapeSpec, input_dir: Path, seed: int, **apply: float) -> list[float]:
    """IoU of each generated shape with `spec`'s mask, steered by its silhouette through the shipped ControlNet
    workflow with the adapter loaded instead (ControlNetApplyAdvanced widgets in `apply`), prompted with its
    colours and shape."""
    from nodes.models.embedded import ADAPTERS
    from training import adapter_eval as ae

    graph = ae.workflow(engine, "controlnet").with_widget("11", "control_net_name", ADAPTERS["t2i_adapter"][1])
    graph = graph.with_widget("10", "image", write_silhouette(spec, input_dir))
    graph = graph.with_widget("6", "text", f"a {spec.fg} {spec.shape} on a {spec.bg} background")
    graph = graph.with_widget("3", "seed", seed)
    for name, value in apply.items():
        graph = graph.with_widget("12", name, value)
    truth = np.asarray(render(spec)[1]) >= 128
    return [ae.iou(ae.shape_mask(image), truth) for image in ae.images(engine, graph)]


def evaluate(engine, shapes: int) -> dict[str, list[float]]:
    """IoUs at strength 1, strength 0 and over the first half of the steps, for `shapes` evaluation shapes
    (4 images each: the workflow's batch)."""
    from training import adapter_eval as ae

    found: dict[str, list[float]] = {"strength 1": [], "strength 0": [], "first half only": []}
    settings = {"strength 1": {}, "strength 0": {"strength": 0.0}, "first half only": {"end_percent": 0.5}}
    for index, spec in enumerate(ae.control_specs(shapes)):
        for name, apply in settings.items():
            found[name] += silhouette_iou(engine, spec, engine.env.input_dir, index, **apply)
    return found


def card_line(found: dict[str, list[float]]) -> str:
    parts = [f"{name}: mean {np.mean(v):.2f}, {100 * np.mean(np.asarray(v) >= 0.7):.0f} % of {len(v)} images at "
             f">= 0.7" for name, v in found.items()]
    return "- Silhouette T2I-Adapter, IoU of the generated shape with the silhouette " + "; ".join(parts) + "."
