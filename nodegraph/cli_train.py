"""`nodegraph train lora`: train a LoRA headless, as a small workflow of the training nodes.

The command builds the graph a user would build in the editor (checkpoint loader, LoadImageTextSetFromFolderNode,
VAEEncode, TrainLoraNode, SaveLoRANode) by node type name and runs it like `nodegraph run`, so the engine still
imports no node library. Ctrl-C stops training at the next step with its state saved in --temp-dir; the same
command run again resumes there and ends with the LoRA an uninterrupted run gives.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from .context import CancelToken
from .errors import Interrupted
from .formats.api import from_api

DEFAULT_CHECKPOINT = "nodegraph-tiny-shapes.safetensors"
"""The embedded model (listed first among checkpoints when the node library is installed)."""


def lora_graph(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """The API-format training workflow for `nodegraph train lora`'s options."""
    resize = {"resize_method": "Stretch", "width": args.resolution, "height": args.resolution} if args.resolution \
        else {"resize_method": "None", "width": -1, "height": -1}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": args.checkpoint}},
        "2": {"class_type": "LoadImageTextSetFromFolderNode", "inputs": {"folder": folder, "clip": ["1", 1], **resize}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "TrainLoraNode", "inputs": {
            "model": ["1", 0], "latents": ["3", 0], "positive": ["2", 1], "batch_size": args.batch_size,
            "grad_accumulation_steps": args.grad_accumulation, "steps": args.steps, "learning_rate": args.lr,
            "rank": args.rank, "optimizer": args.optimizer, "loss_function": args.loss, "seed": args.seed,
            "training_dtype": args.training_dtype, "lora_dtype": args.lora_dtype, "algorithm": "LoRA",
            "gradient_checkpointing": args.gradient_checkpointing, "existing_lora": args.existing_lora}},
        "5": {"class_type": "SaveLoRANode", "inputs": {"lora": ["4", 1], "prefix": "lora", "steps": ["4", 3]}},
    }


def cmd_train_lora(args: argparse.Namespace) -> int:
    from .app import build_engine
    from .cli import CliError, ProgressBar, _config

    images = Path(args.images).resolve()
    if not images.is_dir():
        raise CliError(f"--images {args.images}: not a folder")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CliError(f"--out {args.out}: the LoRA is written as .safetensors; name the file so")
    out.parent.mkdir(parents=True, exist_ok=True)
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())  # stop at the next step, state saved
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".nodegraph-train-") as staging:
            config = _config(args, input_dir=images.parent, output_dir=Path(staging), temp_dir=Path(args.temp_dir))
            engine = build_engine(config)
            workflow = from_api(lora_graph(args, images.name))
            try:
                result = engine.run(workflow, outputs=["4", "5"], hooks=[ProgressBar(enabled=not args.quiet)],
                                    cancel=cancel)
            except Interrupted:
                print(f"training stopped; its state is kept in {args.temp_dir}: run the same command again to "
                      f"resume", file=sys.stderr)
                raise
            saved = result.ui["5"]["models"][0]
            os.replace(Path(staging, saved["subfolder"], saved["filename"]), out)
    finally:
        signal.signal(signal.SIGINT, previous)
    losses = getattr(result.values["4"][2], "values", ())  # TrainLoraNode's LOSS_MAP
    print(out)
    summary = f"trained {args.steps} step(s) in {result.seconds:.1f} s"
    if losses:  # one step's loss is noisy (its timesteps are random): mean over the first and last tenth
        tenth = max(1, len(losses) // 10)
        first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
        summary += f"; mean loss {first:.4f} over the first {tenth} step(s), {last:.4f} over the last {tenth}"
    print(summary, file=sys.stderr)
    return 0


def add_train_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """`nodegraph train lora ...` (the fine-tuning methods of other node packs can add siblings here)."""
    train = sub.add_parser("train", help="train an adapter headless (LoRA)")
    methods = train.add_subparsers(dest="method", required=True)
    p = methods.add_parser("lora", parents=[common], help="train a LoRA on a folder of captioned images",
                           description="Train a LoRA on the images of a folder (each with an optional <name>.txt "
                                       "caption) and write it in kohya-ss's layout, loadable by LoraLoader.")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images with <name>.txt captions")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the LoRA (.safetensors)")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps (default 16)")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="checkpoint to train on (default: the embedded one)")
    p.add_argument("--resolution", type=int, default=0, metavar="PX",
                   help="stretch every image to PX x PX (default: keep their size, which must agree)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.0005, help="learning rate (default 0.0005)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accumulation", type=int, default=1)
    p.add_argument("--optimizer", default="AdamW", choices=["AdamW", "Adam", "SGD", "RMSprop"])
    p.add_argument("--loss", default="MSE", choices=["MSE", "L1", "Huber", "SmoothL1"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--training-dtype", default="fp32", choices=["bf16", "fp32"],
                   help="compute dtype (default fp32: reproducible and fastest on a CPU)")
    p.add_argument("--lora-dtype", default="fp32", choices=["bf16", "fp32"], help="dtype of the written tensors")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--existing-lora", default="[None]", metavar="NAME",
                   help="continue training a LoRA from the models' loras folder")
    p.add_argument("--temp-dir", default="temp",
                   help="where the resumable training state is kept (default ./temp)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_lora)
