"""Line charts of a measured number against a swept parameter, drawn with matplotlib's Agg backend (no display,
no pyplot state: each chart is its own Figure, so concurrent runs cannot draw into each other)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """A number as a JSON-ready int or float (numpy scalars included); anything else unchanged."""
    if not is_number(value):
        return value
    return float(value) if isinstance(value, (float, np.floating)) else int(value)


def series_data(y: Sequence[float], x: Sequence[Any], series: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """Points grouped by series, in first-seen series order, each series sorted by x when x is numeric.

    Args:
        y: the measured value per point.
        x: the swept value per point (numbers, or labels drawn as categories).
        series: which line each point belongs to.
    """
    if not (len(y) == len(x) == len(series)):
        raise ValueError(f"y has {len(y)} points but x {len(x)} and series {len(series)}")
    grouped: dict[str, list[tuple[Any, float]]] = {}
    for value, position, name in zip(y, x, series):
        grouped.setdefault(str(name), []).append((position, float(value)))
    numeric = all(is_number(position) for position in x)
    data = {}
    for name, points in grouped.items():
        if numeric:
            points = sorted(points, key=lambda point: float(point[0]))
        data[name] = {"x": [_plain(p[0]) for p in points], "y": [p[1] for p in points]}
    return data


def render_chart(data: dict[str, dict[str, list[Any]]], *, title: str, x_label: str, y_label: str,
                 width: int, height: int, log_x: bool = False) -> np.ndarray:
    """The chart as uint8 RGB [height, width, 3]: one line with markers per series, a legend when there are
    several, labelled axes and a light grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, points in data.items():
        axes.plot([str(v) if not is_number(v) else v for v in points["x"]], points["y"], marker="o", label=name)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    if title:
        axes.set_title(title)
    if log_x:
        axes.set_xscale("log")
    axes.grid(True, alpha=0.3)
    if len(data) > 1 or (len(data) == 1 and next(iter(data)) != ""):
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return pixels
