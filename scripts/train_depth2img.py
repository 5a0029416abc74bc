"""Train the embedded depth-to-image UNet (training/depth2img.py); re-run the same command to resume.

    nice -n 10 python scripts/train_depth2img.py --minutes 35 --threads 1

Writes nodes/models/embedded/nodegraph-tiny-shapes-depth.safetensors (UNet only, fp8 e4m3fn; text encoder and
VAE come from the embedded checkpoint) once the schedule completes, and runs/depth2img/record.json.
Exit status 3: the budget ran out before the schedule finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from training.concat_unet import run_training_script
    from training.depth2img import DepthSettings, train_depth

    return run_training_script("depth2img", DepthSettings, train_depth, "fp8", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
