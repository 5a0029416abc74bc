"""Train the embedded default model (tiny SD1-layout shapes model); re-run the same command to resume.

Exit status 0: complete; 3: unfinished (budget spent), re-run the same command to continue.

    OMP_NUM_THREADS=2 python scripts/train_embedded_model.py --minutes 120 \
        --card nodes/models/embedded/MODEL_CARD.md

See `training/` for the stages and nodes/models/embedded/MODEL_CARD.md for the planned settings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_OUTPUT = ROOT / "nodes/models/embedded/nodegraph-tiny-shapes.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, help="resumable run folder (default runs/embedded, or "
                        "runs/embedded-tiny with --tiny)")  # fmt: skip
    parser.add_argument("--output", type=Path, help="where the model is written (default: the shipped file; "
                        "with --tiny, tiny.safetensors in the run folder, never the shipped file)")  # fmt: skip
    parser.add_argument("--no-export", action="store_true", help="train only; write no model file")
    parser.add_argument("--minutes", type=float, help="wall-clock budget of this invocation (fits step counts)")
    parser.add_argument("--vae-fraction", type=float, default=0.22, help="share of the budget for the VAE")
    parser.add_argument("--vae-steps", type=int, help="VAE steps (the cap when --minutes is given)")
    parser.add_argument("--unet-steps", type=int, help="UNet steps (the cap when --minutes is given)")
    parser.add_argument("--dataset-size", type=int, help="images in the UNet's latent cache (default 16384)")
    parser.add_argument("--settings", type=Path, help='JSON file of setting overrides, e.g. {"unet": {"lr": 5e-4}}')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke settings (CI)")
    parser.add_argument("--card", type=Path, help="model card whose training record section is rewritten")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_dir is None:
        args.run_dir = ROOT / ("runs/embedded-tiny" if args.tiny else "runs/embedded")
    if args.output is None:
        args.output = args.run_dir / "tiny.safetensors" if args.tiny else DEFAULT_OUTPUT
    import torch

    from training.card import write_training_record
    from training.config import RunSettings, merged_settings, tiny_settings
    from training.run import Budget, train

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = tiny_settings(args.seed) if args.tiny else RunSettings(seed=args.seed)
    if args.settings:
        settings = merged_settings(settings, json.loads(args.settings.read_text()))
    if args.vae_steps:
        settings.vae = replace(settings.vae, steps=args.vae_steps)
    if args.unet_steps:
        settings.unet = replace(settings.unet, steps=args.unet_steps)
    if args.dataset_size:
        settings.unet = replace(settings.unet, dataset_size=args.dataset_size)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", "-", *argv])
    record = train(
        settings,
        args.run_dir,
        None if args.no_export else args.output,
        budget=Budget(None if args.minutes is None else args.minutes * 60.0, args.vae_fraction),
        device=args.device,
        progress=not args.no_progress,
        command=command,
    )
    if args.card and record["status"] in ("complete", "partial"):
        write_training_record(args.card, record)
    print(json.dumps({k: record[k] for k in record if k in ("status", "vae", "unet", "file")}, indent=2))
    return 0 if record["status"] == "complete" else 3


if __name__ == "__main__":
    sys.exit(main())
