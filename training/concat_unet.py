"""What the InstructPix2Pix and depth-to-image fine-tunes share: a UNet with extra input channels, its loss,
and the UNet-only file they ship as.

Both papers start from a text-to-image UNet and widen its first convolution for the extra channels, with the
new input weights at zero (Brooks et al. 2023, "InstructPix2Pix", section 3.2; Stability's SD2-depth model
the same way), so training starts from exactly the base model's predictions.

The shipped files hold only the UNet (`model.diffusion_model.*`); `nodegraph_config.parts_from` names the
checkpoint whose text encoder and VAE they were trained with, which the loader takes them from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nodes.sd.loading.configs import METADATA_KEY
from nodes.sd.loading.export import plain_config, unet_state_dict
from training.config import SD_SCHEDULE

SHIP_DTYPES = {"fp16": torch.float16, "fp8": torch.float8_e4m3fn}


def widen_conv_in(unet: torch.nn.Module, in_channels: int) -> torch.nn.Module:
    """Give a diffusers UNet `in_channels` inputs: the old weights for the first channels, zeros for the new."""
    old = unet.conv_in
    if in_channels < old.in_channels:
        raise ValueError(f"cannot narrow conv_in from {old.in_channels} to {in_channels} channels")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


class ConcatInput:
    """Calls a UNet with `extra` stacked onto its noisy-latent input (the `unet` argument of `diffusion_loss`).

    Training feeds `extra * gain` (a reparametrisation: Adam moves each weight by about the learning rate per
    step whatever its gradient, so the zero-initialised extra weights act `gain` times faster);
    `fold_input_gain` multiplies those weights by `gain` before export, so the shipped UNet reads `extra` itself.
    """

    def __init__(self, unet: torch.nn.Module, extra: torch.Tensor) -> None:
        self.unet, self.extra = unet, extra

    def __call__(self, noisy: torch.Tensor, timesteps: torch.Tensor, **kwargs: Any) -> Any:
        return self.unet(torch.cat([noisy, self.extra.to(noisy)], dim=1), timesteps, **kwargs)


def fold_input_gain(unet: torch.nn.Module, gain: float) -> torch.nn.Module:
    """Scale conv_in's extra-channel weights by `gain` (in place): the UNet trained on `extra * gain` now reads
    `extra` as diffusers' pipelines and ComfyUI feed it."""
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] *= gain
    return unet


def write_unet_only(
    unet: torch.nn.Module, path: Path, *, parts_from: str, dtype: str, metadata: Mapping[str, str] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write a UNet-only SD1 checkpoint (LDM keys) in fp16 or fp8 (e4m3fn; our loader upcasts it).

    Args:
        parts_from: file name of the checkpoint (same folder) whose text encoder and VAE go with this UNet.
        dtype: "fp16" or "fp8".
    """
    if dtype not in SHIP_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(SHIP_DTYPES)}")
    from safetensors.torch import save_file

    tensors = {k: v.float().to(SHIP_DTYPES[dtype]).contiguous() for k, v in unet_state_dict(unet).items()}
    config = {"family": "sd1", "prediction": "epsilon", "schedule": dict(SD_SCHEDULE),
              "unet": plain_config(unet.config), "parts_from": parts_from, **(extra_config or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={**(metadata or {}), METADATA_KEY: json.dumps(config)})
    return path


def train_and_write_unet_only(phase: Any, settings: Any, run_dir: Path, checkpoint: str | Path,
                              output: str | Path | None, *, kind: str, seconds: float | None, dtype: str,
                              progress: bool, metadata: dict[str, str] | None) -> Any:
    """Run (or resume) a widened-input UNet's phase; when complete, fold its input gain into the EMA weights and
    write them as a UNet-only file borrowing the text encoder and VAE from `checkpoint` (InstructPix2Pix, depth)."""
    import copy

    from training.adapters import train_and_write

    def write(path: Path) -> None:
        unet = fold_input_gain(copy.deepcopy(phase.modules["unet"]).cpu(), settings.input_gain)
        write_unet_only(unet, path, parts_from=Path(checkpoint).name, dtype=dtype, metadata=metadata,
                        extra_config={"kind": kind})

    return train_and_write(phase, run_dir / f"{kind}.safetensors", steps=settings.steps, seconds=seconds,
                           progress=progress, output=output, write=write)


def run_training_script(kind: str, settings_type: type, train: Any, dtype: str, doc: str,
                        argv: list[str] | None = None) -> int:
    """The command line of scripts/train_instruct_pix2pix.py and scripts/train_depth2img.py (`kind` is the
    ADAPTERS key, the run folder's name and the phase's): train or resume, write the record, exit 3 if unfinished."""
    import argparse
    import shlex
    import sys
    import time

    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from training.pipeline import pick_device

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--minutes", type=float, help="wall-clock budget (fits the step count on a fresh run)")
    parser.add_argument("--steps", type=int, help="planned steps (the cap when --minutes is given)")
    parser.add_argument("--run-dir", type=Path, help=f"resumable run folder (default runs/{kind})")
    parser.add_argument("--output", type=Path, help="the UNet file to write (default: the shipped one)")
    parser.add_argument("--dtype", choices=tuple(SHIP_DTYPES), default=dtype, help="stored precision")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parent.parent
    run_dir = args.run_dir or root / "runs" / kind
    output = args.output or default_adapter_path(kind)
    overrides = {"steps": args.steps} if args.steps else {}
    settings = settings_type(**overrides)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    device = pick_device(args.device)
    result = train(settings, run_dir, EMBEDDED_PATH, output, seconds=None if args.minutes is None else args.minutes * 60,
                   dtype=args.dtype, device=device, progress=not args.no_progress,
                   metadata={"nodegraph_command": command})
    record = {
        "kind": kind, "command": command, "done": result.done, "step": result.step,
        "total_steps": result.total_steps, "seconds_total": round(result.seconds, 1),
        "seconds_this_session": round(time.perf_counter() - started, 1), "last": result.last_figures,
        "settings": settings.to_json(), "device": device, "threads": torch.get_num_threads(), "dtype": args.dtype,
        "output": str(output) if result.done else None,
        "output_bytes": output.stat().st_size if result.done and output.exists() else None,
    }  # fmt: skip
    (Path(run_dir) / "record.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
    return 0 if result.done else 3
