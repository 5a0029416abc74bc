"""Train the shipped tiny CLIP vision tower and style model on the procedural shapes against the embedded model's
text encoder, measure caption retrieval and the style model's effect on generated images, write both files into
nodes/models/embedded/ and the figures into the model card.

    nice -n 10 python scripts/train_clip_vision.py --threads 1

A few minutes on one CPU core (training), then about a minute of sampling for the measurement.
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
    parser.add_argument("--steps", type=int, help="training steps (default: the settings')")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--output-dir", type=Path, help="where the two files go (default: the shipped folder)")
    parser.add_argument("--card", type=Path, help="model card whose clip-vision section is rewritten "
                                                  "(default: the shipped MODEL_CARD.md; 'none' to skip)")
    parser.add_argument("--style-count", type=int, default=16, help="reference images for the style measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from safetensors.torch import save_file

    from nodes.models.embedded import ADAPTERS, EMBEDDED_PATH, MODEL_DIR
    from nodes.sd.loading import load_checkpoint
    from training.card import replace_section
    from training.clip_vision import ClipVisionSettings, retrieval, settings_record, train_clip_vision
    from training.clip_vision_eval import style_effect

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = ClipVisionSettings(**({"steps": args.steps} if args.steps else {}))
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    loaded = load_checkpoint(EMBEDDED_PATH)
    encoder = loaded.clip.encoders[0]
    started = time.perf_counter()
    tower, adapter = train_clip_vision(encoder, settings)
    minutes = (time.perf_counter() - started) / 60
    figures = {"retrieval": retrieval(tower, encoder, settings),
               "retrieval_held_out_combinations": retrieval(tower, encoder, settings, held_out=True)}
    print(json.dumps(figures), flush=True)
    out_dir = args.output_dir or MODEL_DIR
    record = {"command": command, "settings": settings_record(settings), "train_minutes": round(minutes, 2),
              "threads": torch.get_num_threads(), "torch": torch.__version__, **figures}
    vision_meta = {"clip_vision": {"num_attention_heads": settings.heads, "hidden_act": "quick_gelu"}}
    style_meta = {"style_model": {"heads": settings.style_heads}}
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(out_dir / ADAPTERS["clip_vision"][1]),
              metadata={"nodegraph_config": json.dumps(vision_meta), "nodegraph_training": json.dumps(record)})
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(out_dir / ADAPTERS["style_model"][1]),
              metadata={"nodegraph_config": json.dumps(style_meta), "nodegraph_training": json.dumps(record)})
    started = time.perf_counter()
    effect = style_effect(loaded, tower, adapter, count=args.style_count)
    record["style_effect"] = effect
    record["style_effect_minutes"] = round((time.perf_counter() - started) / 60, 2)
    card = args.card or MODEL_DIR / "MODEL_CARD.md"
    if str(card) != "none":
        r, h = figures["retrieval"], figures["retrieval_held_out_combinations"]
        rows = "\n".join(f"  | {mode} | {v['fg']} | {v['shape']} | {v['bg']} |" for mode, v in effect.items())
        body = (f"- Command: `nice -n 10 {command}` ({record['train_minutes']} min training on {record['threads']} "
                f"CPU thread(s), torch {record['torch']}; {record['style_effect_minutes']} min measuring)\n"
                f"- Caption retrieval (top-1 of all 450 colour/shape/background captions, 512 fresh renders): "
                f"**{r['caption_accuracy']}** (foreground {r['fg_accuracy']}, shape {r['shape_accuracy']}, "
                f"background {r['bg_accuracy']}); on held-out combinations {h['caption_accuracy']} "
                f"(foreground {h['fg_accuracy']}, shape {h['shape_accuracy']}, background {h['bg_accuracy']})\n"
                f"- Style model, {args.style_count} references, empty prompt, seeds 0..{args.style_count - 1}: "
                f"fraction of generated images whose classified foreground / shape / background matches the "
                f"reference\n\n  | conditioning | foreground | shape | background |\n  |---|---|---|---|\n{rows}\n"
                f"- Settings: `{json.dumps(record['settings'])}`")
        card.write_text(replace_section(card.read_text(), "clip-vision", body))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
