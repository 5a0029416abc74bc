"""Train the embedded model's adapters: the striped style LoRA and the outline ControlNet; re-run to resume.

    OMP_NUM_THREADS=1 python scripts/train_adapters.py lora --minutes 25 --threads 1
    OMP_NUM_THREADS=1 python scripts/train_adapters.py controlnet --minutes 40 --threads 1

Both train against the shipped checkpoint (loaded by the node layer's own loader) and write into
nodes/models/embedded/ (loras/, controlnet/), where the app lists them. Exit status 3: the budget ran out
before the schedule finished; re-run the same command to continue.
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
    parser.add_argument("adapter", choices=("lora", "controlnet"))
    parser.add_argument("--minutes", type=float, help="wall-clock budget (fits the step count on a fresh run)")
    parser.add_argument("--steps", type=int, help="planned steps (the cap when --minutes is given)")
    parser.add_argument("--run-dir", type=Path, help="resumable run folder (default runs/<adapter>)")
    parser.add_argument("--output", type=Path, help="the adapter file to write (default: the shipped one)")
    parser.add_argument("--checkpoint", type=Path, help="base checkpoint (default: the embedded model)")
    parser.add_argument("--settings", type=Path, help="JSON file of setting overrides")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--card", type=Path, help="model card whose adapter-training section is rewritten")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from training.pipeline import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    run_dir = args.run_dir or ROOT / "runs" / args.adapter
    output = args.output or default_adapter_path(args.adapter)
    checkpoint = args.checkpoint or EMBEDDED_PATH
    overrides = json.loads(args.settings.read_text()) if args.settings else {}
    if args.steps:
        overrides["steps"] = args.steps
    seconds = None if args.minutes is None else args.minutes * 60.0
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    started = time.perf_counter()
    if args.adapter == "lora":
        from training.lora import LoraSettings, train_lora

        settings = LoraSettings(**overrides)
        result = train_lora(settings, run_dir, checkpoint, output, seconds=seconds, device=device,
                            progress=not args.no_progress, metadata={"nodegraph_command": command})  # fmt: skip
    else:
        from training.controlnet import ControlSettings, train_controlnet

        settings = ControlSettings(**overrides)
        result = train_controlnet(settings, run_dir, checkpoint, output, seconds=seconds, device=device,
                                  progress=not args.no_progress, metadata={"nodegraph_command": command})  # fmt: skip
    record = {
        "adapter": args.adapter, "command": command, "done": result.done, "step": result.step,
        "total_steps": result.total_steps, "seconds_total": round(result.seconds, 1),
        "seconds_this_session": round(time.perf_counter() - started, 1),
        "steps_per_second": round(result.step / result.seconds, 3) if result.seconds else 0.0,
        "last": result.last_figures,
        "settings": settings.to_json(), "device": device, "threads": torch.get_num_threads(),
        "output": str(output) if result.done else None,
    }  # fmt: skip
    (Path(run_dir) / "record.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
    if args.card:
        write_card(args.card)
    return 0 if result.done else 3


def write_card(card: Path) -> None:
    """Rewrite the card's adapter-training section from the records in runs/lora and runs/controlnet."""
    import platform

    import torch

    from training.card import replace_section

    lines = []
    for adapter in ("lora", "controlnet"):
        path = ROOT / "runs" / adapter / "record.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        where = "CUDA" if r["device"].startswith("cuda") else f"{platform.machine()} CPU, {r['threads']} thread(s)"
        lines.append(f"- {adapter}: `{r['command']}`; {r['step']} of {r['total_steps']} steps in "
                     f"{r['seconds_total'] / 60:.1f} min ({r['steps_per_second']:.2f} it/s, {where}, torch "
                     f"{torch.__version__}); last loss {r['last'].get('loss', float('nan')):.4g}; batch "
                     f"{r['settings']['batch_size']}, lr {r['settings']['lr']}, {'done' if r['done'] else 'unfinished'}.")
    card.write_text(replace_section(card.read_text(), "adapter-training", "\n".join(lines)))


if __name__ == "__main__":
    sys.exit(main())
