"""Train the shipped tiny PhotoMaker ID encoder for the embedded model (training/photomaker.py), measure its
effect (training/photomaker_eval.py) and write nodes/models/embedded/nodegraph-tiny-shapes-photomaker.safetensors
and the model card's photomaker section.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_photomaker.py --threads 1 --minutes 15

Last printed line: one JSON object (settings, steps, wall time, losses, measured effect).
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
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall-time budget")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--count", type=int, default=32, help="images for the effect measurement (0: skip)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "photomaker")
    parser.add_argument("--output-dir", type=Path, help="where the file goes (default: the shipped folder)")
    parser.add_argument("--card", type=Path, help="model card to update (default: the shipped one; 'none' skips)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from safetensors.torch import save_file

    from nodes.models.embedded import ADAPTERS, EMBEDDED_PATH, MODEL_DIR, default_adapter_path
    from nodes.sd.clip_vision import _file_overrides, build_vision_model
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.loading.files import read_raw
    from training.card import replace_section
    from training.photomaker import PhotoMakerSettings, file_state_dict, train_photomaker
    from training.photomaker_eval import photomaker_effect

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    loaded = load_checkpoint(EMBEDDED_PATH)
    tensors, metadata = read_raw(default_adapter_path("clip_vision"))
    overrides = _file_overrides(metadata, "the shipped CLIP vision tower")
    tower = build_vision_model(tensors, "the shipped CLIP vision tower", overrides)
    settings = PhotoMakerSettings(seconds=args.minutes * 60, max_steps=args.max_steps, batch_size=args.batch_size,
                                  lr=args.lr)
    model, record = train_photomaker(settings, loaded, tower, args.work_dir)
    record.update(command=command, threads=torch.get_num_threads(), torch=torch.__version__)
    print(json.dumps(record), flush=True)
    out = (args.output_dir or MODEL_DIR) / ADAPTERS["photomaker"][1]
    config = {"clip_vision": {"num_attention_heads": int(overrides.get("num_attention_heads", 1)),
                              "hidden_act": overrides.get("hidden_act", "quick_gelu")}}
    save_file(file_state_dict(model), str(out),
              metadata={"nodegraph_config": json.dumps(config), "nodegraph_training": json.dumps(record)})
    if args.count:
        started = time.perf_counter()
        record["effect"] = photomaker_effect(loaded, model, count=args.count)
        record["effect_minutes"] = round((time.perf_counter() - started) / 60, 2)
        print(json.dumps(record["effect"]), flush=True)
    card = args.card or MODEL_DIR / "MODEL_CARD.md"
    if args.count and str(card) != "none":
        card.write_text(replace_section(card.read_text(), "photomaker", card_body(record, args.count, out)))
    print(json.dumps(record))
    return 0


def card_body(record: dict, count: int, path: Path) -> str:
    effect = record["effect"]
    rows = "\n".join(f"  | {mode} | {v['shape']} | {v['fg']} | {v['bg']} |" for mode, v in effect.items())
    return (f"- Command: `OMP_NUM_THREADS=1 nice -n 10 {record['command']}`: {record['steps']} steps in "
            f"{record['train_seconds'] / 60:.1f} min on {record['threads']} CPU thread(s) (torch {record['torch']}); "
            f"loss {record['first_loss']} (first 50 steps) -> {record['final_loss']} (last 100); "
            f"{record['effect_minutes']} min measuring. File: {path.stat().st_size / 1024:.0f} KB (fp16).\n"
            f"- Effect (training/photomaker_eval.py, {count} trials, 1-4 reference renders each, prompt "
            f"\"a photograph of shape photomaker on a <bg> background\", euler/simple 20 steps, cfg 6, same seeds): "
            f"fraction of generated images whose classified shape / foreground / background equals the references' "
            f"shape and colour and the prompt's background\n\n"
            f"  | conditioning | shape | foreground | background |\n  |---|---|---|---|\n{rows}\n"
            f"- Settings: `{json.dumps(record['settings'])}`")


if __name__ == "__main__":
    sys.exit(main())
