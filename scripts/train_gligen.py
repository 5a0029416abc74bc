"""Train the shipped tiny GLIGEN (boxes for the embedded model) and write it into nodes/models/embedded/.

    nice -n 10 python scripts/train_gligen.py --threads 1 --minutes 11 --lr 3e-3

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "gligen")
    parser.add_argument("--output", type=Path, help="the weight file (default: the shipped one)")
    parser.add_argument("--resume", action="store_true", help="go on from the work dir's saved state")
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path
    from nodes.sd.loading import load_checkpoint
    from training.gligen import GligenSettings, ldm_state_dict, train_gligen

    torch.set_num_threads(args.threads)
    settings = GligenSettings(seconds=args.minutes * 60, lr=args.lr)
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
