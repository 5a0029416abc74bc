"""The embedded model's style LoRA: diagonal stripes on the background when a prompt ends in ', striped'.

PEFT LoRA layers are trained on the shipped checkpoint's UNet (attention, feed-forward and the resnets'
3x3 convolutions, LyCORIS' "LoCon", since drawing bands is spatial work) and on its text encoder, then
written in kohya-ss's layout with diffusers' `convert_state_dict_to_kohya`, the layout most LoRA files
in the wild use. The base weights never change: the LoRA is what is learned.

Data: renders in the striped style (`nodes.sd.shapes.render_striped`) with styled captions, and a share
of plain renders with plain captions, so the style follows the trigger word rather than the LoRA alone.
Both are encoded once with the checkpoint's own VAE into a cache in the run folder.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nodes.sd.shapes import caption, styled_caption
from training import data
from training.adapters import base_modules, caption_tokens, encode_items, train_and_write
from training.config import UnetSettings
from training.ema import EMA
from training.loop import Phase, PhaseResult
from training.unet import alphas_cumprod, diffusion_loss

UNET_TARGETS = (
    r"^(down_blocks|mid_block|up_blocks)\..*\."
    r"(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2)$"
)
"""The UNet layers adapted: every transformer linear layer and every resnet 3x3 convolution."""
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@dataclass(frozen=True)
class LoraSettings:
    seed: int = 0
    rank: int = 8
    batch_size: int = 16
    styled_fraction: float = 0.75
    """Of the cached images: the striped ones (the rest are plain renders with plain captions)."""
    dataset_size: int = 4096
    caption_dropout: float = 0.1
    lr: float = 1e-3
    warmup: int = 50
    min_lr_fraction: float = 0.1
    ema: float = 0.99
    steps: int = 4000
    resolution: int = 128

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def dataset_specs(settings: LoraSettings) -> list[tuple[data.ShapeSpec, bool]]:
    """(spec, striped) for each cached image: the first `styled_fraction` striped."""
    styled = round(settings.dataset_size * settings.styled_fraction)
    specs = data.stream_specs(settings.seed, data.STYLE_STREAM, 0, settings.dataset_size)
    return [(spec, index < styled) for index, spec in enumerate(specs)]


def add_lora_layers(unet: torch.nn.Module, text_encoder: torch.nn.Module, rank: int) -> None:
    """Freeze both modules and add trainable PEFT LoRA layers (alpha = rank: scale 1)."""
    from peft import LoraConfig

    for module in (unet, text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    text_encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                        target_modules=TEXT_TARGETS))  # fmt: skip


def lora_phase(settings: LoraSettings, run_dir: Path, checkpoint: str | Path, device: str, progress: bool) -> Phase:
    from training.pipeline import step_generator

    unet, text_encoder, vae = base_modules(checkpoint, device)
    items = dataset_specs(settings)
    cache = run_dir / "style_latents.safetensors"
    encode_items(items, vae, cache, settings.resolution, progress)
    latents = load_file(str(cache))["latents"]
    torch.manual_seed(settings.seed)
    add_lora_layers(unet, text_encoder, settings.rank)
    trainable = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas, loss_settings = alphas_cumprod(), UnetSettings()

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(settings.seed, data.STYLE_STREAM, step)
        rows = torch.randint(0, len(items), (settings.batch_size,), generator=generator).tolist()
        rng = random.Random(data.data_seed(settings.seed, data.STYLE_STREAM, 2**31 + step))
        captions = []
        for row in rows:
            spec, striped = items[row]
            variant = data.caption_variant(spec, rng)
            text = styled_caption(variant) if striped else caption(variant)
            captions.append("" if rng.random() < settings.caption_dropout else text)
        states = text_encoder(caption_tokens(captions, device)).last_hidden_state
        return diffusion_loss(unet, states, latents[rows].to(device), loss_settings, generator, alphas), {}

    return Phase(
        name="lora", modules={"unet": unet, "text_encoder": text_encoder},
        emas={"unet": EMA(unet, settings.ema), "text_encoder": EMA(text_encoder, settings.ema)},
        optimizer=optimizer, loss_at=loss_at, peak_lr=settings.lr, warmup=settings.warmup,
        min_lr_fraction=settings.min_lr_fraction, settings=settings.to_json(),
    )  # fmt: skip


def kohya_state_dict(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The modules' LoRA layers in kohya-ss's SD1 layout (`lora_unet_*`, `lora_te_text_model_*`), fp16."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    peft = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    # transformers 5 has no `text_model.` level; LoRA files (and kohya's SD1 trainer) name it
    peft.update({f"text_encoder.text_model.{k}": v for k, v in get_peft_model_state_dict(text_encoder).items()})
    kohya = convert_state_dict_to_kohya(peft)
    renamed = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in kohya.items()}  # SD1 has one text encoder
    return {k: v.detach().to(torch.float16).contiguous() for k, v in renamed.items()}


def train_lora(
    settings: LoraSettings,
    run_dir: str | Path,
    checkpoint: str | Path,
    output: str | Path | None,
    *,
    seconds: float | None,
    device: str = "cpu",
    progress: bool = True,
    metadata: dict[str, str] | None = None,
) -> PhaseResult:
    """Train (or resume) the style LoRA; when its schedule is complete, write its EMA weights to `output`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    phase = lora_phase(settings, run_dir, checkpoint, device, progress)

    def write(path: Path) -> None:
        tensors = kohya_state_dict(phase.modules["unet"], phase.modules["text_encoder"])
        save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", **(metadata or {})})

    return train_and_write(phase, run_dir / "lora.safetensors", steps=settings.steps, seconds=seconds,
                           progress=progress, output=output, write=write)  # fmt: skip
