"""Measure the embedded model's adapters and guidance through the shipped workflows (figures for the model card).

    python scripts/evaluate_adapters.py --threads 2 --card nodes/models/embedded/MODEL_CARD.md

- LoRA (workflows/lora.json): the background's texture energy at strength 1 and 0 (0 is the base image).
- ControlNet (workflows/controlnet.json): IoU of the generated shape with the outline's shape, at strength
  1, at strength 0, and with the control only over the first half of the steps.
- SEGA (workflows/sega.json): the concept colour's pixel fraction with the concept added / removed, against
  the same graph at scale 0 (plain CFG).
- SAG (workflows/sag.json): mean pixel change against scale 0, and whether a re-run is identical.
Writes runs/adapters/metrics.json and runs/adapters/contact_sheet.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LORA_PROMPTS = [("star", "yellow", "purple"), ("circle", "red", "blue"), ("square", "white", "green"),
                ("triangle", "black", "orange")]  # fmt: skip


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (each run is a batch of 4)")
    parser.add_argument("--control-shapes", type=int, default=12)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "adapters")
    parser.add_argument("--card", type=Path, help="model card whose adapters section is rewritten")
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from nodegraph.app import AppConfig, build_engine
    from training import adapter_eval as ae
    from training.card import replace_section

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="adapters-"))
    input_dir = scratch / "input"

    def fresh_engine():  # a new engine: no cached node outputs
        return build_engine(AppConfig(output_dir=scratch / "output", input_dir=input_dir, temp_dir=scratch / "temp",
                                      models_dir=scratch / "models"))  # fmt: skip

    engine = fresh_engine()
    seeds = range(args.seeds)
    sheet: list[np.ndarray] = []

    energy: dict[float, list[float]] = {1.0: [], 0.0: []}
    for shape, fg, bg in LORA_PROMPTS:
        for seed in seeds:
            graph = ae.workflow(engine, "lora").with_widget("6", "text", f"a {fg} {shape} on a {bg} background, striped")
            graph = graph.with_widget("3", "seed", seed)
            for strength in energy:
                batch = ae.images(engine, graph.with_widget("10", "strength_model", strength)
                                  .with_widget("10", "strength_clip", strength))  # fmt: skip
                energy[strength] += [ae.background_texture(image) for image in batch]
                if seed == 0:
                    sheet.append(np.concatenate(batch, axis=1))

    control: dict[str, list[float]] = {"strength 1": [], "strength 0": [], "first half only": []}
    variants = {"strength 1": {}, "strength 0": {"strength": 0.0}, "first half only": {"end_percent": 0.5}}
    for index, spec in enumerate(ae.control_specs(args.control_shapes)):
        for name, apply in variants.items():
            control[name] += ae.control_iou(engine, spec, input_dir, index, **apply)
        if index < 4:
            outline = np.asarray(Image.open(input_dir / ae.write_outline(spec, input_dir)).convert("RGB"))
            graph = ae.workflow(engine, "controlnet").with_widget("10", "image", ae.write_outline(spec, input_dir))
            graph = graph.with_widget("6", "text", f"a {spec.fg} {spec.shape} on a {spec.bg} background")
            sheet.append(np.concatenate([outline, *ae.images(engine, graph.with_widget("3", "seed", index))[:3]], axis=1))

    sega: dict[str, list[tuple[float, float]]] = {"add red": [], "remove red": []}
    setups = {"add red": ("a circle on a blue background", "add"), "remove red": ("a red circle on a blue background", "remove")}
    for name, (text, direction) in setups.items():
        for seed in range(2 * args.seeds):
            graph = ae.workflow(engine, "sega").with_widget("6", "text", text).with_widget("3", "seed", seed)
            graph = graph.with_widget("20", "direction", direction)
            guided = mean([ae.colour_fraction(torch.from_numpy(i) / 255.0, "red") for i in ae.images(engine, graph)])
            plain = mean([ae.colour_fraction(torch.from_numpy(i) / 255.0, "red")
                          for i in ae.images(engine, graph.with_widget("20", "scale", 0.0))])  # fmt: skip
            sega[name].append((plain, guided))

    sag_graph = ae.workflow(engine, "sag")
    guided = ae.images(engine, sag_graph)
    again = ae.images(fresh_engine(), sag_graph)  # recomputed, not the first engine's cached output
    plain = ae.images(engine, sag_graph.with_widget("20", "scale", 0.0))
    sag_change = mean([float(np.abs(a.astype(float) - b).mean()) for a, b in zip(guided, plain)])

    metrics = {
        "lora": {"texture_energy_strength_1": mean(energy[1.0]), "texture_energy_strength_0": mean(energy[0.0]),
                 "images": len(energy[1.0]),
                 "ratio": mean(energy[1.0]) / mean(energy[0.0])},
        "controlnet": {name: {"mean_iou": mean(v), "share_iou_ge_0.7": mean([x >= 0.7 for x in v]), "images": len(v)}
                       for name, v in control.items()},
        "sega": {name: {"plain_red_fraction": mean([p for p, _ in v]), "guided_red_fraction": mean([g for _, g in v]),
                        "seeds_moved_the_right_way": sum((g > p) if name.startswith("add") else (g < p) for p, g in v),
                        "seeds": len(v)} for name, v in sega.items()},
        "sag": {"mean_abs_pixel_change_vs_scale_0": sag_change,
                "rerun_identical": all(np.array_equal(a, b) for a, b in zip(guided, again))},
        "seconds": time.perf_counter() - started,
        "command": "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]]),
    }  # fmt: skip
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    width = max(row.shape[1] for row in sheet)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in sheet]
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out / "contact_sheet.png")
    if args.card:
        args.card.write_text(replace_section(args.card.read_text(), "adapters", adapters_markdown(metrics)))
    print(json.dumps(metrics))
    return 0


def adapters_markdown(m: dict) -> str:
    lora, control, sega = m["lora"], m["controlnet"], m["sega"]
    lines = [
        f"- Style LoRA, background texture energy (mean |difference| of neighbouring background pixels, 0..255; "
        f"striped renders about 5) over {lora['images']} "
        f"images: strength 1 {lora['texture_energy_strength_1']:.2f}, strength 0 (the base image) "
        f"{lora['texture_energy_strength_0']:.2f}, ratio {lora['ratio']:.1f}.",
        "- Outline ControlNet, IoU of the generated shape with the outline's shape "
        + "; ".join(f"{name}: mean {v['mean_iou']:.2f}, {100 * v['share_iou_ge_0.7']:.0f} % of {v['images']} "
                    f"images at >= 0.7" for name, v in control.items()) + ".",
        "- SEGA, red pixel fraction plain -> guided: "
        + "; ".join(f"{name}: {v['plain_red_fraction']:.3f} -> {v['guided_red_fraction']:.3f} "
                    f"({v['seeds_moved_the_right_way']}/{v['seeds']} seeds the right way)" for name, v in sega.items())
        + ".",
        f"- SAG (scale 0.5): mean pixel change against scale 0 {m['sag']['mean_abs_pixel_change_vs_scale_0']:.2f} "
        f"(0..255); re-run identical: {m['sag']['rerun_identical']}.",
        f"\nSettings: `{m['command']}`; {m['seconds']:.0f} s.",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
