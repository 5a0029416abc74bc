"""Train the embedded model's silhouette T2I-Adapter; re-run to resume.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_t2i_adapter.py --minutes 30 --threads 1

Trains against the shipped checkpoint (loaded by the node layer's own loader) and writes
nodes/models/embedded/nodegraph-tiny-shapes-silhouette-t2i.safetensors (listed under `controlnet`). Measure it
(`--evaluate 6`: IoU of the drawn shape with the silhouette over 6 shapes x 4 images). Exit status
3: the budget ran out before the schedule finished; re-run the same command to continue.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, help="wall-clock budget (fits the step count on a fresh run)")
    parser.add_argument("--steps", type=int, help="planned steps (the cap when --minutes is given)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "t2i_adapter")
    parser.add_argument("--output", type=Path, help="the adapter file to write (default: the shipped one)")
    parser.add_argument("--checkpoint", type=Path, help="base checkpoint (default: the embedded model)")
    parser.add_argument("--settings", type=Path, help="JSON file of setting overrides")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--evaluate", type=int, metavar="SHAPES", help="only measure the shipped adapter's IoU "
                        "on SHAPES evaluation shapes (4 images each) and print it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from training.pipeline import pick_device
    from training.t2i_adapter import AdapterSettings, train_t2i_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.evaluate:
        return evaluate(args.evaluate)
    device = pick_device(args.device)
    output = args.output or default_adapter_path("t2i_adapter")
    overrides = json.loads(args.settings.read_text()) if args.settings else {}
    if args.steps:
        overrides["steps"] = args.steps
    settings = AdapterSettings(**overrides)
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    started = time.perf_counter()
    result = train_t2i_adapter(settings, args.run_dir, args.checkpoint or EMBEDDED_PATH, output,
                               seconds=None if args.minutes is None else args.minutes * 60.0, device=device,
                               progress=not args.no_progress, metadata={"nodegraph_command": command})  # fmt: skip
    record = {
        "adapter": "t2i_adapter", "command": command, "done": result.done, "step": result.step,
        "total_steps": result.total_steps, "seconds_total": round(result.seconds, 1),
        "seconds_this_session": round(time.perf_counter() - started, 1),
        "steps_per_second": round(result.step / result.seconds, 3) if result.seconds else 0.0,
        "last": result.last_figures, "settings": settings.to_json(), "device": device,
        "threads": torch.get_num_threads(), "output": str(output) if result.done else None,
    }  # fmt: skip
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.run_dir) / "record.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
    return 0 if result.done else 3


def evaluate(shapes: int) -> int:
    import tempfile

    from nodegraph.app import AppConfig, build_engine
    from training.t2i_adapter import card_line
    from training.t2i_adapter import evaluate as measure

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        (scratch / "input").mkdir()
        engine = build_engine(AppConfig(output_dir=scratch / "output", input_dir=scratch / "input",
                                        temp_dir=scratch / "temp", models_dir=scratch / "models"))  # fmt: skip
        found = measure(engine, shapes)
    print(card_line(found))
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), **{k: v for k, v in found.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
