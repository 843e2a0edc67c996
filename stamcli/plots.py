"""PNG charts drawn with matplotlib on its Agg backend, imported only when a chart is drawn.

* :func:`line_chart` - training curves: one line with markers per series, legend above the plot,
  title and axis labels, one or more panels side by side (:class:`Panel`). Gaps (``None``/NaN/inf),
  a single point and constant series are drawn without special-casing by the caller.
* :func:`confusion_matrix_image` - a heatmap of a confusion matrix (rows = true class, columns =
  predicted class) with a colour bar, counts in the cells while they fit, and class names (or
  class indices, for hundreds of classes) on both axes. The image never exceeds
  :data:`MAX_SIDE` pixels a side.

Each has a ``*_figure`` twin that returns the matplotlib :class:`~matplotlib.figure.Figure`
without saving it. Figures are made with :class:`~matplotlib.figure.Figure` and an Agg canvas
directly (never ``pyplot``), so drawing changes no global matplotlib state. PNGs are written
atomically (:func:`stamcli.fileutils.write_atomic`): missing parent folders are created and a
file that cannot be written is a one-line :class:`~stamcli.errors.StamError`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

from .errors import StamError
from .fileutils import write_atomic

if TYPE_CHECKING:  # matplotlib is imported by the functions that draw, never by ``import stamcli``
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PALETTE", "MARKERS", "MAX_SIDE", "Panel", "line_chart", "line_chart_figure", "confusion_matrix_image",
           "confusion_matrix_figure", "save_figure", "figure_pixels"]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]  #: matplotlib's "tab10"
MARKERS = ["o", "s", "^", "D"]  #: the next shape each time the palette starts over
DPI = 100  # sizes are given in pixels: inches = pixels / DPI
MAX_SIDE = 4000  #: no chart is larger than this, whatever the number of classes
MAX_MATRIX_SIDE = 3200  #: the largest heatmap in pixels (the rest of MAX_SIDE is for labels)
GRID = "#e4e4e4"
TEXT = "#282828"
MUTED = "#5a5a5a"
MANY_POINTS = 60  #: longer series are drawn without markers (isolated points keep theirs)


def _new_figure(width_px: float, height_px: float) -> "Figure":
    """An empty figure of this size in pixels, on an Agg canvas, laid out by matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(figure)
    return figure


@contextlib.contextmanager
def _quiet_glyphs():
    """Silence matplotlib's notes about glyphs its font lacks (labels are user text in any script)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        yield


def save_figure(figure: "Figure", path: str | os.PathLike, what: str = "") -> Path:
    """Render ``figure`` as PNG at its own size and write it atomically to ``path``; returns the path."""
    buffer = io.BytesIO()
    with _quiet_glyphs():
        figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return write_atomic(path, buffer.getvalue(), what)


def figure_pixels(figure: "Figure") -> np.ndarray:
    """``figure`` rendered as an RGB uint8 array (height, width, 3), as :func:`save_figure` writes it."""
    with _quiet_glyphs():
        figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()


def _cut(text, max_chars: int) -> str:
    """``text`` on one line, cut with '...' to at most ``max_chars`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= max_chars else text[: max_chars - 3].rstrip() + "..."


# --------------------------------------------------------------------------- line charts


@dataclass
class Panel:
    """One chart of a :func:`line_chart_figure`: ``series`` maps a name to its y values."""

    series: dict[str, Sequence[Optional[float]]]
    title: str
    xlabel: str = "epoch"
    ylabel: str = ""


def _floats(values: Iterable) -> np.ndarray:
    """``values`` as float64; None, inf and anything unreadable become NaN (a gap)."""
    out = []
    for value in values:
        try:
            number = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            number = math.nan
        out.append(number if math.isfinite(number) else math.nan)
    return np.array(out, dtype=np.float64)


def _isolated(y: np.ndarray) -> np.ndarray:
    """Which finite values have no finite neighbour (a line cannot show them)."""
    finite = np.isfinite(y)
    before = np.concatenate([[False], finite[:-1]])
    after = np.concatenate([finite[1:], [False]])
    return finite & ~before & ~after


def _legend_columns(names: list[str], width_px: float) -> int:
    """Legend entries per row: as many as fit the panel's width."""
    widest = max(len(name) for name in names)
    entry_px = 48 + 7 * widest  # line sample, gap and text at the legend's font size
    return max(1, min(len(names), int(width_px // entry_px)))


def _draw_panel(ax: "Axes", panel: Panel, xs: Optional[np.ndarray], width_px: float, height_px: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    names = [str(name) for name in panel.series]
    ys = [_floats(values) for values in panel.series.values()]
    longest = max((len(y) for y in ys), default=0)
    x = xs if xs is not None else np.arange(1, longest + 1, dtype=np.float64)
    ys = [y[: len(x)] for y in ys]
    many = max((len(y) for y in ys), default=0) > MANY_POINTS

    handles = []
    used_x = []
    for i, (name, y) in enumerate(zip(names, ys)):
        color, marker = PALETTE[i % len(PALETTE)], MARKERS[(i // len(PALETTE)) % len(MARKERS)]
        xi = x[: len(y)]
        y = np.where(np.isfinite(xi), y, np.nan)
        used_x.append(xi[np.isfinite(y)])
        ax.plot(xi, y, color=color, linewidth=2, marker=None if many else marker, markersize=6)
        lonely = _isolated(y)
        if many and lonely.any():  # a point between gaps still shows
            ax.plot(xi[lonely], y[lonely], linestyle="none", color=color, marker=marker, markersize=6)
        handles.append(Line2D([], [], color=color, linewidth=2, marker=marker, markersize=6,
                              label=_cut(name, 48)))

    finite_x = np.concatenate(used_x) if used_x else np.zeros(0)
    if finite_x.size and np.all(finite_x == np.round(finite_x)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # never half an epoch
    if not finite_x.size:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.grid(True, color=GRID, linewidth=1)
    ax.set_axisbelow(True)
    for spine in ax.spines.values():
        spine.set_color(MUTED)
    ax.tick_params(colors=TEXT, labelsize=9)
    if panel.xlabel:
        ax.set_xlabel(_cut(panel.xlabel, 80), color=TEXT)
    if panel.ylabel:
        ax.set_ylabel(_cut(panel.ylabel, 80), color=TEXT)

    pad = 6.0 + (_legend_above(ax, handles, width_px, height_px) if handles else 0.0)
    ax.set_title(_cut(panel.title, 120), fontsize=13, fontweight="bold", color="black", pad=pad)


def _legend_above(ax: "Axes", handles: list, width_px: float, height_px: float) -> float:
    """The legend, centred above the plot in as many rows as it needs (at most a fifth of the
    panel's height: the rest is summed up as "(+N more)"); returns its height in points."""
    from matplotlib.lines import Line2D

    columns = _legend_columns([h.get_label() for h in handles], width_px)
    max_rows = max(1, int(height_px // 5 // 22))
    if len(handles) > columns * max_rows:
        shown = columns * max_rows - 1
        hidden = len(handles) - shown
        handles = handles[:shown] + [Line2D([], [], linestyle="none", label=f"(+{hidden} more)")]
    legend = ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=columns,
                       frameon=False, fontsize=9, borderaxespad=0.3, handlelength=2.2, columnspacing=1.2)
    return legend.get_window_extent(ax.figure.canvas.get_renderer()).height * 72 / DPI


def line_chart_figure(
    panels: Sequence[Panel],
    *,
    x: Optional[Sequence[float]] = None,
    size: tuple[int, int] = (800, 500),
) -> "Figure":
    """``panels`` side by side, each ``size`` (width, height) pixels, as a matplotlib Figure.

    Every panel's series are drawn over ``x`` (default 1, 2, ...); ``None``/NaN/inf values leave
    gaps and a series longer than ``x`` is cut to it. Series are coloured with :data:`PALETTE`,
    and their marker shape changes each time the palette starts over."""
    width, height = max(240, int(size[0])), max(180, int(size[1]))
    panels = list(panels) or [Panel({}, "")]
    figure = _new_figure(width * len(panels), height)
    xs = _floats(x) if x is not None else None
    for ax, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        _draw_panel(ax, panel, xs, width, height)
    return figure


def line_chart(
    path: str | os.PathLike,
    series: dict[str, Sequence[Optional[float]]] | Sequence[Panel],
    *,
    title: str = "",
    xlabel: str = "epoch",
    ylabel: str = "",
    x: Optional[Sequence[float]] = None,
    size: tuple[int, int] = (800, 500),
) -> Path:
    """Draw ``series`` (name -> y values) as lines over ``x`` into the PNG ``path``; ``size`` is
    (width, height) in pixels. ``series`` may instead be a list of :class:`Panel`, drawn side by
    side, each ``size``. Returns the path."""
    panels = [Panel(dict(series), title, xlabel, ylabel)] if isinstance(series, dict) else list(series)
    return save_figure(line_chart_figure(panels, x=x, size=size), path)


# --------------------------------------------------------------------------- confusion matrix


def _check_matrix(matrix, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.size == 0:
        counts = counts.reshape(0, 0)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise StamError(f"a confusion matrix must be square, not of shape {tuple(counts.shape)}")
    labels = [str(label) for label in labels]
    if len(labels) != counts.shape[0]:
        raise StamError(f"the confusion matrix has {counts.shape[0]} classes but {len(labels)} labels were given")
    return np.nan_to_num(counts, nan=0.0), labels


def _cell_pixels(n: int) -> float:
    """Side of one cell: big for a few classes, at least 16 px while the matrix fits in
    :data:`MAX_MATRIX_SIDE`, smaller beyond that."""
    if n <= MAX_MATRIX_SIDE:
        return float(max(min(80, 900 // n), min(16, MAX_MATRIX_SIDE // n)))
    return MAX_MATRIX_SIDE / n


def _index_step(n: int, cell: float, min_gap: int = 34) -> int:
    """How many classes apart the index labels are when names do not fit."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000):
        if step * cell >= min_gap:
            return step
    return max(1, n)


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def _colour_values(counts: np.ndarray, normalize: bool) -> np.ndarray:
    """Each cell's share of its row (a row without videos stays 0), or its count over the largest."""
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    peak = counts.max() if counts.size else 0.0
    return counts / peak if peak > 0 else np.zeros_like(counts)


def _write_counts(ax: "Axes", counts: np.ndarray, shares: np.ndarray, cell: float) -> None:
    """The count in each cell, up to 30 classes and while the text fits the cell."""
    n = counts.shape[0]
    if n > 30:
        return
    texts = [[_number(v) for v in row] for row in counts]
    widest = max(len(t) for row in texts for t in row)
    font_px = min(14.0, cell * 0.3, (cell - 6) / (0.62 * widest))
    if font_px < 7:
        return
    for r in range(n):
        for c in range(n):
            color = "white" if shares[r, c] > 0.55 else (TEXT if counts[r, c] else "#aaaaaa")
            ax.text(c, r, texts[r][c], ha="center", va="center", color=color, fontsize=font_px * 72 / DPI)


def _label_classes(ax: "Axes", names: list[str], cell: float, name_pt: float, tick_pt: float) -> None:
    """Class names on both axes when the cells are tall enough, else class indices at round steps."""
    n = len(names)
    if cell >= 14:
        ax.set_xticks(range(n), names, rotation=90, fontsize=name_pt)
        ax.set_yticks(range(n), names, fontsize=name_pt)
    else:
        ticks = list(range(0, n, _index_step(n, cell)))
        ax.set_xticks(ticks, [str(i) for i in ticks], fontsize=tick_pt)
        ax.set_yticks(ticks, [str(i) for i in ticks], fontsize=tick_pt)
    if cell >= 12:  # lines between the cells
        ax.set_xticks(np.arange(-0.5, n, 1.0), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1.0), minor=True)
        ax.grid(which="minor", color=GRID, linewidth=1)
        ax.tick_params(which="minor", length=0)
    ax.tick_params(colors=TEXT)


def confusion_matrix_figure(
    matrix,
    labels: Sequence[str],
    *,
    title: str = "confusion matrix",
    normalize: bool = True,
) -> "Figure":
    """The heatmap of :func:`confusion_matrix_image` as a matplotlib Figure. The image (the
    axes' only :class:`~matplotlib.image.AxesImage`) holds the colour values: each cell's share of
    its row with ``normalize``, else its count over the largest count."""
    counts, labels = _check_matrix(matrix, labels)
    n = counts.shape[0]
    shares = _colour_values(counts, normalize)
    cell = _cell_pixels(n) if n else 0.0
    side = cell * n if n else 200.0
    names = [_cut(label, 32) for label in labels]
    name_pt, tick_pt = min(9.0, max(5.0, cell * 0.5 * 72 / DPI)), 8.0
    # room for the labels, estimated from the text; the layout engine places everything exactly
    label_px = (max((len(name) for name in names), default=1) * 0.62 * name_pt * DPI / 72 if cell >= 14
                else len(str(max(n - 1, 0))) * 0.62 * tick_pt * DPI / 72)
    width = min(MAX_SIDE, side + label_px + 40 + 100)  # + axis label, colour bar and its ticks
    height = min(MAX_SIDE, side + label_px + 40 + 80)  # + axis label, title and subtitle
    figure = _new_figure(max(width, 360), max(height, 240))
    ax = figure.subplots()

    subtitle = ("colour: share of each true class (row)" if normalize else "colour: count") + \
        ("" if cell >= 14 or n == 0 else "; axes: class index")
    figure.suptitle(_cut(title, 400), fontsize=13, fontweight="bold", color="black")
    ax.set_title(subtitle, fontsize=tick_pt, color=MUTED)
    ax.set_xlabel("predicted", color="black")
    ax.set_ylabel("true", color="black")
    for spine in ax.spines.values():
        spine.set_color(MUTED)
    if n == 0:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        ax.text(0.5, 0.5, "no classes", transform=ax.transAxes, ha="center", va="center", color=MUTED)
        return figure

    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest" if side >= n else "antialiased")
    bar_px = min(side, 400.0) if side >= 120 else side  # the colour bar: 16 px wide, at most 400 px tall
    bar = figure.colorbar(image, ax=ax, shrink=bar_px / side, aspect=bar_px / 16, anchor=(0.0, 1.0))
    bar.set_ticks([0.0, 0.5, 1.0])
    bar.set_ticklabels(["0%", "50%", "100%"] if normalize else ["0", _number(counts.max() / 2), _number(counts.max())])
    bar.ax.tick_params(labelsize=tick_pt)
    bar.outline.set_edgecolor(MUTED)
    _write_counts(ax, counts, shares, cell)
    _label_classes(ax, names, cell, name_pt, tick_pt)
    return figure


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
    return save_figure(confusion_matrix_figure(matrix, labels, title=title, normalize=normalize), path)
