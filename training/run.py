"""One command's worth of training: run the stages that are not finished yet, within a time budget, then export.

The budget is split as the trials suggest: about a fifth of it for the VAE, what encoding the dataset
takes, about an eighth for fine-tuning the decoder (`training.decoder`), and the rest for the UNet and
text encoder (less a reserve for export). Each phase fits its step count to its share on a fresh start;
re-running the same command after an interruption continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training import data, pipeline
from training.config import RunSettings
from training.decoder import finetuned_vae, train_decoder
from training.export import export_model
from training.vae import reconstruction_l1

EXPORT_RESERVE_SECONDS = 60.0
"""Kept back from the UNet's share for the export (a few seconds) and slack; at most 5 % of a small budget."""


@dataclass
class Budget:
    """Wall-clock seconds for this invocation (None: no limit, steps decide) and the VAE's share of them."""

    seconds: float | None
    vae_fraction: float = 0.22
    decoder_fraction: float = 0.12
    """Of the budget: the decoder fine-tuning's share (kept back from the UNet when both are still to run)."""

    def __post_init__(self) -> None:
        self.started = time.perf_counter()

    def left(self) -> float | None:
        return None if self.seconds is None else self.seconds - (time.perf_counter() - self.started)


def hardware() -> dict[str, Any]:
    """What the run ran on, for the model card."""
    info = {
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
    }  # fmt: skip
    import diffusers
    import transformers

    info.update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_or_write_settings(settings: RunSettings, paths: pipeline.RunPaths, *, overwrite_ok: bool) -> RunSettings:
    """A run folder keeps its settings: a resumed run uses the stored ones (and says so if they differ)."""
    if paths.settings.exists():
        stored = RunSettings.from_json(json.loads(paths.settings.read_text()))
        if stored != settings and not overwrite_ok:
            print(f"{paths.root}: resuming with the settings stored there, not the ones given", file=sys.stderr)
        return stored
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.settings.write_text(json.dumps(settings.to_json(), indent=2))
    return settings


def _phase_record(result: pipeline.PhaseResult | None, path: Path) -> dict[str, Any] | None:
    state = pipeline.phase_state(path)
    if state is None:
        return None
    record = {k: state[k] for k in ("step", "total_steps", "done", "seconds", "figures")}
    if result is not None and result.steps_per_second:
        record["steps_per_second_last_session"] = result.steps_per_second
    return record


def validation_l1(settings: RunSettings, vae: torch.nn.Module) -> dict[str, float]:
    """The shipped VAE's reconstruction L1 (0..255) on plain and striped validation renders."""
    images = pipeline.validation_images(settings)
    specs = data.stream_specs(settings.seed, data.VALIDATION_STREAM, 0, pipeline.VALIDATION_IMAGES)
    striped = data.render_specs(specs, settings.resolution, striped=True)
    return {"plain": reconstruction_l1(vae, images), "striped": reconstruction_l1(vae, striped)}


def train(
    settings: RunSettings,
    run_dir: str | Path,
    output: str | Path | None,
    *,
    budget: Budget,
    device: str | None = None,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Run every unfinished stage, then export to `output`. Returns the training record.

    The export happens once the UNet phase has run, finished or not (status "complete" / "partial");
    an unfinished VAE phase returns early (status "vae unfinished"): re-run to continue.

    Args:
        settings: used for a fresh run folder; an existing one keeps its own.
        run_dir: the resumable run folder (checkpoints, latent cache, settings).
        output: the `.safetensors` to write when training is complete (None: do not export).
        budget: this invocation's wall-clock budget.
        device: "cpu", "cuda", ...; default CUDA when available.
        command: the command line, for the record.
    """
    paths = pipeline.RunPaths(Path(run_dir))
    settings = load_or_write_settings(settings, paths, overwrite_ok=False)
    device = pipeline.pick_device(device)
    vae_result = unet_result = decoder_result = None
    vae_state = pipeline.phase_state(paths.vae)
    if not (vae_state and vae_state["done"]):
        left = budget.left()
        seconds = None if left is None else left * budget.vae_fraction
        vae_result = pipeline.train_vae(settings, paths, device, seconds, progress)
        if not vae_result.done:
            return {"status": "vae unfinished", "vae": _phase_record(vae_result, paths.vae)}
    if pipeline.latent_record(paths) is None:
        pipeline.encode_dataset(settings, paths, device, progress)
    unet_state = pipeline.phase_state(paths.unet)
    unet_done = bool(unet_state and unet_state["done"])
    export_reserve = 0.0 if budget.seconds is None else min(EXPORT_RESERVE_SECONDS, 0.05 * budget.seconds)
    decoder_state = pipeline.phase_state(paths.decoder)
    decoder_done = bool(decoder_state and decoder_state["done"])
    if not unet_done:
        left = budget.left()
        reserve = export_reserve + (0.0 if budget.seconds is None or decoder_done else
                                    budget.decoder_fraction * budget.seconds)  # fmt: skip
        seconds = None if left is None else max(0.0, left - reserve)
        unet_result = pipeline.train_unet(settings, paths, device, seconds, progress)
        unet_done = unet_result.done
    if unet_done and not decoder_done:
        left = budget.left()
        seconds = None if left is None else max(0.0, left - export_reserve)
        decoder_result = train_decoder(settings, paths, device, seconds, progress)
    decoder_done = bool((pipeline.phase_state(paths.decoder) or {}).get("done"))
    vae = finetuned_vae(settings, paths)
    record = {
        # "partial": the budget ran out before the UNet's or the decoder's schedule ended; the EMA weights so far
        # are still exported (a usable model), and re-running the command finishes the schedules.
        "status": "complete" if unet_done and decoder_done else "partial",
        "command": command,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": hardware(),
        "device": device,
        "settings": settings.to_json(),
        "vae": _phase_record(vae_result, paths.vae),
        "latents": pipeline.latent_record(paths),
        "unet": _phase_record(unet_result, paths.unet),
        "decoder": _phase_record(decoder_result, paths.decoder),
        "validation_l1": validation_l1(settings, vae),
    }
    if output is not None:
        unet, text_encoder = pipeline.ema_unet_and_text(settings, paths)
        path = export_model(output, unet, vae, text_encoder, record)
        record["file"] = {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path)}
    (paths.root / "record.json").write_text(json.dumps(record, indent=2))
    return record
