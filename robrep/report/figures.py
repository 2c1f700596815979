"""The report's figures with PIL alone (no matplotlib): grids of store rows, labelled grids and line charts."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from robrep.images import decode_png

CELL_GAP, LABEL_H = 2, 12
COLOURS = [(200, 30, 30), (30, 90, 200), (30, 150, 60), (150, 60, 160), (220, 140, 0)]


def image_grid(rows: pd.DataFrame, ncols: int = 8, caption: str | None = None, scale: int = 1) -> Image.Image:
    """A grid of the rows' `image_png`s, row-major, each captioned by one column's value if asked: a
    labelled_grid without row labels."""
    if "image_png" not in rows.columns:
        raise ValueError("image_grid: these rows have no image_png; add them with robrep.store.load_images(store, "
                         "rows), or read with load_results(..., images=True)")
    images = list(rows["image_png"])
    if not images:
        raise ValueError("image_grid got no rows")
    ncols = min(ncols, len(images))
    captions = [str(v)[:12] for v in rows[caption]] if caption else [""] * len(images)
    cells = [images[i : i + ncols] for i in range(0, len(images), ncols)]
    labels = [captions[i : i + ncols] for i in range(0, len(images), ncols)]
    return labelled_grid(cells, [""] * len(cells), [], scale=scale, cell_labels=labels)


def labelled_grid(cells: list[list[bytes | np.ndarray | None]], row_labels: list[str], col_labels: list[str],
                  scale: int = 4, cell_labels: list[list[str]] | None = None) -> Image.Image:
    """A grid of images (PNG bytes or (H, W, 3) uint8; None = blank) with row and column labels, and
    optionally a caption under each cell."""
    first = next(c for row in cells for c in row if c is not None)
    first = decode_png(first) if isinstance(first, bytes) else first
    h, w = first.shape[0] * scale, first.shape[1] * scale
    left = (8 + 6 * max(len(s) for s in row_labels)) if any(row_labels) else 0
    top = LABEL_H if col_labels else 0
    below = LABEL_H if cell_labels else 0
    ncols = max(len(row) for row in cells)
    grid = Image.new("RGB", (left + ncols * (w + CELL_GAP), top + len(cells) * (h + below + CELL_GAP)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(col_labels):
        draw.text((left + c * (w + CELL_GAP) + 1, 0), str(label)[: max(1, w // 6)], fill="black")
    for r, row in enumerate(cells):
        y = top + r * (h + below + CELL_GAP)
        draw.text((2, y + h // 2 - 5), row_labels[r], fill="black")
        for c, cell in enumerate(row):
            if cell_labels:
                draw.text((left + c * (w + CELL_GAP) + 1, y + h), cell_labels[r][c], fill="black")
            if cell is None:
                continue
            image = decode_png(cell) if isinstance(cell, bytes) else cell
            grid.paste(Image.fromarray(image).resize((w, h), Image.NEAREST), (left + c * (w + CELL_GAP), y))
    return grid


def line_chart(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, log_x: bool = True,
               size: tuple[int, int] = (520, 340), marks: dict[str, float] | None = None) -> Image.Image:
    """Lines of (x, y) points, one per series name, with axes, ticks and a legend; `marks` draws a labelled
    vertical line at each x (within the points' range)."""
    width, height = size
    left, right, top, bottom = 60, 20, 20, 45
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    points = [p for values in series.values() for p in values]
    xs = [np.log2(x) if log_x else x for x, _ in points]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = 0.0, max(max(y for _, y in points) * 1.05, 1e-6)

    def at(x: float, y: float) -> tuple[float, float]:
        x = np.log2(x) if log_x else x
        return (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),
                height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom))

    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for x in sorted({x for x, _ in points}):
        px, _ = at(x, 0)
        draw.line([(px, height - bottom), (px, height - bottom + 4)], fill="black")
        draw.text((px - 8, height - bottom + 6), f"{x:g}", fill="black")
    for k in range(5):
        y = y_lo + (y_hi - y_lo) * k / 4
        _, py = at(sorted({x for x, _ in points})[0], y)
        draw.text((4, py - 5), f"{y:.2f}", fill="black")
    for label, x in (marks or {}).items():
        if min(x for x, _ in points) <= x <= max(x for x, _ in points):
            px, _ = at(x, 0)
            draw.line([(px, top), (px, height - bottom)], fill=(160, 160, 160))
            draw.text((px + 3, height - bottom - 14), label, fill=(110, 110, 110))
    draw.text((width // 2 - 40, height - 16), x_label, fill="black")
    draw.text((4, 4), y_label, fill="black")
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        line = [at(x, y) for x, y in sorted(values)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for px, py in line:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.text((width - right - 150, top + 14 * n), name, fill=colour)
    return image
