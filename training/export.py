"""Writing the trained modules as the shipped file: one fp16 SD1.x single-file `.safetensors`.

The key layout and the `nodegraph_config` metadata are the loader's own exporter's business
(`nodes.sd.loading.export`), so the embedded model is read back exactly like any user checkpoint;
here we only choose what goes in: EMA weights, the VAE with its latent statistics folded in, the text
encoder's full vocabulary table (zero outside trained rows), fp16, and a record of how it was trained.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from training.config import SD_SCHEDULE
from training.unet import exportable_text_encoder

MAX_BYTES = 25 * 1024 * 1024
"""The shipped file must stay small enough to live in the package (issue: <= 25 MB)."""

SAMPLING_NOTES = {
    "timestep_spacing": "trailing",
    "note": "SD's scaled_linear schedule keeps SNR > 0 at t=999; sample from t=999 (trailing spacing, or a "
    "Karras/exponential sigma schedule reaching sigma_max) so flat backgrounds get their colour.",
    "steps": 20,
    "cfg": 6.0,
}


def export_model(
    path: str | Path,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoder: torch.nn.Module,
    training_record: Mapping[str, Any],
    *,
    max_bytes: int = MAX_BYTES,
) -> Path:
    """Write an fp16 SD1-layout checkpoint (the loader's exporter) and check its size.

    Args:
        path: the `.safetensors` file to write.
        unet, vae, text_encoder: trained modules (EMA weights, VAE folded); copied, never changed.
        training_record: JSON-able facts stored under `nodegraph_config["training"]`.
        max_bytes: refuse (and delete) a file larger than this.
    """
    try:
        from nodes.sd.loading.export import save_sd1_checkpoint
    except ImportError as error:  # pragma: no cover - only before the loader branch is merged
        raise RuntimeError("exporting needs nodes.sd.loading.export (the checkpoint loader's exporter)") from error
    # nn.Module.cpu()/half() rather than diffusers' .to(dtype), which warns about keeping modules in fp32
    modules = [copy.deepcopy(m).cpu().half().eval() for m in (unet, vae)]
    text = exportable_text_encoder(text_encoder).cpu().half().eval()
    path = save_sd1_checkpoint(
        modules[0], modules[1], text, path,
        config_metadata={"prediction": "epsilon", "schedule": dict(SD_SCHEDULE), "sampling": SAMPLING_NOTES,
                         "training": dict(training_record)},
    )  # fmt: skip
    size = Path(path).stat().st_size
    if size > max_bytes:
        Path(path).unlink()
        raise ValueError(f"exported model is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    return Path(path)
