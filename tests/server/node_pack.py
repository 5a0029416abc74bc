"""A model-free node pack for server tests: the engine's fake nodes plus nodes that save PNGs, report previews,
and log each completed run (to prove a prompt never runs twice). Loaded in-process and by
`nodegraph serve --nodes-module node_pack:register` in the restart test."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from PIL import Image

import fake_nodes
from nodegraph import Float, Int, Node, NodeContext, NodeRegistry, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.formats.png import png_info
from nodegraph.paths import output_prefix_problem, save_new_file


class SaveTestImage(Node):
    """Writes a real 8x8 PNG whose colour follows the value, with the run's prompt embedded, as SaveImage does."""

    schema = NodeSchema(type_id="SaveTestImage", category="test", output_node=True,
                        inputs=(Socket("value", "INT"), String("filename_prefix", "test", check=output_prefix_problem)))

    @classmethod
    def execute(cls, ctx: NodeContext, value: int, filename_prefix: str) -> NodeResult:
        info = png_info(ctx.metadata.get("prompt"), ctx.metadata.get("workflow"), None)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (value % 256, 0, 0)).save(buffer, "PNG", pnginfo=info)
        path = save_new_file(ctx.env.output_dir, filename_prefix, "png", buffer.getvalue())
        subfolder = path.parent.relative_to(Path(ctx.env.output_dir).resolve()).as_posix()
        return NodeResult(ui={"images": [{"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                                          "type": "output"}]})


class SaveNoise(Node):
    """Writes `count` PNGs of `megabytes` of noise each (encoded once), `delay` seconds apart, then appends `tag`
    to output/runs.log: a prompt that spends most of its time writing outputs, to kill mid-write."""

    schema = NodeSchema(type_id="SaveNoise", category="test", output_node=True, deterministic=False,
                        inputs=(String("tag", "noise"), Int("count", 10, min=1, max=1000),
                                Int("megabytes", 4, min=1, max=64), Float("delay", 0.0, min=0, max=1)))

    @classmethod
    def execute(cls, ctx: NodeContext, tag: str, count: int, megabytes: int, delay: float) -> NodeResult:
        side = int((megabytes * 1024**2 / 3) ** 0.5)
        noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        buffer = io.BytesIO()
        noise.save(buffer, "PNG", compress_level=0)
        saved = []
        for index in range(count):
            saved.append(save_new_file(ctx.env.output_dir, tag, "png", buffer.getvalue()).name)
            ctx.progress(index + 1, count)
            time.sleep(delay)
        with open(Path(ctx.env.output_dir) / "runs.log", "a") as log:
            log.write(tag + "\n")
        return NodeResult(ui={"images": [{"filename": name, "subfolder": "", "type": "output"} for name in saved]})


class Marker(Node):
    """A slow output node: `steps` steps of `delay` seconds, then appends `tag` to output/runs.log."""

    schema = NodeSchema(type_id="Marker", category="test", output_node=True, deterministic=False,
                        inputs=(String("tag", "x"), Int("steps", 5, min=1, max=1000),
                                Float("delay", 0.1, min=0, max=5)))

    @classmethod
    def execute(cls, ctx: NodeContext, tag: str, steps: int, delay: float) -> NodeResult:
        for step in range(1, steps + 1):
            time.sleep(delay)
            ctx.progress(step, steps)
        with open(Path(ctx.env.output_dir) / "runs.log", "a") as log:
            log.write(tag + "\n")
        return NodeResult(ui={"tags": [tag]})


class PreviewSteps(Node):
    """Reports `steps` steps, each with a PIL preview image (a latent preview's stand-in)."""

    schema = NodeSchema(type_id="PreviewSteps", category="test", inputs=(Socket("a", "INT"), Int("steps", 2, min=1)),
                        outputs=(Out("INT"),))

    @classmethod
    def execute(cls, ctx: NodeContext, a: int, steps: int) -> tuple[int]:
        for step in range(1, steps + 1):
            ctx.progress(step, steps, preview=Image.new("RGB", (64, 48), (0, 255, 0)))
        return (a,)


NODES = (SaveTestImage, SaveNoise, Marker, PreviewSteps)


def register(registry: NodeRegistry) -> None:
    for node in (*fake_nodes.ALL, *NODES):
        registry.register(node)


def registry() -> NodeRegistry:
    result = NodeRegistry()
    register(result)
    return result
