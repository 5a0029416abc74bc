"""X/Y/Z plot axes: nodes that say what to sweep, and XYZ Plot, which crosses them into the engine's lists.

An axis node makes an `XYZ_AXIS` (values, labels, a title). XYZ Plot crosses up to three axes (x fastest, then
y, then z, as A1111's X/Y/Z plot orders its cells) and hands each axis's values on as a list with one item per
cell (ComfyUI's OUTPUT_IS_LIST): a widget converted to a socket and fed one of these lists makes its node run
once per cell, each call cached on its own, so a sweep over the seed re-runs only the sampler and what follows
it. Each linked item is checked against the receiving widget's type, range and COMBO options before the node
runs (nodegraph/validation.py `check_value`, applied item by item by the executor). XYZ Grid then lays the
cells' images out with their labels.
"""

from __future__ import annotations

import re
from typing import Any

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket, String

from ..sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES
from .types import AXIS_NAMES, VALUE_KINDS, Axis, Plot, make_axis

CATEGORY = "xyz plot"
MAX_VALUES = 1000
"""More values than this on one axis is taken for a typo in a range (the graph would run that many times)."""
_INT_LIMIT = 2**64 - 1
"""Wide enough for any seed (KSampler's seed goes up to 2**64 - 1)."""


def _title(title: str, fallback: str) -> str:
    return title.strip() or fallback


def _checked_count(count: int, what: str) -> None:
    if count > MAX_VALUES:
        raise ValueError(f"{what} gives {count} values; at most {MAX_VALUES} per axis")


def split_values(text: str) -> list[str]:
    """The items of a value list: one per line when the text has several lines, else comma-separated
    (A1111's X/Y/Z plot separates by commas; a line each keeps commas inside prompts)."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return [part.strip() for part in parts if part.strip()]


def parse_values(text: str, kind: str) -> list[Any]:
    """Typed values from text; a number that does not parse names itself."""
    items = split_values(text)
    values: list[Any] = []
    for item in items:
        if kind == "STRING":
            values.append(item)
            continue
        try:
            number = float(item)
        except ValueError:
            raise ValueError(f"value {item!r} is not a number (the axis kind is {kind})") from None
        if kind == "INT":
            if not number.is_integer():
                raise ValueError(f"value {item!r} is not a whole number (the axis kind is INT)")
            values.append(int(item) if re.fullmatch(r"[+-]?\d+", item) else int(number))
        else:
            values.append(number)
    _checked_count(len(values), "the value list")
    return values


class XYZIntRange(Node):
    schema = NodeSchema(
        type_id="XYZIntRange", display_name="XYZ Int Range", category=CATEGORY,
        description="Whole numbers from start to stop (inclusive) by step, e.g. steps or seeds, as one X/Y/Z axis.",
        inputs=(String("title", "steps"), Int("start", 4, min=-_INT_LIMIT, max=_INT_LIMIT),
                Int("stop", 16, min=-_INT_LIMIT, max=_INT_LIMIT), Int("step", 4, min=-1000000, max=1000000)),
        outputs=(Out("XYZ_AXIS", "axis"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, title: str, start: int, stop: int, step: int) -> tuple[Axis]:
        if step == 0:
            raise ValueError("step is 0: the range would never reach stop")
        if (stop - start) * step < 0:
            raise ValueError(f"the range {start}..{stop} runs the other way from step {step}")
        _checked_count((stop - start) // step + 1, f"the range {start}..{stop} by {step}")
        return (make_axis(_title(title, "value"), "INT", list(range(start, stop + (1 if step > 0 else -1), step))),)


class XYZFloatRange(Node):
    schema = NodeSchema(
        type_id="XYZFloatRange", display_name="XYZ Float Range", category=CATEGORY,
        description="`count` evenly spaced numbers from start to stop (both included), e.g. CFG scales or LoRA "
                    "strengths, as one X/Y/Z axis.",
        inputs=(String("title", "cfg"), Float("start", 2.0, min=-1e9, max=1e9),
                Float("stop", 8.0, min=-1e9, max=1e9), Int("count", 4, min=1, max=MAX_VALUES)),
        outputs=(Out("XYZ_AXIS", "axis"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, title: str, start: float, stop: float, count: int) -> tuple[Axis]:
        if count == 1:
            values = [start]
        else:
            values = [start + (stop - start) * i / (count - 1) for i in range(count)]
        values = [round(v, 10) for v in values]  # 0.30000000000000004 -> 0.3: the value a user typed
        return (make_axis(_title(title, "value"), "FLOAT", values),)


class XYZValueList(Node):
    schema = NodeSchema(
        type_id="XYZValueList", display_name="XYZ Value List", category=CATEGORY,
        description="Listed values as one X/Y/Z axis: numbers (INT, FLOAT) or text (STRING: any COMBO's options, "
                    "e.g. sampler or scheduler names, or prompts). Comma-separated, or one per line.",
        inputs=(String("title", "value"), Combo("kind", VALUE_KINDS, "INT"),
                String("values", "1, 2, 3", multiline=True)),
        outputs=(Out("XYZ_AXIS", "axis"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, title: str, kind: str, values: str) -> tuple[Axis]:
        parsed = parse_values(values, kind)
        if not parsed:
            raise ValueError("values is empty: list at least one value")
        return (make_axis(_title(title, "value"), kind, parsed),)


_SAMPLING_CHOICES = {"sampler_name": SAMPLER_NAMES, "scheduler": SCHEDULER_NAMES}


class XYZSamplerValues(Node):
    schema = NodeSchema(
        type_id="XYZSamplerValues", display_name="XYZ Samplers / Schedulers", category=CATEGORY,
        description="Sampler or scheduler names as one X/Y/Z axis, checked against the names KSampler offers "
                    "(empty: all of them).",
        inputs=(Combo("widget", tuple(_SAMPLING_CHOICES), "sampler_name"),
                String("values", "euler, heun, dpmpp_2m", multiline=True)),
        outputs=(Out("XYZ_AXIS", "axis"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, widget: str, values: str) -> tuple[Axis]:
        choices = _SAMPLING_CHOICES[widget]
        names = split_values(values) or list(choices)
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise ValueError(f"{widget}: {', '.join(map(repr, unknown))} not among KSampler's options "
                             f"({', '.join(choices)})")
        return (make_axis(widget, "STRING", names),)


class XYZPromptSR(Node):
    schema = NodeSchema(
        type_id="XYZPromptSR", display_name="XYZ Prompt S/R", category=CATEGORY,
        description="A prompt with one word or phrase searched and replaced by each listed alternative (A1111's "
                    "Prompt S/R): the axis's first value is the prompt itself. Labels show the replacement.",
        inputs=(String("prompt", "a red circle on a blue background", multiline=True), String("search", "red"),
                String("replace", "green, yellow", multiline=True)),
        outputs=(Out("XYZ_AXIS", "axis"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, prompt: str, search: str, replace: str) -> tuple[Axis]:
        if not search:
            raise ValueError("search is empty: name the word of the prompt to replace")
        if search not in prompt:
            raise ValueError(f"search {search!r} does not occur in the prompt {prompt!r}")
        words = [search, *split_values(replace)]
        _checked_count(len(words), "the replacement list")
        return (make_axis(f"prompt: {search}", "STRING", [prompt.replace(search, word) for word in words], words),)


def _typed(values: list[Any], kind: str) -> list[Any]:
    """An axis's values as the list for one typed output; values of another kind pass through unchanged and
    are refused by the receiving widget's per-item check, which names the item."""
    if kind == "INT":
        return [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
    if kind == "FLOAT":
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    return [v if isinstance(v, str) else str(v) for v in values]


def _outputs() -> tuple[Any, ...]:
    outputs = []
    for name in AXIS_NAMES:
        for kind in VALUE_KINDS:
            outputs.append(Out(kind, f"{name}_{kind.lower()}", is_list=True,
                               tooltip=f"the {name} axis's value in every cell, as {kind}"))
    outputs.append(Out("XYZ_PLOT", "plot", tooltip="the crossed axes, for XYZ Grid and Plot Metric"))
    return tuple(outputs)


class XYZPlot(Node):
    schema = NodeSchema(
        type_id="XYZPlot", display_name="XYZ Plot", category=CATEGORY,
        description="Crosses up to three axes: each output is one axis's value in every cell (x fastest, then y, "
                    "then z). Link the output of the widget's type (INT, FLOAT, or STRING for text and COMBO "
                    "widgets) into a widget converted to a socket; the graph then runs once per cell. An absent "
                    "axis's outputs are empty.",
        inputs=(Socket("x", "XYZ_AXIS"), Socket("y", "XYZ_AXIS", optional=True),
                Socket("z", "XYZ_AXIS", optional=True)),
        outputs=_outputs(),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, x: Axis, y: Axis | None = None, z: Axis | None = None) -> tuple[Any, ...]:
        plot = Plot(x=x, y=y, z=z)
        _checked_count(plot.count, f"the {' x '.join(str(n) for n in plot.shape)} grid")
        outputs: list[Any] = []
        for name in AXIS_NAMES:
            axis = plot.axes.get(name)
            values = plot.values_along(name)
            for kind in VALUE_KINDS:
                outputs.append(_typed(values, kind) if axis is not None else [])
        outputs.append(plot)
        return tuple(outputs)


NODES = (XYZIntRange, XYZFloatRange, XYZValueList, XYZSamplerValues, XYZPromptSR, XYZPlot)
