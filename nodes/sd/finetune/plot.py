"""The loss curve as an image: LossGraphNode's picture and the live preview a training node sends."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN = 800, 480, 40
"""ComfyUI's loss-graph canvas: an 800 x 480 plot with a 40 px margin left and below (840 x 520 in all)."""


def loss_graph(losses: Sequence[float], *, width: int = WIDTH, height: int = HEIGHT,
               margin: int = MARGIN) -> Image.Image:
    """A white canvas with the losses as a blue polyline scaled to [min, max], axes and min/max labels.

    Step i is drawn at x = margin + i / n * width and loss l at y = height - (l - min) / (max - min) * height,
    so the first step sits on the y axis; a flat curve is drawn at the bottom.

    Raises:
        ValueError: no losses.
    """
    if not losses:
        raise ValueError("no loss values to plot (the training ran no step)")
    image = Image.new("RGB", (width + margin, height + margin), "white")
    draw = ImageDraw.Draw(image)
    low, high = min(losses), max(losses)
    span = high - low
    points = [(margin + int(i / len(losses) * width), height - int(((v - low) / span if span else 0.0) * height))
              for i, v in enumerate(losses)]
    if len(points) > 1:
        draw.line(points, fill="blue", width=2)
    else:
        draw.point(points, fill="blue")
    draw.line([(margin, 0), (margin, height)], fill="black", width=2)
    draw.line([(margin, height), (width + margin, height)], fill="black", width=2)
    font = ImageFont.load_default()
    draw.text((5, height // 2), "Loss", font=font, fill="black")
    draw.text((width // 2, height + 10), "Steps", font=font, fill="black")
    draw.text((max(0, margin - 30), 0), f"{high:.2f}", font=font, fill="black")
    draw.text((max(0, margin - 30), height - 10), f"{low:.2f}", font=font, fill="black")
    return image
