"""Score a shapes model's prompt adherence (colours, shape, size, position) and SF-FID.

    OMP_NUM_THREADS=2 python scripts/evaluate_embedded_model.py --card nodes/models/embedded/MODEL_CARD.md

Writes metrics.json and a contact sheet (one row per prompt) to --out; the last stdout line is the metrics JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "nodes/models/embedded/nodegraph-tiny-shapes.safetensors")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--spacing", default="trailing", choices=("trailing", "leading", "linspace"))
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/evaluation")
    parser.add_argument("--card", type=Path, help="model card whose evaluation section is rewritten")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from training.card import write_evaluation
    from training.evaluate import contact_sheet, evaluate
    from training.generate import generator_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    generate = generator_from_checkpoint(
        args.checkpoint, steps=args.steps, cfg=args.cfg, spacing=args.spacing, resolution=args.resolution
    )
    from nodes.sd.loading import load_checkpoint  # cached: the same modules the generator uses

    vae = load_checkpoint(args.checkpoint).vae.vae
    metrics, images = evaluate(generate, seeds_per_prompt=args.seeds, vae=vae, progress=not args.no_progress)
    metrics["command"] = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", "-", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    contact_sheet(images, args.seeds).save(args.out / "contact_sheet.png")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if args.card:
        write_evaluation(args.card, metrics)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
