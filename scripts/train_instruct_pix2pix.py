"""Train the embedded InstructPix2Pix UNet (training/instruct_pix2pix.py); re-run the same command to resume.

    nice -n 10 python scripts/train_instruct_pix2pix.py --minutes 35 --threads 1

Writes nodes/models/embedded/nodegraph-tiny-shapes-instruct-pix2pix.safetensors (UNet only, fp16; text encoder
and VAE come from the embedded checkpoint) once the schedule completes, and runs/instruct_pix2pix/record.json.
Exit status 3: the budget ran out before the schedule finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from training.concat_unet import run_training_script
    from training.instruct_pix2pix import Pix2PixSettings, train_pix2pix

    return run_training_script("instruct_pix2pix", Pix2PixSettings, train_pix2pix, "fp16", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
