"""A model-free node pack for the editor's browser tests, served beside the real node set by
`nodegraph serve --nodes-module nodes:register --nodes-module browser_nodes:register`: an image source that
takes steps (so the editor shows progress) in a fraction of a second, and a saver that writes a real PNG with
the run's metadata embedded exactly as SaveImage does."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from nodegraph import Int, Node, NodeContext, NodeRegistry, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.formats.png import png_info
from nodegraph.paths import save_new_file

STEP_SECONDS = 0.05


class TestImageSource(Node):
    """A gradient whose colours follow the seed and the prompt, made in `steps` steps (each reported)."""

    schema = NodeSchema(type_id="TestImageSource", display_name="Test Image Source", category="test/image",
                        inputs=(String("prompt", "a red circle", multiline=True),
                                Int("seed", 0, min=0, max=2**50, control_after_generate=True),
                                Int("width", 128, min=16, max=512, step=16),
                                Int("height", 96, min=16, max=512, step=16),
                                Int("steps", 6, min=1, max=200)),
                        outputs=(Out("IMAGE"),))

    @classmethod
    def execute(cls, ctx: NodeContext, prompt: str, seed: int, width: int, height: int, steps: int) -> tuple[Any]:
        for step in range(1, steps + 1):
            time.sleep(STEP_SECONDS)
            ctx.progress(step, steps)
        hue = (seed * 37 + sum(map(ord, prompt))) % 256
        image = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(image)
        for x in range(width):
            draw.line([(x, 0), (x, height)], fill=(hue, (x * 255) // max(1, width - 1), 255 - hue))
        radius = min(width, height) // 3
        draw.ellipse([width // 2 - radius, height // 2 - radius, width // 2 + radius, height // 2 + radius],
                     fill=(230, 40, 40))
        return (image,)


class TestSaveImage(Node):
    """Writes the image as a PNG with the prompt and the workflow embedded (as SaveImage does)."""

    schema = NodeSchema(type_id="TestSaveImage", display_name="Save Image (test)", category="test/image",
                        output_node=True, inputs=(Socket("images", "IMAGE"), String("filename_prefix", "editor_test")))

    @classmethod
    def execute(cls, ctx: NodeContext, images: Image.Image, filename_prefix: str) -> NodeResult:
        meta = ctx.metadata
        buffer = io.BytesIO()
        images.save(buffer, format="PNG",
                    pnginfo=png_info(meta.get("prompt"), meta.get("workflow"), meta.get("nodegraph_workflow")))
        path = save_new_file(ctx.env.output_dir, filename_prefix, "png", buffer.getvalue())
        subfolder = path.parent.relative_to(Path(ctx.env.output_dir).resolve()).as_posix()
        return NodeResult(ui={"images": [{"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                                          "type": "output"}]})


NODES = (TestImageSource, TestSaveImage)


def register(registry: NodeRegistry) -> None:
    for node in NODES:
        registry.register(node)
