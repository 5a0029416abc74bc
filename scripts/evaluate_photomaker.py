"""Measure the shipped tiny PhotoMaker (training/photomaker_eval.py): the share of generated images whose shape
(and colour) equals the reference images', with PhotoMakerEncode and with the same prompt as plain text.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/evaluate_photomaker.py --count 64 --threads 1

Last printed line: one JSON object of named figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=64, help="trials (each: one image with, one without)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--file", type=Path, help="PhotoMaker file (default: the shipped one)")
    args = parser.parse_args(argv)
    import torch

    from nodegraph.models import ModelManager
    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.photomaker import load_photomaker
    from training.photomaker_eval import photomaker_effect

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_checkpoint(EMBEDDED_PATH)
    model = load_photomaker(args.file or default_adapter_path("photomaker"), manager=ModelManager("cpu")).model
    started = time.perf_counter()
    effect = photomaker_effect(loaded, model, count=args.count, seed=args.seed, steps=args.steps)
    figures = {"count": args.count, "seed": args.seed, "steps": args.steps,
               "shape_with_photomaker": effect["photomaker"]["shape"], "shape_text_only": effect["text_only"]["shape"],
               "fg_with_photomaker": effect["photomaker"]["fg"], "fg_text_only": effect["text_only"]["fg"],
               "bg_with_photomaker": effect["photomaker"]["bg"], "bg_text_only": effect["text_only"]["bg"],
               "minutes": round((time.perf_counter() - started) / 60, 2)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
