"""Measure the embedded InstructPix2Pix and depth-to-image models (training/ip2p_depth_eval.py).

    nice -n 10 python scripts/evaluate_ip2p_depth.py --count 16 --threads 1

InstructPix2Pix: `count` edits of each kind (colour, shape, background), one seed each; success and preservation
per kind, at the workflow's guidance scales (text 5, image 1.5) and (--second-setting) text 2, image 6. Depth: `count` depth maps,
a batch of 4 each; IoU with the depth map's region beside the base model on the same prompts and seeds. The last
line printed is one JSON object of named figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=16, help="edits per kind, and depth maps")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (the workflows' 20 by default)")
    parser.add_argument("--second-setting", action="store_true", help="also InstructPix2Pix at text 2, image 6")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--skip", choices=("pix2pix", "depth"), help="measure only the other model")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from tiny_models import engine_at
    from training import ip2p_depth_eval as ev

    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict[str, float] = {"count": args.count, "steps": args.steps}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "input").mkdir()
        engine = engine_at(root, input_dir=root / "input")
        started = time.perf_counter()
        if args.skip != "pix2pix":
            edits = ev.eval_edits(args.count)
            settings = [("", {})] + [("text2_image6_", {"text_scale": 2.0, "image_scale": 6.0})] * args.second_setting
            for label, scales in settings:
                outcomes = []
                for seed, edit in enumerate(edits):
                    outcomes.append(ev.judge_edit(edit, ev.pix2pix_edit(engine, edit, root / "input", seed,
                                                                        steps=args.steps, **scales)))
                    got = outcomes[-1].result
                    print(f"{label}{edit.instruction!r} on a {edit.source.fg} {edit.source.shape} on "
                          f"{edit.source.bg}: got {got.fg} {got.shape} on {got.bg}", flush=True)
                figures.update({label + key: round(value, 4) for key, value in ev.pix2pix_rates(outcomes).items()})
            figures["pix2pix_seconds"] = round(time.perf_counter() - started, 1)
        if args.skip != "depth":
            started = time.perf_counter()
            rng = random.Random(1)
            scores = {"depth": [], "base": []}
            for seed, spec in enumerate(ev.eval_specs(args.count, seed=1)):
                prompt, fg, bg = ev.depth_prompt(spec, rng)
                for kind in scores:
                    batch = ev.depth_images(engine, spec, prompt, root / "input", seed, base=kind == "base",
                                            steps=args.steps)
                    scores[kind] += ev.depth_scores(spec, batch, fg, bg)
                    print(f"{kind} {prompt!r}: IoU {[round(s[0], 2) for s in scores[kind][-len(batch):]]}", flush=True)
            for kind, values in scores.items():
                ious = np.array([v[0] for v in values])
                figures[f"{kind}_iou_mean"] = round(float(ious.mean()), 4)
                figures[f"{kind}_iou_over_0.5"] = round(float((ious > 0.5).mean()), 4)
                figures[f"{kind}_prompt_followed"] = round(float(np.mean([v[1] for v in values])), 4)
            figures["depth_images"] = len(scores["depth"])
            figures["depth_seconds"] = round(time.perf_counter() - started, 1)
    figures["threads"] = torch.get_num_threads()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
