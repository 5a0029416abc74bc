"""Train the shipped tiny GLIGEN (boxes for the embedded model) and write it into nodes/models/embedded/.

The shipped file came from two phases, the second resuming the first (training/gligen.py, GligenSettings):

    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_gligen.py --threads 1 --minutes 28
    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_gligen.py --threads 1 --minutes 16 --resume --high-t-fraction 0.5

Then `python scripts/evaluate_gligen.py --trials 12` measures its box hit rate into the model card.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from training.gligen import GligenSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "gligen")
    parser.add_argument("--output", type=Path, help="the weight file (default: the shipped one)")
    parser.add_argument("--resume", action="store_true", help="go on from the work dir's saved state")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=GligenSettings.max_steps, help="stop after this many steps")
    parser.add_argument("--dataset-size", type=int, default=GligenSettings.dataset_size)
    parser.add_argument("--min-timestep", type=int, default=GligenSettings.min_timestep)
    parser.add_argument("--high-t-fraction", type=float, default=GligenSettings.high_t_fraction,
                        help="share of each batch from [min-timestep, 999]; the rest from [0, 999]")
    parser.add_argument("--blocks", default=GligenSettings.blocks, help="diffusers block prefixes that get a fuser")
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from nodes.sd.loading import load_checkpoint
    from training.gligen import ldm_state_dict, train_gligen

    torch.set_num_threads(args.threads)
    settings = GligenSettings(seconds=args.minutes * 60, lr=args.lr, max_steps=args.steps,
                              dataset_size=args.dataset_size, min_timestep=args.min_timestep, blocks=args.blocks,
                              high_t_fraction=args.high_t_fraction)
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])
    model, record = train_gligen(settings, EMBEDDED_PATH, args.work_dir, log=lambda m: print(m, flush=True),
                                 resume=args.resume)
    record.update(command=command, threads=args.threads, torch=torch.__version__)
    unet = load_checkpoint(EMBEDDED_PATH).model.unet
    output = args.output or default_adapter_path("gligen")
    save_file(ldm_state_dict(model, unet), str(output), metadata={"nodegraph_gligen": json.dumps(record)})
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
