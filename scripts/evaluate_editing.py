"""Measure DDIM inversion, DiffEdit and Pix2Pix-Zero on the embedded shapes model (issue #18), >= 16 seeds each.

    OMP_NUM_THREADS=1 python scripts/evaluate_editing.py --seeds 16

Source images come from the shapes generator (nodes/sd/shapes.py), so the true shape region, colours and centre
are known; results are read by the analytic shapes classifier (training/classifier.py).
- inversion: round trip of a random shape image (latent PSNR, image PSNR against the VAE's own reconstruction),
  plain DDIM inversion and with fixed-point refinement;
- DiffEdit "red circle" -> "green circle": mask IoU with the true shape region, the edit read by the classifier,
  mean |pixel change| outside the mask (0..1) against the VAE reconstruction;
- Pix2Pix-Zero circle -> square: shape changed, colours kept, centre kept (distance <= --position-tolerance of the
  side), with cross-attention guidance and without it (edit direction only) for comparison.
The last stdout line is one JSON object of named figures.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="simple")
    parser.add_argument("--cfg", type=float, default=6.0, help="DiffEdit's mask and edit guidance")
    parser.add_argument("--p2p-cfg", type=float, default=3.0, help="Pix2Pix-Zero's reconstruction and edit guidance")
    parser.add_argument("--amount", type=float, default=0.1, help="Pix2Pix-Zero cross-attention guidance step")
    parser.add_argument("--strength", type=float, default=0.5, help="DiffEdit mask noise strength")
    parser.add_argument("--inpaint-strength", type=float, default=1.0,
                        help="DiffEdit: invert and repaint this fraction of the schedule (diffusers' inpaint_strength)")
    parser.add_argument("--num-maps", type=int, default=10)
    parser.add_argument("--threshold-ratio", type=float, default=3.0)
    parser.add_argument("--position-tolerance", type=float, default=0.1)
    parser.add_argument("--only", choices=("inversion", "diffedit", "pix2pix_zero"), action="append")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def evaluate_inversion(ck, args) -> dict[str, float]:  # noqa: ANN001
    from editing_helpers import background_for, cond, source_image

    from nodes.sd import vae as vae_ops
    from nodes.sd.inversion import image_psnr, inversion_sigmas, invert, latent_psnr, sample_back
    from nodes.sd.shapes import COLOURS, SHAPES
    from nodes.sd.types import Latent

    figures: dict[str, list[float]] = {}
    sigmas = inversion_sigmas(ck.model, args.scheduler, args.steps)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        shape, fg = SHAPES[seed % len(SHAPES)], list(COLOURS)[seed % len(COLOURS)]
        src = source_image(ck.vae, shape, fg, background_for(seed, (fg,)), seed)
        pos, neg = cond(ck.clip, src.caption), cond(ck.clip, "")
        reference = vae_ops.decode(ck.vae, src.latent)
        for refine in (0, 2):
            inverted = invert(ck.model, pos, neg, 1.0, sigmas, Latent(src.latent), refine_iterations=refine)
            back = sample_back(ck.model, pos, neg, 1.0, sigmas, inverted).samples
            figures.setdefault(f"inversion_refine{refine}_latent_psnr", []).append(latent_psnr(src.latent, back)[1])
            image = vae_ops.decode(ck.vae, back)
            figures.setdefault(f"inversion_refine{refine}_image_psnr", []).append(image_psnr(reference, image)[1])
    return {name: mean(values) for name, values in figures.items()}


def evaluate_diffedit(ck, args) -> dict[str, float]:  # noqa: ANN001
    from editing_helpers import as_uint8, background_for, cond, iou, source_image

    from nodes.sd import vae as vae_ops
    from nodes.sd.diffedit import diffedit_mask
    from nodes.sd.guiders import CFGGuide
    from nodes.sd.inversion import as_noise, inversion_sigmas, invert
    from nodes.sd.ksampler import sample_custom
    from nodes.sd.sampler_spec import SamplerSpec
    from nodes.sd.types import Latent
    from training.classifier import classify

    ious, outside, inside, green, green_fg, kept_bg, passed = [], [], [], [], [], [], []
    sigmas = inversion_sigmas(ck.model, args.scheduler, args.steps, args.inpaint_strength)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        bg = background_for(seed, ("red", "green"))
        src = source_image(ck.vae, "circle", "red", bg, seed)
        article = "an" if bg[0] in "aeiou" else "a"
        pos_s = cond(ck.clip, f"a red circle on {article} {bg} background")
        pos_t = cond(ck.clip, f"a green circle on {article} {bg} background")
        neg = cond(ck.clip, "")
        mask, _ = diffedit_mask(ck.model, src.latent, (pos_s, neg), (pos_t, neg), cfg=args.cfg,
                                scheduler=args.scheduler, steps=args.steps, strength=args.strength,
                                num_maps=args.num_maps, threshold_ratio=args.threshold_ratio, seed=seed)
        region = mask[0].numpy() > 0.5
        ious.append(iou(region, src.true_mask))
        inverted = invert(ck.model, pos_s, neg, 1.0, sigmas, Latent(src.latent))
        noise = as_noise(ck.model, Latent(src.latent), inverted, sigmas)
        out = sample_custom(noise, CFGGuide(ck.model, pos_t, neg, args.cfg), SamplerSpec("euler"), sigmas,
                            Latent(src.latent, noise_mask=mask[:, None]), keep_denoised=False).output
        edited = vae_ops.decode(ck.vae, out.samples)
        change = (edited - vae_ops.decode(ck.vae, src.latent)).abs().mean(-1)[0].numpy()
        outside.append(float(change[~region].mean()) if (~region).any() else 0.0)
        inside.append(float(change[region].mean()) if region.any() else 0.0)
        result = classify(as_uint8(edited))
        green.append(float(result.fg == "green" and result.shape == "circle"))
        green_fg.append(float(result.fg == "green"))
        kept_bg.append(float(result.bg == bg))
        passed.append(float(ious[-1] >= 0.6))
        print(f"diffedit seed {seed}: iou {ious[-1]:.3f} outside {outside[-1]:.4f} inside {inside[-1]:.3f} "
              f"-> {result.fg} {result.shape} on {result.bg}", file=sys.stderr)
    return {"diffedit_mask_iou_mean": mean(ious), "diffedit_mask_iou_min": min(ious),
            "diffedit_iou_ge_0.6_rate": mean(passed), "diffedit_green_circle_rate": mean(green),
            "diffedit_green_rate": mean(green_fg),
            "diffedit_background_kept_rate": mean(kept_bg), "diffedit_outside_change_mean": mean(outside),
            "diffedit_outside_change_max": max(outside), "diffedit_inside_change_mean": mean(inside)}


def evaluate_pix2pix_zero(ck, args) -> dict[str, float]:  # noqa: ANN001
    from editing_helpers import as_uint8, background_for, caption_lists, cond, source_image

    from nodes.sd import vae as vae_ops
    from nodes.sd.guiders import CFGGuide
    from nodes.sd.inversion import inversion_sigmas, invert
    from nodes.sd.ksampler import sample_custom
    from nodes.sd.noise import Noise
    from nodes.sd.pix2pix_zero import add_direction, edit_direction, pix2pix_zero_patch, record_cross_attention
    from nodes.sd.sampler_spec import SamplerSpec
    from nodes.sd.shapes import COLOURS
    from nodes.sd.text import encode
    from nodes.sd.types import Latent
    from training.classifier import classify

    source_caps, target_caps = caption_lists("circle", "square")
    direction = edit_direction([encode(ck.clip, t).embeds for t in source_caps],
                               [encode(ck.clip, t).embeds for t in target_caps])
    sigmas = inversion_sigmas(ck.model, args.scheduler, args.steps)
    figures: dict[str, list[float]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        fg = [name for name in COLOURS][seed % len(COLOURS)]
        bg = background_for(seed, (fg,))
        src = source_image(ck.vae, "circle", fg, bg, seed)
        pos, neg = cond(ck.clip, src.caption), cond(ck.clip, "")
        inverted = invert(ck.model, pos, neg, 1.0, sigmas, Latent(src.latent))
        guider = CFGGuide(ck.model, pos, neg, args.p2p_cfg)
        maps, reconstruction = record_cross_attention(guider, SamplerSpec("euler"), sigmas, inverted)
        edited_cond = add_direction(pos, direction)
        runs = {"reconstruction": reconstruction.samples}
        for name, model in (("guided", ck.model.with_patch(pix2pix_zero_patch(maps, args.amount))),
                            ("direction_only", ck.model)):
            runs[name] = sample_custom(Noise(0, enabled=False), CFGGuide(model, edited_cond, neg, args.p2p_cfg),
                                       SamplerSpec("euler"), sigmas, inverted, keep_denoised=False).output.samples
        for name, samples in runs.items():
            result = classify(as_uint8(vae_ops.decode(ck.vae, samples)))
            distance = math.hypot(result.cx - src.spec.cx, result.cy - src.spec.cy)
            wanted = "circle" if name == "reconstruction" else "square"
            shape_ok = result.shape == wanted
            colours_ok = result.fg == fg and result.bg == bg
            position_ok = distance <= args.position_tolerance
            for key, value in (("shape", shape_ok), ("colours_kept", colours_ok), ("position_kept", position_ok),
                               ("all", shape_ok and colours_ok and position_ok), ("centre_distance", distance)):
                figures.setdefault(f"p2p_{name}_{key}", []).append(float(value))
            print(f"pix2pix-zero seed {seed} {name}: {result.fg} {result.shape} on {result.bg}, "
                  f"centre moved {distance:.3f}", file=sys.stderr)
    return {name: mean(values) for name, values in figures.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd.loading import load_checkpoint

    torch.set_num_threads(args.threads)
    ck = load_checkpoint(EMBEDDED_PATH)
    wanted = args.only or ["inversion", "diffedit", "pix2pix_zero"]
    metrics: dict[str, object] = {"seeds": args.seeds, "first_seed": args.first_seed, "steps": args.steps,
                                  "scheduler": args.scheduler}
    started = time.monotonic()
    for name, run in (("inversion", evaluate_inversion), ("diffedit", evaluate_diffedit),
                      ("pix2pix_zero", evaluate_pix2pix_zero)):
        if name in wanted:
            metrics.update(run(ck, args))
    metrics["wall_s"] = round(time.monotonic() - started, 1)
    given = sys.argv[1:] if argv is None else argv
    metrics["command"] = shlex.join(["python", "scripts/evaluate_editing.py", *given])
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
