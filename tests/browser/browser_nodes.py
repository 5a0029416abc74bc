"""A model-free node pack for the editor's browser tests: an image source with steps (so the editor shows
progress), a loader whose choices are files in a model folder, and a SaveImage stand-in that writes a real PNG
with the workflow embedded, as SaveImage does. Served by `nodegraph serve --nodes-module browser_nodes:register`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from nodegraph import Combo, Int, Node, NodeContext, NodeRegistry, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.paths import next_output_path
from nodes import utility

STEP_SECONDS = 0.05


class TestImageSource(Node):
    """A gradient whose colours follow the seed and the prompt, made in `steps` steps (each reported)."""

    schema = NodeSchema(type_id="TestImageSource", display_name="Test Image Source", category="test/image",
                        inputs=(String("prompt", "a red circle", multiline=True),
                                Int("seed", 0, min=0, max=2**50, control_after_generate=True),
                                Int("width", 128, min=16, max=512, step=16),
                                Int("height", 96, min=16, max=512, step=16),
                                Int("steps", 6, min=1, max=50)),
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


def _checkpoints(env: Any) -> list[str]:
    return env.models.list("checkpoints") if env is not None else []


class TestModelLoader(Node):
    """A MODEL from a file in models/checkpoints (the file is never read: the choices are what matter)."""

    schema = NodeSchema(type_id="TestModelLoader", display_name="Load Test Model", category="test/loaders",
                        inputs=(Combo("model_name", _checkpoints),), outputs=(Out("MODEL"),))

    @classmethod
    def execute(cls, ctx: NodeContext, model_name: str) -> tuple[Any]:
        return ({"model": model_name},)


class TestSaveImage(Node):
    """Writes the image as a PNG with the prompt and the workflow embedded (as SaveImage does)."""

    schema = NodeSchema(type_id="TestSaveImage", display_name="Save Image (test)", category="test/image",
                        output_node=True, inputs=(Socket("images", "IMAGE"), String("filename_prefix", "editor_test")))

    @classmethod
    def execute(cls, ctx: NodeContext, images: Image.Image, filename_prefix: str) -> NodeResult:
        path = next_output_path(ctx.env.output_dir, filename_prefix, "png")
        info = PngInfo()
        metadata = ctx.metadata
        if metadata.get("prompt") is not None:
            info.add_text("prompt", json.dumps(metadata["prompt"]))
        workflow = metadata.get("workflow")
        if workflow is not None:
            key = "nodegraph_workflow" if isinstance(workflow, dict) and workflow.get("format") == "nodegraph" else "workflow"
            info.add_text(key, json.dumps(workflow))
        images.save(path, pnginfo=info)
        subfolder = path.parent.relative_to(Path(ctx.env.output_dir).resolve()).as_posix()
        return NodeResult(ui={"images": [{"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                                          "type": "output"}]})


NODES = (TestImageSource, TestModelLoader, TestSaveImage)


def register(registry: NodeRegistry) -> None:
    for node in (*utility.NODES, *NODES):
        registry.register(node)
