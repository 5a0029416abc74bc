"""What the embedded model's adapters (style LoRA, outline ControlNet) share: the frozen base and a latent cache.

Adapters are trained against the shipped checkpoint as the node layer loads it, so what they learn is
exactly what a workflow will patch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from training import data
from training.loop import Phase, PhaseResult, run_phase
from training.vae import encode_means

ENCODE_CHUNK = 256


def base_modules(checkpoint: str | Path, device: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Private float32 copies of a checkpoint's UNet, text encoder and VAE, loaded by the node layer's loader."""
    from nodes.sd.loading import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    modules = (loaded.model.unet, loaded.clip.encoders[0], loaded.vae.vae)
    return tuple(copy.deepcopy(m).float().to(device).eval() for m in modules)  # type: ignore[return-value]


def encode_items(
    items: Sequence[tuple[data.ShapeSpec, bool]], vae: torch.nn.Module, path: Path, resolution: int, progress: bool
) -> None:
    """Encode (spec, striped) renders into scaled latents (what the UNet sees) at `path`, once."""
    if path.exists():
        return
    device = next(vae.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(items), ENCODE_CHUNK), desc="encode", disable=not progress, dynamic_ncols=True):
        part = items[start : start + ENCODE_CHUNK]
        pixels = torch.cat([data.render_specs([spec], resolution, striped=striped) for spec, striped in part])
        chunks.append(encode_means(vae, pixels.to(device)).cpu() * vae.config.scaling_factor)
    temporary = path.with_name(path.name + ".tmp")
    save_file({"latents": torch.cat(chunks).contiguous()}, str(temporary))
    temporary.replace(path)


def caption_tokens(texts: Sequence[str], device: str) -> torch.Tensor:
    """[B, 77] SD1 token windows of captions."""
    return torch.tensor([data.token_window(text) for text in texts], dtype=torch.long, device=device)


def train_and_write(
    phase: Phase,
    checkpoint: Path,
    *,
    steps: int,
    seconds: float | None,
    progress: bool,
    output: str | Path | None,
    write: Callable[[Path], None],
) -> PhaseResult:
    """Run (or resume) an adapter's phase; once its schedule is complete, put its EMA weights into the
    modules and `write` them to `output` (through a temporary file: never a half-written adapter)."""
    result = run_phase(phase, checkpoint, total_steps=steps, seconds=seconds, progress=progress)
    if output is not None and result.done:
        for name, ema in phase.emas.items():
            ema.copy_to(phase.modules[name])
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        temporary = output.with_name(output.name + ".tmp")
        write(temporary)
        temporary.replace(output)
    return result
