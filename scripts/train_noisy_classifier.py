"""Train the shipped noise-aware latent classifier (classifier guidance) and write it into nodes/models/embedded/.

    nice -n 10 python scripts/train_noisy_classifier.py --threads 1 --minutes 8 --images 6144

The latents of the training renders are cached in the work dir (encoding them is about half the run the first
time). The last line printed is one JSON object: steps, wall time, held-out accuracy per noise level and file size.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=8.0, help="training time (after the latents are encoded)")
    parser.add_argument("--images", type=int, default=6144)
    parser.add_argument("--max-steps", type=int, default=6000)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "noisy_classifier")
    parser.add_argument("--output", type=Path, help="the weight file (default: the shipped one)")
    parser.add_argument("--init", type=Path, help="start from this classifier file (a further training session)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.noisy_classifier import load_classifier, save_classifier
    from training.classifier_guidance import accuracy_by_sigma, encoded_dataset, train_classifier

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    loaded = load_checkpoint(EMBEDDED_PATH)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cache = args.work_dir / f"latents_{args.images}.pt"
    if cache.is_file():
        latents, targets = torch.load(cache)
    else:
        latents, targets = encoded_dataset(loaded.vae, args.images)
        torch.save((latents, targets), cache)
    held_cache = args.work_dir / "held_out_512.pt"
    if held_cache.is_file():
        held_latents, held_targets = torch.load(held_cache)
    else:
        held_latents, held_targets = encoded_dataset(loaded.vae, 512, offset=10**6)
        torch.save((held_latents, held_targets), held_cache)
    encoded_s = time.monotonic() - started
    classifier, record = train_classifier(latents, targets, loaded.model.alphas_cumprod, minutes=args.minutes,
                                          max_steps=args.max_steps, seed=args.seed,
                                          init=load_classifier(args.init) if args.init else None,
                                          log=lambda m: print(m, flush=True))
    accuracy = accuracy_by_sigma(classifier, held_latents, held_targets)
    output = args.output or default_adapter_path("classifier")
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    if args.init:
        from safetensors import safe_open

        with safe_open(str(args.init), framework="pt") as handle:
            record["previous_sessions"] = json.loads((handle.metadata() or {}).get("training", "null"))
    record.update(command=command, images=args.images, encode_seconds=round(encoded_s, 1), held_out_accuracy=accuracy,
                  threads=args.threads)
    save_classifier(classifier, output, extra=record)
    record["file_bytes"] = output.stat().st_size
    record["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
