"""The payloads of the X/Y/Z plot nodes: an axis (what is swept) and a plot (the axes crossed)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

AXIS_NAMES = ("x", "y", "z")
VALUE_KINDS = ("INT", "FLOAT", "STRING")
"""What an axis sweeps: an INT or FLOAT widget's numbers, or text (a COMBO's options, a prompt)."""


@dataclass(frozen=True)
class Axis:
    """One swept parameter: its values (of one `kind`), how each is labelled on the grid, and a title.

    The labels differ from the values where the value is long (a whole prompt labelled by the word that was
    replaced in it) or needs formatting (floats)."""

    title: str
    kind: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in VALUE_KINDS:
            raise ValueError(f"axis {self.title!r}: kind {self.kind!r} is not one of {VALUE_KINDS}")
        if not self.values:
            raise ValueError(f"axis {self.title!r} has no values: give at least one")
        if len(self.labels) != len(self.values):
            raise ValueError(f"axis {self.title!r}: {len(self.values)} values but {len(self.labels)} labels")


def label_of(value: Any) -> str:
    """A value as a grid label: floats without noise digits (0.30000000000000004 -> 0.3)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def make_axis(title: str, kind: str, values: list[Any], labels: list[str] | None = None) -> Axis:
    return Axis(title=title, kind=kind, values=tuple(values),
                labels=tuple(labels) if labels is not None else tuple(label_of(v) for v in values))


@dataclass(frozen=True)
class Plot:
    """Axes crossed: cell i of the sweep takes x fastest, then y, then z (`cells()` in that order), the order
    in which XYZ Plot's lists are laid out and in which XYZ Grid expects the images."""

    x: Axis
    y: Axis | None = None
    z: Axis | None = None

    @property
    def axes(self) -> dict[str, Axis]:
        """The axes that are present, by name."""
        return {name: axis for name, axis in zip(AXIS_NAMES, (self.x, self.y, self.z)) if axis is not None}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, grids): the number of x, y and z values (1 for an absent axis)."""
        columns, rows, grids = (len(axis.values) if axis is not None else 1 for axis in (self.x, self.y, self.z))
        return columns, rows, grids

    @property
    def count(self) -> int:
        columns, rows, grids = self.shape
        return columns * rows * grids

    def cells(self) -> list[tuple[int, int, int]]:
        """(x index, y index, z index) of every cell, x fastest."""
        columns, rows, grids = self.shape
        return [(i, j, k) for k, j, i in itertools.product(range(grids), range(rows), range(columns))]

    def values_along(self, name: str) -> list[Any]:
        """Axis `name`'s value in every cell (empty for an absent axis)."""
        axis = self.axes.get(name)
        if axis is None:
            return []
        position = AXIS_NAMES.index(name)
        return [axis.values[cell[position]] for cell in self.cells()]

    def cell_info(self, index: int) -> dict[str, Any]:
        """What cell `index` was made with: each present axis's title, value and label."""
        cell = self.cells()[index]
        info: dict[str, Any] = {"index": index}
        for name, axis in self.axes.items():
            position = cell[AXIS_NAMES.index(name)]
            info[name] = {"title": axis.title, "value": axis.values[position], "label": axis.labels[position]}
        return info

    def describe(self) -> dict[str, Any]:
        """The axes as plain JSON data."""
        return {name: {"title": axis.title, "kind": axis.kind, "values": list(axis.values), "labels": list(axis.labels)}
                for name, axis in self.axes.items()}


def to_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True)
