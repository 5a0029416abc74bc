"""Train the shipped tiny 2x upscaler (SRVGGNetCompact) on the procedural shapes, measure it against bicubic on
held-out shapes, write it into nodes/models/embedded/ and its figures into the model card.

    nice -n 10 python scripts/train_upscaler.py --threads 1

A few minutes on one CPU core; deterministic for a given seed and thread count.
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
    parser.add_argument("--steps", type=int, help="training steps (default: the settings' 1500)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--output", type=Path, help="the weight file to write (default: the shipped one)")
    parser.add_argument("--card", type=Path, help="model card whose upscaler section is rewritten "
                                                  "(default: the shipped MODEL_CARD.md; 'none' to skip)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from safetensors.torch import save_file

    from nodes.models.embedded import MODEL_DIR, default_adapter_path
    from training.card import replace_section
    from training.upscaler import UpscalerSettings, evaluate_upscaler, settings_record, train_upscaler

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = UpscalerSettings(**({"steps": args.steps} if args.steps else {}))
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    started = time.perf_counter()
    model = train_upscaler(settings)
    minutes = (time.perf_counter() - started) / 60
    figures = evaluate_upscaler(model)
    output = args.output or default_adapter_path("upscale")
    record = {"command": command, "settings": settings_record(settings), "train_minutes": round(minutes, 2),
              "threads": torch.get_num_threads(), "torch": torch.__version__, **figures}
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(output), metadata={"nodegraph_upscaler": json.dumps(record)})
    card = args.card or MODEL_DIR / "MODEL_CARD.md"
    if str(card) != "none":
        body = (f"- Command: `nice -n 10 {command}` ({record['train_minutes']} min on {record['threads']} CPU "
                f"thread(s), torch {record['torch']})\n"
                f"- Held-out shapes ({figures['images']} images, {figures['low_resolution']} -> "
                f"{2 * figures['low_resolution']} px, half striped): model **{figures['model_psnr_db']} dB** PSNR, "
                f"bicubic {figures['bicubic_psnr_db']} dB\n"
                f"- Settings: `{json.dumps(record['settings'])}`")
        card.write_text(replace_section(card.read_text(), "upscaler", body))
    print(json.dumps(record))
    return 0 if figures["model_psnr_db"] > figures["bicubic_psnr_db"] else 1


if __name__ == "__main__":
    sys.exit(main())
