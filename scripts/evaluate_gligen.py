"""Measure the shipped GLIGEN's box hit rate (with vs without the text box) and write it into the model card.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/evaluate_gligen.py --threads 1 --trials 12
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trials", type=int, default=12, help="prompts x corners (4 images each)")
    parser.add_argument("--card", type=Path, help="model card to update (default: the shipped one; 'none' to skip)")
    args = parser.parse_args(argv)
    import torch
    from safetensors import safe_open

    from nodegraph.app import AppConfig, build_engine
    from nodes.models.embedded import MODEL_DIR, default_adapter_path
    from training.card import replace_section
    from training.gligen import box_hit_rates

    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="gligen_eval_"))
    engine = build_engine(AppConfig(output_dir=scratch / "output", input_dir=scratch / "input",
                                    temp_dir=scratch / "temp", models_dir=scratch / "models", device="cpu"))
    started = time.perf_counter()
    figures = box_hit_rates(engine, args.trials)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    with safe_open(str(default_adapter_path("gligen")), "pt") as handle:
        record = json.loads((handle.metadata() or {})["nodegraph_gligen"])
    card = args.card or MODEL_DIR / "MODEL_CARD.md"
    if str(card) != "none":
        phases = "; ".join(f"phase {n}: {phase['steps']} steps, {phase['seconds'] / 60:.1f} min, t from "
                           f"{phase['settings']['min_timestep']} for {phase['settings']['high_t_fraction']:.0%} of "
                           f"each batch" for n, phase in enumerate(record.get("phases", []), 1))
        body = (f"- Last command: `OMP_NUM_THREADS=1 nice -n 10 {record['command']}` ({record['steps']} steps in "
                f"all, {record['train_seconds'] / 60:.1f} min on {record['threads']} CPU thread of a shared 2-core "
                f"machine, torch {record['torch']}; {phases}; final loss {record['final_loss']}, box-attention "
                f"loss {record.get('final_attention_loss')})\n"
                f"- Loss at t 600-999 on 64 held-out pictures (`box_loss_gap`): {record.get('loss_right_boxes')} with "
                f"each picture's own box, {record.get('loss_shuffled_boxes')} with the boxes shuffled, "
                f"{record.get('loss_none_boxes')} without GLIGEN\n"
                f"- Box hit rate ({figures['images']} images, 20 Euler steps, CFG 6, 56 px boxes in the four corners, "
                f"prompts without position words; a hit: the generated shape's centroid lies in the box): "
                f"**{figures['hit_rate_with_gligen']:.1%} with GLIGEN**, {figures['hit_rate_without']:.1%} without; "
                f"centroid to box centre {figures['distance_px_with_gligen']} px with, "
                f"{figures['distance_px_without']} px without; the shapes classifier reads the named shape and "
                f"colour in {figures['named_shape_rate_with_gligen']:.1%} with, "
                f"{figures['named_shape_rate_without']:.1%} without, and that shape in the box in "
                f"{figures['named_shape_hit_rate_with_gligen']:.1%} with, {figures['named_shape_hit_rate_without']:.1%} "
                f"without "
                f"(`OMP_NUM_THREADS=1 python scripts/evaluate_gligen.py --trials {args.trials}`, "
                f"{figures['seconds'] / 60:.1f} min)\n"
                f"- Settings: `{json.dumps(record['settings'])}`")
        card.write_text(replace_section(card.read_text(), "gligen", body))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
