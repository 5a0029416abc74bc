"""XYZ Grid: the cells' images of an X/Y/Z sweep laid out as one labelled grid, saved with what each cell was."""

from __future__ import annotations

import json
from typing import Any

import torch

from nodegraph import Combo, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.formats.png import png_info
from nodegraph.paths import output_prefix_problem

from ..image.files import image_to_png_bytes, save_output
from .axes import CATEGORY
from .layout import draw_grids, tile
from .types import Plot

GRID_KEY = "xyz_plot"
"""The PNG text chunk holding the axes and every cell's values and box (JSON), beside the workflow chunks."""
Z_LAYOUTS = ("side by side", "separate")


def grid_metadata(plot: Plot, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    """The axes and, per cell, its values and where it is: what a reader of the PNG needs to find a cell."""
    cells = []
    for index, where in enumerate(boxes):
        cells.append({**plot.cell_info(index), **where})
    return {"axes": plot.describe(), "shape": list(plot.shape), "cells": cells}


def _one(values: list[Any], name: str) -> Any:
    """A widget (or single linked value) of an input_is_list node arrives as a one-element list."""
    if len(values) != 1:
        raise ValueError(f"{name} must be one value; {len(values)} arrived (link it from a single output)")
    return values[0]


def cell_images(images: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """One IMAGE per cell: the list as it came, or one batch of exactly `count` images split per cell."""
    if len(images) == count:
        return images
    if len(images) == 1 and images[0].shape[0] == count:
        return [image.unsqueeze(0) for image in images[0]]
    raise ValueError(f"the plot has {count} cells but {len(images)} images arrived: feed XYZ Grid the images "
                     f"made from XYZ Plot's lists (one run per cell)")


class XYZGrid(Node):
    schema = NodeSchema(
        type_id="XYZGrid", display_name="XYZ Grid", category=CATEGORY, input_is_list=True, output_node=True,
        description="Lays the images of an X/Y/Z sweep out as a labelled grid (x across, y down, one grid per z "
                    "value) and saves it as PNG with the workflow and, under 'xyz_plot', each cell's values and "
                    "box. A cell's batch shows as a small grid inside the cell.",
        inputs=(Socket("images", "IMAGE"), Socket("plot", "XYZ_PLOT"),
                String("filename_prefix", "xyz_grid", check=output_prefix_problem),
                Combo("z_layout", Z_LAYOUTS), Int("font_size", 0, min=0, max=128),
                Int("gap", 4, min=0, max=256)),
        outputs=(Out("IMAGE", "grid"), Out("STRING", "cells")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: list[torch.Tensor], plot: list[Plot], filename_prefix: list[str],
                z_layout: list[str], font_size: list[int], gap: list[int]) -> NodeResult:
        spec = _one(plot, "plot")
        cells = cell_images(list(images), spec.count)
        pictures, boxes = draw_grids(spec, [tile(image) for image in cells], _one(font_size, "font_size"),
                                     _one(gap, "gap"), _one(z_layout, "z_layout"))
        metadata = grid_metadata(spec, boxes)
        text = json.dumps(metadata, sort_keys=True)
        meta = ctx.metadata
        saved = []
        for index, picture in enumerate(pictures):
            info = png_info(meta.get("prompt"), meta.get("workflow"), meta.get("nodegraph_workflow"))
            info.add_text(GRID_KEY, json.dumps({**metadata, "image": index}, sort_keys=True))
            tensor = torch.from_numpy(picture.copy()).float() / 255.0
            saved.append(save_output(ctx.env.output_dir, _one(filename_prefix, "filename_prefix"), "png",
                                     image_to_png_bytes(tensor, info), "output"))
        grid = torch.stack([torch.from_numpy(picture.copy()).float() / 255.0 for picture in pictures])
        return NodeResult(outputs=(grid, text), ui={"images": saved})


NODES = (XYZGrid,)
