"""Render the README's sample grid of the embedded model through the shipped txt2img workflow.

    python scripts/render_samples.py            # writes docs/embedded_samples.png

One prompt per row; each row is the workflow's batch of four from seed 0 (20 Euler steps, CFG 6, 128 px).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "a red circle on a blue background",
    "a yellow star on a purple background",
    "a green triangle on a white background",
    "a small pink ring in the top left on a black background",
    "a large blue square on an orange background",
    "a white star on the right on a green background",
]


def main() -> int:
    import numpy as np
    from PIL import Image

    from nodegraph.app import AppConfig, build_engine
    from training import adapter_eval as ae

    scratch = Path(tempfile.mkdtemp(prefix="samples-"))
    engine = build_engine(AppConfig(output_dir=scratch / "output", input_dir=scratch / "input",
                                    temp_dir=scratch / "temp", models_dir=scratch / "models"))  # fmt: skip
    rows = []
    for prompt in PROMPTS:
        graph = ae.workflow(engine, "txt2img").with_widget("6", "text", prompt).with_widget("3", "seed", 0)
        rows.append(np.concatenate(ae.images(engine, graph), axis=1))
    target = ROOT / "docs" / "embedded_samples.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
