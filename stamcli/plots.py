"""Small, dependable PNG charts drawn with OpenCV and numpy (no matplotlib).

* :func:`line_chart` - training curves: one coloured polyline with markers per series, nice
  round ticks, legend, title and axis labels. Gaps (``None``/NaN), a single point and constant
  series are all drawn without special-casing by the caller.
* :func:`confusion_matrix_image` - a heatmap of a confusion matrix (rows = true class, columns =
  predicted class), with counts in the cells while they fit and class names (or class indices,
  for hundreds of classes) on both axes. The image never exceeds 4000 pixels a side.

Both write the PNG atomically (a temporary file beside it, then ``os.replace``), create missing
parent folders and raise :class:`~stamcli.errors.StamError` when the file cannot be written.

OpenCV's Hershey fonts draw ASCII only: other characters are transliterated where possible
(``é`` -> ``e``) and shown as ``?`` otherwise; long names are cut with ``...``.
"""

from __future__ import annotations

import math
import os
import unicodedata
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from .errors import StamError

__all__ = ["PALETTE", "line_chart", "confusion_matrix_image", "render_line_chart", "render_confusion_matrix",
           "write_png", "write_atomic"]

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
TEXT = (40, 40, 40)
AXIS = (90, 90, 90)
GRID = (228, 228, 228)
# Matplotlib's "tab10" colours, in OpenCV's BGR order.
PALETTE = [
    (180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
    (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23),
]
MAX_SIDE = 4000  # no chart is larger than this, whatever the number of classes
_MATRIX_SIDE = 3200  # the largest heatmap (the rest of MAX_SIDE is for labels)
# Matplotlib's "Blues" colour map, light to dark, in RGB.
_BLUES = np.array([(247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
                   (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107)], dtype=np.float64)


# --------------------------------------------------------------------------- files


def write_atomic(path: str | os.PathLike, data: bytes, what: str = "") -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (readers never see
    half a file); creates missing parent folders. :class:`StamError` when it cannot be written
    (``cannot write {what}{path}: reason``, e.g. ``what="preview "``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        reason = err.strerror or str(err) or type(err).__name__
        raise StamError(f"cannot write {what}{path}: {reason}") from None
    return path


def write_png(path: str | os.PathLike, image: np.ndarray, what: str = "") -> Path:
    """Encode ``image`` (BGR uint8) as PNG and write it atomically; returns the path."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise StamError(f"cannot write {what}{path}: PNG encoding failed")
    return write_atomic(path, encoded.tobytes(), what)


# --------------------------------------------------------------------------- text


def _ascii(text) -> str:
    """What the Hershey font can draw: ASCII, accents dropped, anything else as '?'."""
    text = str(text).replace("\u2026", "...").replace("\n", " ").replace("\r", " ").replace("\t", " ")
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _size(text: str, scale: float, thick: int = 1) -> tuple[int, int, int]:
    """(width, height above the baseline, depth below it) of ``text`` in pixels."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, thick)
    return w, h, base


def _fit(text, max_width: int, scale: float, thick: int = 1, max_chars: int = 40) -> str:
    """``text`` (made ASCII) cut with '...' so that it is at most ``max_width`` pixels wide."""
    text = _ascii(text)
    if len(text) > max_chars:
        text = text[: max_chars - 3].rstrip() + "..."
    if _size(text, scale, thick)[0] <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits together with the ellipsis
        mid = (lo + hi + 1) // 2
        if _size(text[:mid].rstrip() + "...", scale, thick)[0] <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..." if lo else "..."


def _put(img, text: str, x: float, y: float, scale: float, color=TEXT, thick: int = 1, align: str = "left",
         valign: str = "baseline") -> None:
    """Draw ``text`` with its anchor at (x, y): ``align`` left/center/right, ``valign``
    baseline/center/top."""
    w, h, _ = _size(text, scale, thick)
    if align == "center":
        x -= w / 2
    elif align == "right":
        x -= w
    if valign == "center":
        y += h / 2
    elif valign == "top":
        y += h
    cv2.putText(img, text, (int(round(x)), int(round(y))), FONT, scale, color, thick, cv2.LINE_AA)


def _put_vertical(img, text: str, x: float, y: float, scale: float, color=TEXT, thick: int = 1,
                  anchor: str = "center") -> None:
    """Draw ``text`` rotated 90 degrees (read bottom to top). (x, y) is the horizontal centre of
    the text column and, by ``anchor``, its vertical centre ("center"), its start - the bottom
    ("bottom") - or its end ("top")."""
    w, h, base = _size(text, scale, thick)
    pad = 2
    mask = np.zeros((h + base + 2 * pad, w + 2 * pad), np.uint8)
    cv2.putText(mask, text, (pad, pad + h), FONT, scale, 255, thick, cv2.LINE_AA)
    mask = np.rot90(mask)  # counter-clockwise: the text now reads upwards
    mh, mw = mask.shape
    left = int(round(x - mw / 2))
    top = {"center": y - mh / 2, "bottom": y - mh + pad, "top": y - pad}[anchor]
    _blend(img, mask, left, int(round(top)), color)


def _blend(img, mask: np.ndarray, left: int, top: int, color) -> None:
    """Paint ``color`` into ``img`` through ``mask`` (0..255 coverage) placed at (left, top)."""
    H, W = img.shape[:2]
    mh, mw = mask.shape
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + mw, W), min(top + mh, H)
    if x0 >= x1 or y0 >= y1:
        return
    alpha = mask[y0 - top: y1 - top, x0 - left: x1 - left, None].astype(np.float32) / 255.0
    region = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = (region * (1 - alpha) + np.array(color, np.float32) * alpha + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- ticks


def _nice_step(span: float, target: int, integer: bool) -> float:
    raw = span / max(1, target)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer and step < 1:
        step = 1.0
    return step


def _ticks(lo: float, hi: float, target: int, integer: bool = False) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) between ``lo`` and ``hi``."""
    step = _nice_step(hi - lo, target, integer)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def _tick_labels(ticks: list[float]) -> list[str]:
    if not ticks:
        return []
    if len(ticks) == 1:
        return [_number(ticks[0])]
    step = min(b - a for a, b in zip(ticks, ticks[1:]))
    biggest = max(abs(t) for t in ticks)
    if biggest >= 1e6 or step < 1e-4:
        digits = max(1, math.floor(math.log10(biggest or 1)) - math.floor(math.log10(step)) + 1)
        return [f"{t:.{min(digits, 12)}g}" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [f"{t + 0.0:.{decimals}f}" if t else f"{0:.{decimals}f}" for t in ticks]


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def _range(values: np.ndarray, integer: bool) -> tuple[float, float]:
    """The axis range for ``values`` (finite): 5% padding, or a sensible window for one value."""
    if values.size == 0:
        return -0.05, 1.05
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
        pad = 0.5 if integer else (abs(lo) * 0.1 if lo else 1.0)
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


# --------------------------------------------------------------------------- line chart


def _floats(values: Iterable) -> np.ndarray:
    """``values`` as float64, with None and anything unreadable as NaN."""
    out = []
    for value in values:
        try:
            out.append(float(value) if value is not None else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.array(out, dtype=np.float64)


def _marker(img, x: float, y: float, index: int, color) -> None:
    """A small filled marker; its shape changes each time the palette starts over (circle,
    square, triangle, diamond) so that series of the same colour stay apart."""
    shape = (index // len(PALETTE)) % 4
    if shape == 0:
        shift = 4
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 3 << shift, color, -1, cv2.LINE_AA, shift)
        return
    r = 3.5
    if shape == 1:
        pts = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    elif shape == 2:
        pts = [(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)]
    else:
        pts = [(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)]
    cv2.fillPoly(img, [np.round(np.array(pts) * 16).astype(np.int32)], color, cv2.LINE_AA, 4)


def render_line_chart(
    series: dict[str, Sequence[Optional[float]]],
    *,
    title: str,
    xlabel: str = "epoch",
    ylabel: str = "",
    x: Optional[Sequence[float]] = None,
    size: tuple[int, int] = (800, 500),
) -> np.ndarray:
    """The chart of :func:`line_chart` as a BGR uint8 image (height, width, 3)."""
    W, H = max(240, int(size[0])), max(180, int(size[1]))
    img = np.full((H, W, 3), 255, np.uint8)
    names = [str(name) for name in series]
    ys = [_floats(values) for values in series.values()]
    longest = max((len(v) for v in ys), default=0)
    xs = _floats(x) if x is not None else np.arange(1, longest + 1, dtype=np.float64)
    ys = [v[: len(xs)] for v in ys]

    # which x values appear with at least one finite y value, and all finite y values
    used_x = [xs[: len(v)][np.isfinite(v) & np.isfinite(xs[: len(v)])] for v in ys]
    all_x = np.concatenate(used_x) if used_x else np.zeros(0)
    all_y = np.concatenate([v[np.isfinite(v) & np.isfinite(xs[: len(v)])] for v in ys]) if ys else np.zeros(0)
    integer_x = bool(all_x.size) and bool(np.all(all_x == np.round(all_x)))
    x0, x1 = _range(all_x, integer_x)
    y0, y1 = _range(all_y, False)

    # ---- layout: title, legend rows, then the plot with its tick labels and axis labels
    title_scale, tick_scale, label_scale, legend_scale = 0.7, 0.45, 0.5, 0.48
    top = 12
    title_text = _fit(title, W - 24, title_scale, 2, max_chars=120)
    title_h = _size(title_text, title_scale, 2)[1]
    title_y = top + title_h
    top = title_y + 12

    swatch = 26
    row_h = _size("Ag", legend_scale)[1] + 10
    legend_rows: list[list[tuple[str, int, int]]] = [[]]  # rows of (text, series index, item width)
    max_rows = max(1, (H // 5) // row_h)
    cursor = 0
    hidden = 0
    for i, name in enumerate(names):
        text = _fit(name, max(60, W // 3), legend_scale, max_chars=48)
        width = swatch + 6 + _size(text, legend_scale)[0] + 18
        if cursor and cursor + width > W - 40:
            if len(legend_rows) == max_rows:
                hidden = len(names) - i
                break
            legend_rows.append([])
            cursor = 0
        legend_rows[-1].append((text, i, width))
        cursor += width
    if hidden:
        legend_rows[-1].append((f"(+{hidden} more)", -1, _size(f"(+{hidden} more)", legend_scale)[0] + 18))
    legend_top = top
    if names:
        top += len(legend_rows) * row_h + 4

    y_ticks = _ticks(y0, y1, max(2, (H - top - 60) // 55))
    y_labels = _tick_labels(y_ticks)
    ylabel_text = _fit(ylabel, H - top - 60, label_scale, max_chars=80) if ylabel else ""
    ylabel_w = (_size("Ag", label_scale)[1] + 14) if ylabel_text else 0
    left = 10 + ylabel_w + max((_size(t, tick_scale)[0] for t in y_labels), default=0) + 10
    right = W - 22
    xlabel_text = _fit(xlabel, W - 40, label_scale, max_chars=80) if xlabel else ""
    tick_h = _size("0", tick_scale)[1]
    bottom = H - 10 - (_size("Ag", label_scale)[1] + 12 if xlabel_text else 0) - tick_h - 12
    if right - left < 40 or bottom - top < 40:
        raise StamError(f"chart size {W}x{H} is too small for its labels")
    x_ticks = _ticks(x0, x1, max(2, (right - left) // 70), integer=integer_x)
    x_labels = _tick_labels(x_ticks)

    def px(v):
        return left + (v - x0) / (x1 - x0) * (right - left)

    def py(v):
        return bottom - (v - y0) / (y1 - y0) * (bottom - top)

    # ---- grid, axes, ticks
    for t, label in zip(y_ticks, y_labels):
        yy = int(round(py(t)))
        cv2.line(img, (left, yy), (right, yy), GRID, 1)
        cv2.line(img, (left - 5, yy), (left, yy), AXIS, 1)
        _put(img, label, left - 8, yy, tick_scale, align="right", valign="center")
    for t, label in zip(x_ticks, x_labels):
        xx = int(round(px(t)))
        cv2.line(img, (xx, top), (xx, bottom), GRID, 1)
        cv2.line(img, (xx, bottom), (xx, bottom + 5), AXIS, 1)
        _put(img, label, xx, bottom + 9, tick_scale, align="center", valign="top")
    cv2.rectangle(img, (left, top), (right, bottom), AXIS, 1)

    # ---- series
    many = max((len(v) for v in ys), default=0) > 60
    for i, v in enumerate(ys):
        color = PALETTE[i % len(PALETTE)]
        ok = np.isfinite(v) & np.isfinite(xs[: len(v)])
        points = np.stack([px(xs[: len(v)]), py(v)], axis=1) if len(v) else np.zeros((0, 2))
        shift = 4  # sub-pixel precision for smooth anti-aliased lines
        runs, run = [], []
        for j in range(len(v)):
            if ok[j]:
                run.append(points[j])
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        for run in runs:
            pts = np.round(np.array(run) * (1 << shift)).astype(np.int32)
            if len(pts) > 1:
                cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, color, 2, cv2.LINE_AA, shift)
            if len(pts) == 1 or not many:
                for p in pts:
                    _marker(img, p[0] / (1 << shift), p[1] / (1 << shift), i, color)
    if not all_y.size:
        _put(img, "no data", (left + right) / 2, (top + bottom) / 2, 0.6, AXIS, align="center", valign="center")

    # ---- title, legend, axis labels
    _put(img, title_text, W / 2, title_y, title_scale, BLACK, 2, align="center")
    for r, row in enumerate(legend_rows):
        width = sum(item[2] for item in row) - 18
        cx = max(10, (W - width) / 2)
        cy = legend_top + r * row_h + row_h / 2
        for text, i, item_w in row:
            if i >= 0:
                color = PALETTE[i % len(PALETTE)]
                cv2.line(img, (int(cx), int(cy)), (int(cx + swatch), int(cy)), color, 2, cv2.LINE_AA)
                _marker(img, cx + swatch / 2, cy, i, color)
                _put(img, text, cx + swatch + 6, cy, legend_scale, valign="center")
            else:
                _put(img, text, cx, cy, legend_scale, AXIS, valign="center")
            cx += item_w
    if xlabel_text:
        _put(img, xlabel_text, (left + right) / 2, H - 12, label_scale, align="center")
    if ylabel_text:
        _put_vertical(img, ylabel_text, 10 + ylabel_w / 2, (top + bottom) / 2, label_scale)
    return img


def line_chart(
    path: str | os.PathLike,
    series: dict[str, Sequence[Optional[float]]],
    *,
    title: str,
    xlabel: str = "epoch",
    ylabel: str = "",
    x: Optional[Sequence[float]] = None,
    size: tuple[int, int] = (800, 500),
) -> Path:
    """Draw ``series`` (name -> y values) as lines over ``x`` (default 1, 2, ...) into the PNG
    ``path``; ``size`` is (width, height). ``None``/NaN values leave gaps; a series longer than
    ``x`` is cut to it. Returns the path."""
    image = render_line_chart(series, title=title, xlabel=xlabel, ylabel=ylabel, x=x, size=size)
    return write_png(path, image)


# --------------------------------------------------------------------------- confusion matrix


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> BGR uint8 colours from white to dark blue."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_BLUES) - 1)
    low = np.floor(v).astype(int).clip(0, len(_BLUES) - 2)
    frac = (v - low)[..., None]
    rgb = _BLUES[low] * (1 - frac) + _BLUES[low + 1] * frac
    return np.round(rgb[..., ::-1]).astype(np.uint8)


def _index_step(n: int, cell: float, min_gap: int = 34) -> int:
    """How many classes apart the index labels are when names do not fit."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000):
        if step * cell >= min_gap:
            return step
    return max(1, n)


def render_confusion_matrix(
    matrix,
    labels: Sequence[str],
    *,
    title: str = "confusion matrix",
    normalize: bool = True,
) -> np.ndarray:
    """The heatmap of :func:`confusion_matrix_image` as a BGR uint8 image."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.size == 0:
        counts = counts.reshape(0, 0)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise StamError(f"a confusion matrix must be square, not of shape {tuple(counts.shape)}")
    n = counts.shape[0]
    labels = [str(label) for label in labels]
    if len(labels) != n:
        raise StamError(f"the confusion matrix has {n} classes but {len(labels)} labels were given")
    counts = np.nan_to_num(counts, nan=0.0)
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        peak = counts.max() if n else 0.0
        shares = counts / peak if peak > 0 else np.zeros_like(counts)

    # ---- cell size: big cells for a few classes, at least 16 px while the matrix fits in 3200
    if n == 0:
        cell, side = 0.0, 200
    elif n <= _MATRIX_SIDE:
        cell = float(max(min(80, 900 // n), min(16, _MATRIX_SIDE // n)))
        side = int(cell * n)
    else:
        side = _MATRIX_SIDE
        cell = side / n
    label_scale = min(0.5, max(0.3, (cell - 3) / 24))
    show_names = cell >= 14
    name_width = 230

    title_scale, axis_scale, tick_scale = 0.7, 0.55, 0.42
    row_texts = [_fit(label, name_width, label_scale, max_chars=32) for label in labels] if show_names else []
    if show_names:
        row_w = max((_size(t, label_scale)[0] for t in row_texts), default=0)
        col_h = row_w
    else:
        step = _index_step(n, cell) if n else 1
        index_ticks = list(range(0, n, step))
        row_w = max((_size(str(i), tick_scale)[0] for i in index_ticks), default=0)
        col_h = _size("0", tick_scale)[1]
    axis_h = _size("Ag", axis_scale)[1]

    # ---- layout
    title_text = _ascii(title)
    subtitle = ("colour: share of each true class (row)" if normalize else "colour: count") + \
        ("" if show_names or n == 0 else "; axes: class index")
    title_h = _size(title_text, title_scale, 2)[1]
    sub_h = _size(subtitle, tick_scale)[1]
    mx = 14 + axis_h + 14 + row_w + 8  # matrix left
    my = 14 + title_h + 10 + sub_h + 18  # matrix top
    bar_x = mx + side + 18
    bar_w = 16
    bar_labels = ["0%", "50%", "100%"] if normalize else ["0", _number(counts.max() / 2 if n else 0),
                                                            _number(counts.max() if n else 0)]
    W = bar_x + bar_w + 8 + max(_size(t, tick_scale)[0] for t in bar_labels) + 14
    H = my + side + 8 + col_h + 14 + axis_h + 14
    W = max(W, _size(title_text, title_scale, 2)[0] + 28, _size(subtitle, tick_scale)[0] + 28)
    if W > MAX_SIDE:  # only a very long title can do this
        title_text = _fit(title_text, MAX_SIDE - 28, title_scale, 2, max_chars=400)
        W = MAX_SIDE
    img = np.full((H, W, 3), 255, np.uint8)

    _put(img, title_text, W / 2, 14 + title_h, title_scale, BLACK, 2, align="center")
    _put(img, subtitle, W / 2, 14 + title_h + 10 + sub_h, tick_scale, AXIS, align="center")

    if n == 0:
        cv2.rectangle(img, (mx, my), (mx + side, my + side), AXIS, 1)
        _put(img, "no classes", mx + side / 2, my + side / 2, 0.55, AXIS, align="center", valign="center")
        return img

    # ---- heatmap: one pixel per cell, scaled up (or down, for thousands of classes)
    cells = _colormap(shares)
    interp = cv2.INTER_NEAREST if side >= n else cv2.INTER_AREA
    img[my: my + side, mx: mx + side] = cv2.resize(cells, (side, side), interpolation=interp)
    if cell >= 12:
        for i in range(1, n):
            p = int(round(i * cell))
            cv2.line(img, (mx + p, my), (mx + p, my + side - 1), GRID, 1)
            cv2.line(img, (mx, my + p), (mx + side - 1, my + p), GRID, 1)
    cv2.rectangle(img, (mx - 1, my - 1), (mx + side, my + side), AXIS, 1)

    # ---- counts in the cells while they fit
    if n <= 30:
        texts = [[_number(v) for v in row] for row in counts]
        widest = max(_size(t, 1.0)[0] for row in texts for t in row)
        scale = min(0.6, cell / 70, (cell - 6) / max(widest, 1))
        if scale >= 0.3:
            for r in range(n):
                for c in range(n):
                    dark = shares[r, c] > 0.55
                    color = WHITE if dark else (TEXT if counts[r, c] else (170, 170, 170))
                    _put(img, texts[r][c], mx + (c + 0.5) * cell, my + (r + 0.5) * cell, scale, color,
                         align="center", valign="center")

    # ---- class names (or indices) on both axes
    if show_names:
        for i, text in enumerate(row_texts):
            centre = (i + 0.5) * cell
            _put(img, text, mx - 8, my + centre, label_scale, align="right", valign="center")
            _put_vertical(img, text, mx + centre, my + side + 8, label_scale, anchor="top")
    else:
        for i in index_ticks:
            centre = (i + 0.5) * cell
            cv2.line(img, (mx - 4, int(my + centre)), (mx - 1, int(my + centre)), AXIS, 1)
            cv2.line(img, (int(mx + centre), my + side), (int(mx + centre), my + side + 3), AXIS, 1)
            _put(img, str(i), mx - 7, my + centre, tick_scale, align="right", valign="center")
            _put(img, str(i), mx + centre, my + side + 6, tick_scale, align="center", valign="top")
    _put(img, "predicted", mx + side / 2, H - 14, axis_scale, BLACK, align="center")
    _put_vertical(img, "true", 14 + axis_h / 2, my + side / 2, axis_scale, BLACK)

    # ---- colour bar
    bar_h = min(side, 400) if side >= 120 else side
    ramp = _colormap(np.linspace(1, 0, bar_h)[:, None])
    img[my: my + bar_h, bar_x: bar_x + bar_w] = np.repeat(ramp, bar_w, axis=1)
    cv2.rectangle(img, (bar_x - 1, my - 1), (bar_x + bar_w, my + bar_h), AXIS, 1)
    for frac, text in zip((0.0, 0.5, 1.0), bar_labels):
        yy = my + (1 - frac) * (bar_h - 1)
        _put(img, text, bar_x + bar_w + 5, yy, tick_scale, valign="center")
    return img


def confusion_matrix_image(
    path: str | os.PathLike,
    matrix,
    labels: Sequence[str],
    *,
    title: str = "confusion matrix",
    normalize: bool = True,
) -> Path:
    """Draw ``matrix`` (rows = true class, columns = predicted class, counts) as a heatmap PNG at
    ``path``. With ``normalize`` the colour is each cell's share of its row (a class never seen
    stays white); without it, the count relative to the largest cell. Returns the path."""
    return write_png(path, render_confusion_matrix(matrix, labels, title=title, normalize=normalize))
