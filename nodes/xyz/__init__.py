"""X/Y/Z plots: axes to sweep any widget over (numbers, sampler and scheduler names, prompt S/R, any listed
values), XYZ Plot to cross them into the engine's lists, XYZ Grid to lay the results out as a labelled grid,
and Plot Metric to chart a measured number against the swept parameter."""

from __future__ import annotations

from . import axes, grid, plot
from .axes import XYZFloatRange, XYZIntRange, XYZPlot, XYZPromptSR, XYZSamplerValues, XYZValueList
from .grid import GRID_KEY, XYZGrid
from .plot import PlotMetric
from .types import Axis, Plot

NODES = (*axes.NODES, *grid.NODES, *plot.NODES)

__all__ = ["Axis", "GRID_KEY", "NODES", "Plot", "PlotMetric", "XYZFloatRange", "XYZGrid", "XYZIntRange", "XYZPlot",
           "XYZPromptSR", "XYZSamplerValues", "XYZValueList"]
