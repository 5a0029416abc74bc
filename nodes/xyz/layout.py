"""Drawing an X/Y/Z grid with Pillow: the cells' pictures in rows (y) and columns (x), value labels above the
columns and left of the rows, axis titles, and one such grid per z value (side by side, or as separate
images). The font is DejaVu Sans as matplotlib ships it (a dependency), else Pillow's own; never downloaded.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .types import Plot

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's bundled fonts at `size` px; Pillow's default font when that is missing."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except Exception:  # no matplotlib or no FreeType: still draw readable labels
        return ImageFont.load_default(size)


def tile(batch: torch.Tensor) -> np.ndarray:
    """One cell's picture: the images of its batch [B,H,W,C] in a near-square grid, as uint8 RGB [h,w,3]."""
    if batch.dim() != 4:
        raise ValueError(f"a cell's IMAGE must be [B,H,W,C]; got shape {tuple(batch.shape)}")
    pixels = (batch.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    pixels = pixels[..., :3]
    count, height, width, _ = pixels.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    sheet = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = pixels[index]
    return sheet


def _text_size(draw: ImageDraw.ImageDraw, text: str, face: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=face, align="center")
    return int(math.ceil(right - left)), int(math.ceil(bottom - top))


def wrap(text: str, width_px: int, face: ImageFont.ImageFont) -> str:
    """Text broken into lines that fit `width_px` as `face` draws it: whole words where it can, a long word
    (e.g. "euler_ancestral" in a narrow column) split only when it cannot fit alone."""
    length = face.getlength(text)
    if length <= width_px or len(text) < 2:
        return text
    per_line = max(4, int(len(text) * width_px / length))
    return "\n".join(textwrap.wrap(text, per_line, break_long_words=True)) or text


@dataclass(frozen=True)
class Layout:
    """Where things go in one grid image."""

    cell_w: int
    cell_h: int
    left: int
    top: int
    gap: int
    columns: int
    rows: int

    @property
    def size(self) -> tuple[int, int]:
        width = self.left + self.columns * self.cell_w + (self.columns - 1) * self.gap + self.gap
        height = self.top + self.rows * self.cell_h + (self.rows - 1) * self.gap + self.gap
        return width, height

    def box(self, column: int, row: int) -> tuple[int, int, int, int]:
        x0 = self.left + column * (self.cell_w + self.gap)
        y0 = self.top + row * (self.cell_h + self.gap)
        return x0, y0, x0 + self.cell_w, y0 + self.cell_h


def draw_grids(plot: Plot, tiles: list[np.ndarray], font_size: int = 0, gap: int = 4,
               z_layout: str = "side by side") -> tuple[list[np.ndarray], list[dict]]:
    """The grid image(s) and where every cell went.

    Args:
        plot: the crossed axes; `tiles[i]` is cell i's picture in `plot.cells()` order.
        font_size: label size in px; 0 picks one from the cell height.
        gap: pixels between cells.
        z_layout: "side by side" (one image, a grid per z value left to right) or "separate" (an image per z
            value, all the same size).

    Returns:
        (images as uint8 [H,W,3], per cell {"grid": image index, "box": [x0,y0,x1,y1]} in cell order).
    """
    if len(tiles) != plot.count:
        raise ValueError(f"the plot has {plot.count} cells but {len(tiles)} pictures arrived")
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    size = font_size or max(10, min(24, cell_h // 10))
    face, title_face = font(size), font(int(size * 1.2))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    columns, rows, grids = plot.shape
    x_labels = [wrap(label, cell_w, face) for label in plot.x.labels]
    y_labels = [wrap(label, max(cell_w // 2, 4 * size), face) for label in plot.y.labels] if plot.y else []
    label_h = max(_text_size(probe, text, face)[1] for text in x_labels) + size // 2
    title_h = _text_size(probe, plot.x.title, title_face)[1] + size // 2
    z_h = 0
    if plot.z is not None:
        z_h = max(_text_size(probe, f"{plot.z.title}: {label}", title_face)[1] for label in plot.z.labels) + size
    y_title_w = (_text_size(probe, plot.y.title, title_face)[1] + size // 2) if plot.y else 0
    y_label_w = (max(_text_size(probe, text, face)[0] for text in y_labels) + size) if plot.y else 0
    layout = Layout(cell_w=cell_w, cell_h=cell_h, left=gap + y_title_w + y_label_w, top=z_h + title_h + label_h,
                    gap=gap, columns=columns, rows=rows)
    width, height = layout.size
    pictures: list[Image.Image] = []
    boxes: list[dict] = [{} for _ in tiles]
    cells = plot.cells()
    for k in range(grids):
        canvas = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        grid_left = layout.left
        grid_right = layout.box(columns - 1, 0)[2]
        if plot.z is not None:
            draw.text(((grid_left + grid_right) / 2, size // 2), f"{plot.z.title}: {plot.z.labels[k]}", fill=INK,
                      font=title_face, anchor="ma")
        draw.text(((grid_left + grid_right) / 2, z_h), plot.x.title, fill=INK, font=title_face, anchor="ma")
        for i, text in enumerate(x_labels):
            x0, _, x1, _ = layout.box(i, 0)
            draw.multiline_text(((x0 + x1) / 2, layout.top - size // 4), text, fill=INK, font=face, anchor="md",
                                align="center")
        if plot.y is not None:
            for j, text in enumerate(y_labels):
                _, y0, _, y1 = layout.box(0, j)
                draw.multiline_text((layout.left - size // 2, (y0 + y1) / 2), text, fill=INK, font=face,
                                    anchor="rm", align="right")
            title_w, title_hh = _text_size(probe, plot.y.title, title_face)
            label = Image.new("RGB", (title_w + 4, title_hh + size // 2), BACKGROUND)
            ImageDraw.Draw(label).text((2, 0), plot.y.title, fill=INK, font=title_face)
            label = label.rotate(90, expand=True)
            top_of_rows, bottom_of_rows = layout.box(0, 0)[1], layout.box(0, rows - 1)[3]
            canvas.paste(label, (gap, int((top_of_rows + bottom_of_rows - label.height) / 2)))
        for index, (i, j, kk) in enumerate(cells):
            if kk != k:
                continue
            x0, y0, x1, y1 = layout.box(i, j)
            picture = tiles[index]
            ox, oy = x0 + (cell_w - picture.shape[1]) // 2, y0 + (cell_h - picture.shape[0]) // 2
            canvas.paste(Image.fromarray(picture), (ox, oy))
            boxes[index] = {"grid": k, "box": [ox, oy, ox + picture.shape[1], oy + picture.shape[0]]}
        pictures.append(canvas)
    if z_layout == "side by side" and len(pictures) > 1:
        joined = Image.new("RGB", (width * len(pictures), height), BACKGROUND)
        for k, picture in enumerate(pictures):
            joined.paste(picture, (k * width, 0))
        for entry in boxes:
            k = entry["grid"]
            x0, y0, x1, y1 = entry["box"]
            entry.update(grid=0, box=[x0 + k * width, y0, x1 + k * width, y1])
        pictures = [joined]
    return [np.asarray(picture) for picture in pictures], boxes
