"""Render the template thumbnails ComfyUI's templates browser shows (workflows/comfyui/thumbnails/NAME.png):
each shipped workflow is run on the embedded model as shipped and its last saved image is scaled to 256 px.

    python scripts/render_thumbnails.py          # only the workflows that have no thumbnail yet
    python scripts/render_thumbnails.py --all    # every workflow again
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
THUMBNAILS = WORKFLOWS / "comfyui" / "thumbnails"
SIZE = 256


def render(name: str, engine) -> Path:
    from nodegraph.formats import load_workflow_file

    result = engine.run(load_workflow_file(WORKFLOWS / f"{name}.json", engine.registry))
    saved = [entry for ui in result.ui.values() for entry in ui.get("images", [])]
    if not saved:
        raise SystemExit(f"{name}: the workflow saved no image")
    last = saved[-1]
    with Image.open(engine.env.output_dir / last["subfolder"] / last["filename"]) as image:
        thumbnail = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    THUMBNAILS.mkdir(parents=True, exist_ok=True)
    path = THUMBNAILS / f"{name}.png"
    thumbnail.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="render every workflow, not only those lacking one")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "tests"))
    import build_workflows
    from tiny_models import engine_at

    names = [name for name in sorted(build_workflows.GRAPHS) if args.all or not (THUMBNAILS / f"{name}.png").is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_at(Path(tmp), input_dir=WORKFLOWS / "input")
        for name in names:
            print(render(name, engine))


if __name__ == "__main__":
    main()
