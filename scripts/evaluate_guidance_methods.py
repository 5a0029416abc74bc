"""Measure Attend-and-Excite and MultiDiffusion on the embedded model (issue #18, docs/controlled_generation_guidance.md).

Attend-and-Excite: the embedded model draws one shape per image, so two-subject prompts ("a red circle and a blue
square") cannot show both. The closest faithful test: plain sampling neglects one subject (it almost never
draws it); we count, over seeds, how often each subject's shape appears (the analytic shapes classifier of
training/classifier.py) with and without A&E exciting both subject words. A&E works if the neglected subject's
rate rises.

MultiDiffusion: 512 x 128 panoramas from the 128 px model (window 16, stride 8 latent px). Seam measure: the mean
squared horizontal pixel gradient across the window borders (pixel columns 8 x each view edge) over that of every
other column; seam-free means within 10 % (ratio <= 1.1). The same measure on plain tiling (stride = window: four
independent 128 px images side by side) shows what a seam scores.

    nice -n 10 python3 scripts/evaluate_guidance_methods.py --seeds 16

The last printed line is one JSON object of named figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AE_PROMPTS = (("a red circle and a blue square", "circle", "square"),
              ("a yellow star and a green triangle", "star", "triangle"),
              ("a white ring and a pink square", "ring", "square"))
PANORAMA_PROMPT = "a red circle on a blue background"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--scale", type=float, default=20.0, help="A&E step size (diffusers' scale_factor)")
    parser.add_argument("--max-iter", type=int, default=10, help="A&E max_iter_to_alter")
    parser.add_argument("--thresholds", default="0:0.05, 4:0.5, 8:0.8")
    parser.add_argument("--refinement", type=int, default=5, help="A&E max_refinement_steps")
    parser.add_argument("--downscale", type=int, default=2, help="A&E attention_downscale (8 x 8 maps)")
    parser.add_argument("--prompts", type=int, default=len(AE_PROMPTS), help="how many of AE_PROMPTS to run")
    parser.add_argument("--stride", type=int, default=8, help="MultiDiffusion stride (window 16)")
    parser.add_argument("--weightings", default="uniform,gaussian", help="MultiDiffusion weightings to measure")
    parser.add_argument("--skip-tiled", action="store_true", help="leave out the tiling comparison")
    parser.add_argument("--only", choices=("attend", "panorama"), default=None)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def run(model, clip, prompt: str, seeds: int, steps: int, cfg: float, width: int = 128):
    from nodes.sd.ksampler import sample
    from nodes.sd.text import encode
    from nodes.sd.types import Latent

    latent = Latent(torch.zeros(seeds, 4, 16, width // 8), batch_index=tuple(range(seeds)))
    return sample(model, seed=0, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
                  positive=[encode(clip, prompt)], negative=[encode(clip, "")], latent=latent).samples


def evaluate_attend(args, model, clip, vae) -> dict:
    from nodes.guidance.attend_multidiffusion import AttendAndExcite
    from nodes.sd.vae import decode
    from training.classifier import classify

    figures: dict[str, float] = {}
    for prompt, first, second in AE_PROMPTS[: args.prompts]:
        excited, _ = AttendAndExcite.execute(None, model, clip, prompt, f"{first}, {second}", args.scale,
                                             args.max_iter, args.thresholds, args.refinement, args.downscale)
        for name, patched in (("plain", model), ("excited", excited)):
            images = decode(vae, run(patched, clip, prompt, args.seeds, args.steps, args.cfg))
            found = [classify((image.clamp(0, 1).numpy() * 255).round().astype("uint8")) for image in images]
            key = prompt.replace(" ", "_")
            for subject in (first, second):
                figures[f"{key}/{name}/{subject}"] = sum(item.shape == subject for item in found) / len(found)
            # how often the image still shows one of the prompt's subjects in one of the prompt's colours
            colours = {word for word in prompt.split() if word not in (first, second, "a", "and")}
            figures[f"{key}/{name}/on_prompt"] = sum(
                item.shape in (first, second) and item.fg in colours for item in found) / len(found)
            print(name, prompt, [(item.fg, item.shape) for item in found], flush=True)
        rates = [(figures[f"{key}/plain/{s}"], figures[f"{key}/excited/{s}"]) for s in (first, second)]
        neglected = min(range(2), key=lambda k: rates[k][0])
        figures[f"{key}/neglected_plain"], figures[f"{key}/neglected_excited"] = rates[neglected]
    return figures


def evaluate_panorama(args, model, clip, vae) -> dict:
    from nodes.sd.multidiffusion import multidiffusion_patch
    from nodes.sd.vae import decode
    from training.guidance_eval import seam_ratio, window_edges

    figures: dict[str, float] = {}
    settings = [(f"multidiffusion_{weighting}_stride{args.stride}", args.stride, weighting)
                for weighting in args.weightings.split(",")]
    for name, stride, weighting in settings + ([] if args.skip_tiled else [("tiled", 16, "uniform")]):
        images = decode(vae, run(model.with_patch(multidiffusion_patch(16, stride, weighting)), clip, PANORAMA_PROMPT,
                                 args.seeds, args.steps, args.cfg, width=512))
        edges = window_edges(64, 16, stride)
        figures[f"panorama/{name}/seam_ratio_global"] = seam_ratio(images, edges, None)
        figures[f"panorama/{name}/seam_ratio_local4"] = seam_ratio(images, edges, 4)
        print(name, figures, flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd.loading import load_checkpoint

    loaded = load_checkpoint(EMBEDDED_PATH)
    start = time.monotonic()
    figures: dict[str, float] = {"seeds": args.seeds, "steps": args.steps, "scale": args.scale}
    if args.only in (None, "attend"):
        figures.update(evaluate_attend(args, loaded.model, loaded.clip, loaded.vae))
    if args.only in (None, "panorama"):
        figures.update(evaluate_panorama(args, loaded.model, loaded.clip, loaded.vae))
    figures["wall_s"] = round(time.monotonic() - start, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
