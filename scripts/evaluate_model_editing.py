"""Measure TIME model editing (TextToImageModelEdit) on the embedded model: does "circle" now draw squares, and do
the other shapes stay? Prints a line per setting and, last, one JSON object with every figure.

    nice -n 10 python scripts/evaluate_model_editing.py --seeds 16 --lambdas 0.1 10 100 1000

Images: 20 Euler steps (trailing spacing), CFG 6, one seeded (fg, bg) combination per seed and shape
(training/model_editing_eval.py); shapes read by the analytic classifier (training/classifier.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 10.0, 100.0, 1000.0])
    parser.add_argument("--source", default="circle")
    parser.add_argument("--destination", default="square")
    parser.add_argument("--preserve", nargs="*", default=[], help="preserved prompts (mapped to themselves)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.shapes import SHAPES
    from training.model_editing_eval import evaluate_edit, rates, shapes_drawn

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    loaded = load_checkpoint(EMBEDDED_PATH)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    source_shape, destination_shape = args.source.split()[-1], args.destination.split()[-1]
    base = rates({s: shapes_drawn(loaded, loaded.model, s, seeds, args.steps) for s in SHAPES}, source_shape, None)
    print(f"base: {source_shape} drawn {base['source_rate']:.2%}, others {base['others_kept']:.2%}", flush=True)
    edits = []
    for lamb in args.lambdas:
        result = evaluate_edit(loaded, source_shape, destination_shape, seeds, source=args.source,
                               destination=args.destination, lamb=lamb, preserve=args.preserve, steps=args.steps)
        edits.append(result)
        print(f"lambda {lamb:g}: {source_shape} prompts -> {destination_shape} {result['source_rate']:.2%}, "
              f"others kept {result['others_kept']:.2%}", flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    print(json.dumps({"command": command, "seeds": args.seeds, "base": base, "edits": edits,
                      "wall_seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
