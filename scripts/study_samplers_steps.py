"""Study: which sampler reaches a given quality in the fewest steps, on the embedded model.

Runs the X/Y/Z graph of workflows/xyz-samplers-steps.json (samplers across, steps down, one KSampler call per
cell) once per evaluation prompt, then scores every cell's images: conditional accuracy (the analytic shapes
classifier, training/classifier.py: shape, foreground and background colour all as asked) and SF-FID
(training/fid.py, hand-made features, comparable only with itself at equal image counts) against real renders
of the same prompts. Writes the grid of the workflow's own prompt, the two charts (drawn by Plot Metric's
chart code) and a results table. The last printed line is one JSON object of the figures.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/study_samplers_steps.py            # the full study (~4 min of CPU)
    python scripts/study_samplers_steps.py --prompts 2 --batch 2 --steps 2,4 --samplers euler,heun --out /tmp/s
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from graphs_xyz import STUDY_PROMPT, STUDY_SAMPLERS, STUDY_STEPS, samplers_steps  # noqa: E402
from nodegraph.app import AppConfig, build_engine  # noqa: E402
from nodegraph.formats.api import from_api  # noqa: E402
from nodes.xyz.charts import render_chart, series_data  # noqa: E402
from training.classifier import classify  # noqa: E402
from training.evaluate import evaluation_items, real_renders  # noqa: E402
from training.fid import fid  # noqa: E402

EVALUATIONS_PER_STEP = {"heun": 2}
"""Denoiser calls per step where a sampler makes more than one (Heun: 2, except its last step)."""


def evaluations(sampler: str, steps: int) -> int:
    """Model evaluations of `steps` steps (Heun's last step is an Euler step: 2n - 1)."""
    per = EVALUATIONS_PER_STEP.get(sampler, 1)
    return steps if per == 1 else per * steps - 1


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    pixels = (batch.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default=",".join(STUDY_SAMPLERS))
    parser.add_argument("--steps", default=",".join(str(s) for s in STUDY_STEPS))
    parser.add_argument("--prompts", type=int, default=8, help="evaluation prompts (the 'seen' group's first N)")
    parser.add_argument("--batch", type=int, default=4, help="images per prompt and cell (noise seeds)")
    parser.add_argument("--quality", type=float, default=0.9,
                        help="target: this fraction of the best cell's accuracy (default 0.9)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the grid and charts go")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samplers = tuple(s.strip() for s in args.samplers.split(","))
    steps = tuple(int(s) for s in args.steps.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    items = [item for item in evaluation_items(seeds_per_prompt=1) if item.group == "seen"][: args.prompts]
    with tempfile.TemporaryDirectory() as tmp:
        engine = build_engine(AppConfig(output_dir=Path(tmp) / "out", input_dir=Path(tmp) / "in",
                                        temp_dir=Path(tmp) / "temp", models_dir=Path(tmp) / "models", device="cpu"))
        # the grid of the shipped workflow's prompt, as `nodegraph run workflows/xyz-samplers-steps.json` makes it
        result = engine.run(from_api(samplers_steps(samplers, steps, STUDY_PROMPT, batch_size=args.batch)))
        (saved,) = result.ui["23"]["images"]
        shutil.copy(Path(tmp) / "out" / saved["filename"], out / "study_samplers_steps_grid.png")
        cells: dict[tuple[str, int], list[Image.Image]] = {}
        hits: dict[tuple[str, int], list[bool]] = {}
        for number, item in enumerate(items):
            graph = samplers_steps(samplers, steps, item.prompt, batch_size=args.batch, seed=1000 + number)
            result = engine.run(from_api(graph), outputs=["8", "22"])
            images, plot = result.values["8"][0], result.values["22"][9]
            for index, (i, j, _) in enumerate(plot.cells()):
                key = (plot.x.values[i], plot.y.values[j])
                pictures = to_pil(images[index])
                cells.setdefault(key, []).extend(pictures)
                for picture in pictures:
                    found = classify(picture)
                    hits.setdefault(key, []).append(
                        (found.shape, found.fg, found.bg) == (item.spec.shape, item.spec.fg, item.spec.bg))
            print(f"prompt {number + 1}/{len(items)}: {item.prompt} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    real = real_renders(items, args.batch, offset=1)
    floor = fid(real_renders(items, args.batch, offset=2), real)
    accuracy = {key: float(np.mean(value)) for key, value in hits.items()}
    distance = {key: fid(value, real) for key, value in cells.items()}

    best = max(accuracy.values())
    target = args.quality * best
    fewest: dict[str, Any] = {}
    for sampler in samplers:
        reached = [s for s in steps if accuracy[(sampler, s)] >= target]
        first = min(reached) if reached else None
        fewest[sampler] = {"steps": first, "evaluations": evaluations(sampler, first) if first else None}
    ranked = sorted((v["evaluations"], k) for k, v in fewest.items() if v["evaluations"] is not None)

    keys = [(sampler, s) for s in steps for sampler in samplers]
    for name, values, label in (("accuracy", accuracy, "conditional accuracy"), ("fid", distance, "SF-FID")):
        data = series_data([values[k] for k in keys], [k[1] for k in keys], [k[0] for k in keys])
        chart = render_chart(data, title=f"{label} against steps ({len(items) * args.batch} images per point)",
                             x_label="steps", y_label=label, width=640, height=420)
        Image.fromarray(chart).save(out / f"study_samplers_steps_{name}.png")

    print("\n| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for sampler in samplers:
        row = [f"{accuracy[(sampler, s)]:.2f} / {distance[(sampler, s)]:.3f}" for s in steps]
        print(f"| {sampler} | " + " | ".join(row) + " |")
    print(f"\naccuracy / SF-FID per cell; SF-FID floor (real vs real, same count): {floor:.3f}")
    print(f"target accuracy {target:.3f} ({args.quality:.0%} of the best cell, {best:.3f}); fewest steps per sampler: "
          + ", ".join(f"{k}: {v['steps']} steps ({v['evaluations']} evaluations)" for k, v in fewest.items()))
    figures = {"images_per_cell": len(items) * args.batch, "fid_floor": round(floor, 4), "target": round(target, 4),
               "accuracy": {f"{k[0]}@{k[1]}": round(v, 4) for k, v in accuracy.items()},
               "sf_fid": {f"{k[0]}@{k[1]}": round(v, 4) for k, v in distance.items()},
               "fewest_steps": fewest, "fastest": ranked[0][1] if ranked else None,
               "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
