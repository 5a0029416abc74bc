"""Measure classifier guidance (ClassifierGuidance + the shipped noisy classifier) on the embedded model: shape
accuracy against guidance scale, unconditionally (empty prompt, no CFG) and against a conflicting prompt (CFG 6),
beside plain CFG on prompts naming the shape. Prints a line per setting, then one JSON object of every figure.

    nice -n 10 python scripts/evaluate_classifier_guidance.py --seeds 20 --scales 0 1 2 5 10 20

Seed k guides toward shape k mod 5 (so 20 seeds are 4 per shape); see training/classifier_guidance_eval.py.
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
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=5000)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 5.0, 10.0, 20.0])
    parser.add_argument("--cfgs", type=float, nargs="+", default=[1.0, 3.0, 6.0])
    parser.add_argument("--modes", nargs="+", default=["unconditional", "conflicting"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classifier", type=Path, help="a classifier file (default: the shipped one)")
    args = parser.parse_args(argv)
    import torch

    from nodes.guidance_classifier.nodes import load_classifier_handle
    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from nodes.sd.loading import load_checkpoint
    from training.classifier_guidance_eval import cfg_accuracy, guided_accuracy

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    loaded = load_checkpoint(EMBEDDED_PATH)
    classifier = load_classifier_handle(args.classifier or default_adapter_path("classifier"))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    figures: dict[str, dict[str, float]] = {}
    for mode in args.modes:
        figures[mode] = {}
        for scale in args.scales:
            accuracy = guided_accuracy(loaded, classifier, scale, mode=mode, seeds=seeds, steps=args.steps)
            figures[mode][f"{scale:g}"] = round(accuracy, 4)
            print(f"{mode}, classifier scale {scale:g}: accuracy {accuracy:.2%}", flush=True)
    figures["cfg_prompt_names_class"] = {}
    for cfg in args.cfgs:
        accuracy = cfg_accuracy(loaded, cfg, seeds=seeds, steps=args.steps)
        figures["cfg_prompt_names_class"][f"{cfg:g}"] = round(accuracy, 4)
        print(f"CFG {cfg:g}, prompt names the shape: accuracy {accuracy:.2%}", flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    print(json.dumps({"command": command, "seeds": args.seeds, "steps": args.steps, **figures,
                      "wall_seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
