"""Plot Metric: a number measured per cell of a sweep (a metric node's FLOAT list) charted against the swept
parameter, one line per series (e.g. FID against steps, one line per sampler)."""

from __future__ import annotations

import json
from typing import Any

import torch

from nodegraph import Boolean, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String

from ..image.files import image_to_png_bytes, save_output
from .axes import CATEGORY
from .charts import render_chart, series_data
from .types import Plot


def _broadcast(values: list[Any], count: int, name: str) -> list[Any]:
    if len(values) == count:
        return values
    if len(values) == 1:
        return values * count
    raise ValueError(f"{name} has {len(values)} values for {count} points of y: give one per point, or one")


def chart_inputs(y: list[float], x: list[Any], series: list[str], plot: Plot | None,
                 x_label: str) -> tuple[list[Any], list[str], str]:
    """x, series and the x label per point: as linked, else from the plot (x axis across, one series per y
    value, and per z value when there is one), else the point's index and a single series."""
    count = len(y)
    if not x:
        x = plot.values_along("x") if plot is not None else list(range(count))
        x_label = x_label or (plot.x.title if plot is not None else "index")
    if not series:
        if plot is not None and (plot.y is not None or plot.z is not None):
            names = [f"{plot.y.title}={plot.y.labels[j]}" if plot.y is not None else "" for _, j, _ in plot.cells()]
            if plot.z is not None:
                names = [f"{name}, {plot.z.title}={plot.z.labels[k]}".lstrip(", ")
                         for name, (_, _, k) in zip(names, plot.cells())]
            series = names
        else:
            series = [""]
    return _broadcast(list(x), count, "x"), _broadcast(list(series), count, "series"), x_label


class PlotMetric(Node):
    schema = NodeSchema(
        type_id="PlotMetric", display_name="Plot Metric", category=CATEGORY, input_is_list=True, output_node=True,
        description="Charts y (one FLOAT per cell, e.g. a metric node run once per cell) against x, one line per "
                    "series. Without x and series links they come from the XYZ Plot: its x axis across, one line "
                    "per y value. The chart is an IMAGE (previewed here); `data` is the plotted points as JSON.",
        inputs=(Socket("y", "FLOAT"), Socket("x", "FLOAT", optional=True), Socket("series", "STRING", optional=True),
                Socket("plot", "XYZ_PLOT", optional=True), String("title", ""), String("x_label", ""),
                String("y_label", "metric"), Int("width", 640, min=160, max=4096, step=8),
                Int("height", 420, min=120, max=4096, step=8), Boolean("log_x", False)),
        outputs=(Out("IMAGE", "chart"), Out("STRING", "data")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, y: list[float], title: list[str], x_label: list[str], y_label: list[str],
                width: list[int], height: list[int], log_x: list[bool], x: list[Any] | None = None,
                series: list[str] | None = None, plot: list[Plot] | None = None) -> NodeResult:
        if not y:
            raise ValueError("y is empty: link the measured values (one FLOAT per cell)")
        spec = plot[0] if plot else None
        xs, names, label = chart_inputs(list(y), list(x or []), list(series or []), spec, x_label[0])
        data = series_data(list(y), xs, names)
        pixels = render_chart(data, title=title[0], x_label=label, y_label=y_label[0], width=width[0],
                              height=height[0], log_x=log_x[0])
        chart = torch.from_numpy(pixels).float().div(255.0).unsqueeze(0)
        text = json.dumps({"title": title[0], "x_label": label, "y_label": y_label[0], "series": data},
                          sort_keys=True)
        saved = save_output(ctx.env.temp_dir, "plot_metric", "png", image_to_png_bytes(chart[0]), "temp")
        return NodeResult(outputs=(chart, text), ui={"images": [saved], "text": [text]})


NODES = (PlotMetric,)
