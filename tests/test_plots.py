"""PNG charts drawn with matplotlib: read back and checked pixel by pixel, and through the Figure."""

from __future__ import annotations

import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import CHILD_ENV
from stamcli.errors import StamError
from stamcli.plots import (PALETTE, Panel, confusion_matrix_figure, confusion_matrix_image, figure_pixels, line_chart,
                           line_chart_figure)


def _bgr(hex_colour: str) -> tuple[int, int, int]:
    """A ``#rrggbb`` colour in OpenCV's (blue, green, red) order, as cv2.imread gives pixels."""
    red, green, blue = (int(hex_colour[i: i + 2], 16) for i in (1, 3, 5))
    return blue, green, red


BLUE, ORANGE = _bgr(PALETTE[0]), _bgr(PALETTE[1])
PLOT_TOP = 50  # below the title and a one-row legend (rows 23-47) of a chart


def _read(path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    return image


def _pixels(image: np.ndarray, color, top: int = PLOT_TOP) -> np.ndarray:
    """(row, column) of the pixels of exactly ``color`` below ``top``."""
    rows, cols = np.nonzero(np.all(image[top:] == np.array(color, np.uint8), axis=2))
    return np.stack([rows + top, cols], axis=1)


def test_line_chart_draws_each_series_in_its_colour_where_its_values_are(tmp_path):
    path = line_chart(tmp_path / "deep" / "er" / "curves.png",
                      {"rising": [0.0, 1.0, 2.0, 3.0], "falling": [3.0, 2.0, 1.0, 0.0]},
                      title="loss", ylabel="value")
    assert path == tmp_path / "deep" / "er" / "curves.png"
    image = _read(path)
    assert image.shape == (500, 800, 3)
    assert (image < 250).any(axis=2).mean() > 0.02, "the chart is (almost) blank"
    assert (image == 255).all(axis=2).mean() > 0.5, "the background is not white"
    rising, falling = _pixels(image, BLUE), _pixels(image, ORANGE)
    assert len(rising) > 100 and len(falling) > 100
    mid = 800 // 2
    # image rows grow downwards: the rising series is high (small row) on the right, low on the left
    assert rising[rising[:, 1] > mid + 150, 0].mean() < rising[rising[:, 1] < mid - 150, 0].mean() - 100
    assert falling[falling[:, 1] > mid + 150, 0].mean() > falling[falling[:, 1] < mid - 150, 0].mean() + 100
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"


def test_line_chart_leaves_gaps_for_none_and_nan(tmp_path):
    values = [1.0, 2.0, 3.0, None, float("nan"), None, 3.0, 2.0, 1.0]
    image = _read(line_chart(tmp_path / "gap.png", {"gappy": values}, title="gap"))
    blue = _pixels(image, BLUE)
    assert len(blue) > 50
    # x = 1..9: x = 4..6 lie around the middle of the plot, where nothing may be drawn
    assert not ((blue[:, 1] > 330) & (blue[:, 1] < 470)).any()
    assert (blue[:, 1] < 300).any() and (blue[:, 1] > 500).any()


def test_one_point_constant_empty_and_all_nan_series_do_not_crash(tmp_path):
    one = _read(line_chart(tmp_path / "one.png", {"one": [0.5]}, title="one point"))
    assert len(_pixels(one, BLUE)) >= 5, "the single point's marker is missing"
    flat = _read(line_chart(tmp_path / "flat.png", {"zero": [0, 0, 0], "three": [3, 3, 3]}, title="flat"))
    assert len(_pixels(flat, BLUE)) > 100 and len(_pixels(flat, ORANGE)) > 100
    # the two constant lines are drawn at different heights
    assert abs(_pixels(flat, BLUE)[:, 0].mean() - _pixels(flat, ORANGE)[:, 0].mean()) > 100
    for name, series in {"empty": {}, "nothing": {"a": []}, "nan": {"a": [math.nan, None]},
                         "inf": {"a": [math.inf, 1.0, 2.0]}}.items():
        image = _read(line_chart(tmp_path / f"{name}.png", series, title=name, xlabel="", ylabel=""))
        assert image.shape == (500, 800, 3)


def test_many_series_cycle_the_palette_and_x_values_are_used(tmp_path):
    series = {f"run {i}": [i, i + 1, i + 2] for i in range(25)}
    image = _read(line_chart(tmp_path / "many.png", series, title="cafés … and more", x=[10, 20, 30],
                             size=(640, 420)))
    assert image.shape == (420, 640, 3)
    for color in PALETTE:
        assert len(_pixels(image, _bgr(color), top=0)) > 20


def _visible_ticks(axis) -> list[float]:
    low, high = sorted(axis.get_view_interval())
    return [t for t in axis.get_ticklocs() if low - 1e-9 <= t <= high + 1e-9]


def test_the_figure_holds_the_data_gaps_and_labels():
    figure = line_chart_figure([Panel({"train loss": [1.0, None, 0.5, math.inf], "val loss": [2.0, 1.5]}, "loss",
                                      ylabel="cross-entropy"),
                                Panel({"val top-1": [50.0, 75.0, 80.0]}, "validation accuracy")],
                               x=[1, 2, 3, 4], size=(640, 440))
    assert figure_pixels(figure).shape == (440, 1280, 3)
    loss, accuracy = figure.axes
    assert loss.get_title() == "loss" and accuracy.get_title() == "validation accuracy"
    assert loss.get_xlabel() == "epoch" and loss.get_ylabel() == "cross-entropy"
    train, val = loss.lines
    assert list(train.get_xdata()) == [1, 2, 3, 4]
    assert np.array_equal(train.get_ydata(), [1.0, math.nan, 0.5, math.nan], equal_nan=True)  # None, inf: gaps
    assert list(val.get_ydata()) == [2.0, 1.5]
    assert (train.get_color(), val.get_color()) == (PALETTE[0], PALETTE[1])
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train loss", "val loss"]
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["val top-1"]
    assert list(accuracy.lines[0].get_ydata()) == [50.0, 75.0, 80.0]


def test_epoch_ticks_are_whole_numbers():
    for x in ([1, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]):
        axes = line_chart_figure([Panel({"a": [float(v) for v in x]}, "t")], x=x).axes[0]
        figure_pixels(axes.figure)  # ticks are chosen when the figure is drawn
        ticks = _visible_ticks(axes.xaxis)
        assert ticks and all(t == round(t) for t in ticks), ticks  # never half an epoch
    axes = line_chart_figure([Panel({"a": [1.0, 2.0]}, "t")], x=[0.25, 0.5]).axes[0]
    figure_pixels(axes.figure)
    assert any(t != round(t) for t in _visible_ticks(axes.xaxis))  # fractional x keeps fractional ticks


def _dark_cells(image: np.ndarray, min_area: int = 200) -> list[tuple[float, float]]:
    """Centroids (x, y) of the dark blue blobs of a heatmap (the colour bar is too thin to count)."""
    dark = (image[:, :, 2] < 60) & (image[:, :, 0] > 80)  # little red, much blue: the dark end of "Blues"
    count, _, stats, centroids = cv2.connectedComponentsWithStats(dark.astype(np.uint8), connectivity=4)
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area
            and stats[i, cv2.CC_STAT_WIDTH] > 20]
    return sorted((float(centroids[i][0]), float(centroids[i][1])) for i in keep)


def test_a_diagonal_matrix_is_dark_on_the_diagonal_only(tmp_path):
    labels = ["archery", "baking", "cycling", "diving"]
    path = confusion_matrix_image(tmp_path / "cm.png", np.diag([5, 3, 8, 1]), labels)
    image = _read(path)
    cells = _dark_cells(image)
    assert len(cells) == 4
    xs, ys = [c[0] for c in cells], [c[1] for c in cells]
    assert xs == sorted(xs) and ys == sorted(ys)  # top-left to bottom-right
    steps = np.diff(xs)
    assert np.allclose(steps, steps[0], atol=2) and np.allclose(np.diff(ys), steps, atol=2)
    # off-diagonal cells (between the dark ones) are near white, but for their grey "0"
    (x0, y0), (x1, y1) = cells[0], cells[1]
    half = int(steps[0] * 0.4)
    for x, y in ((x1, y0), (x0, y1)):
        cell = image[int(y) - half : int(y) + half, int(x) - half : int(x) + half].min(axis=2)
        assert np.median(cell) > 235 and (cell > 235).mean() > 0.9


def test_rows_are_true_classes_and_columns_predicted_ones(tmp_path):
    # every video is predicted as class 1: column 1 is dark in both rows, column 0 stays white
    image = _read(confusion_matrix_image(tmp_path / "cm.png", [[0, 3], [0, 7]], ["a", "b"]))
    cells = _dark_cells(image)
    assert len(cells) == 2
    assert abs(cells[0][0] - cells[1][0]) < 2 and abs(cells[0][1] - cells[1][1]) > 20


def test_normalised_colours_follow_row_shares_and_counts_do_without(tmp_path):
    matrix = [[90, 10], [1, 1]]  # cell (1, 1) is half of its row but 1/90 of the largest count

    def lower_right(image):  # the colour of cell (1, 1), away from its text, found from cell (0, 0)
        dark = ((image[:, :, 2] < 60) & (image[:, :, 0] > 80)).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=4)
        x, y, w, h, _ = max(stats[1:], key=lambda s: s[cv2.CC_STAT_AREA])
        return image[y + h + 4, x + w + 4].astype(int)

    def render(normalize):
        return figure_pixels(confusion_matrix_figure(matrix, ["a", "b"], normalize=normalize))[:, :, ::-1]  # BGR

    shares = lower_right(render(True))
    counts = lower_right(render(False))
    assert counts.min() > 235  # nearly white
    assert shares.sum() < counts.sum() - 150 and shares[0] > shares[2]  # a clear, bluish mid-tone


def test_the_confusion_figure_holds_shares_counts_and_names():
    labels = ["archery", "baking", "cycling"]
    matrix = [[6, 2, 0], [0, 0, 0], [1, 1, 2]]
    axes = confusion_matrix_figure(matrix, labels, title="cm - 12 videos").axes[0]
    image = axes.get_images()[0]
    expected = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]  # rows: true class; an empty row is white
    assert np.allclose(image.get_array(), expected) and image.get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in axes.get_xticklabels()] == labels
    assert [t.get_text() for t in axes.get_yticklabels()] == labels
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted", "true")
    assert axes.figure.get_suptitle() == "cm - 12 videos"
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axes.texts}
    assert cells == {(r, c): str(matrix[r][c]) for r in range(3) for c in range(3)}
    counted = confusion_matrix_figure(matrix, labels, normalize=False).axes[0].get_images()[0]
    assert np.allclose(counted.get_array(), np.array(matrix) / 6)
    many = confusion_matrix_figure(np.eye(400, dtype=int), [f"c{i}" for i in range(400)]).axes[0]
    assert [t.get_text() for t in many.get_xticklabels()][:3] == ["0", "5", "10"]  # indices, not names
    assert not many.texts  # no counts in cells of 8 pixels


def test_charts_import_matplotlib_only_when_drawing():
    code = ("import sys, stamcli, stamcli.cli, stamcli.plots, stamcli.train.metrics\n"
            "sys.argv = ['stam', '--help']\n"
            "try:\n    stamcli.cli.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CHILD_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _cell_colours(figure, image: np.ndarray, cells, at=(0.5, 0.5)) -> np.ndarray:
    """The RGB colour of each (row, column) cell of the figure's heatmap in ``image`` (BGR, as read
    back), ``at`` (x, y) of the way into the cell from its top-left corner."""
    heatmap = figure.axes[0].get_images()[0]
    box, n, height = heatmap.get_window_extent(), heatmap.get_array().shape[0], image.shape[0]
    picked = [image[int(height - (box.y1 - (r + at[1]) * box.height / n)), int(box.x0 + (c + at[0]) * box.width / n)]
              for r, c in cells]
    return np.array(picked, dtype=int)[:, ::-1]


@pytest.mark.parametrize("n", [1, 2, 31, 400])
def test_any_number_of_classes_fits_in_a_capped_image(tmp_path, n):
    from matplotlib import colormaps

    rng = np.random.default_rng(n)
    matrix = np.diag(rng.integers(5, 50, n)) + rng.integers(0, 2, (n, n))
    matrix[n // 2] = 0  # a class without videos
    labels = [f"class {i} with a rather long name, é" for i in range(n)]
    image = _read(confusion_matrix_image(tmp_path / f"cm{n}.png", matrix, labels))
    height, width = image.shape[:2]
    assert 150 <= height <= 4000 and 150 <= width <= 4000
    figure = confusion_matrix_figure(matrix, labels)
    assert np.array_equal(image, figure_pixels(figure)[:, :, ::-1])  # the file is this figure
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)  # the empty row stays white
    assert np.allclose(figure.axes[0].get_images()[0].get_array(), shares)
    # every cell (a sample of 400 x 400) shows its share in the colour map, away from its count's text
    if n <= 31:
        cells = [(r, c) for r in range(n) for c in range(n)]
    else:
        cells = [(i, i) for i in range(0, n, 7)] + [(n // 2, c) for c in range(0, n, 9)] + [
            (int(r), int(c)) for r, c in rng.integers(0, n, (60, 2))]
    expected = np.array([colormaps["Blues"](shares[r, c])[:3] for r, c in cells]) * 255
    drawn = _cell_colours(figure, image, cells, at=(0.5, 0.5) if n > 30 else (0.2, 0.2))
    assert np.abs(drawn - expected).max() <= 2
    names = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    if n <= 31:  # cells tall enough for names, cut to 32 characters
        assert names == [f"class {i} with a rather long name, é"[:29].rstrip() + "..." for i in range(n)]
    else:
        assert names == [str(i) for i in range(0, n, 5)]  # class indices, 5 apart (cells of 8 px)


def test_no_classes_and_mismatched_labels(tmp_path):
    image = _read(confusion_matrix_image(tmp_path / "empty.png", np.zeros((0, 0), int), []))
    assert image.shape[0] > 100
    with pytest.raises(StamError, match="3 classes but 2 labels"):
        confusion_matrix_image(tmp_path / "bad.png", np.eye(3, dtype=int), ["a", "b"])
    with pytest.raises(StamError, match="square"):
        confusion_matrix_image(tmp_path / "bad.png", np.ones((2, 3), int), ["a", "b"])


def test_unwritable_paths_raise_stam_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(StamError, match="cannot write") as err:
        line_chart(blocker / "chart.png", {"a": [1, 2]}, title="t")
    assert "\n" not in str(err.value)
    with pytest.raises(StamError, match="cannot write"):
        confusion_matrix_image(blocker / "cm.png", [[1]], ["a"])
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(StamError, match="cannot write"):
        line_chart(tmp_path / "folder.png", {"a": [1, 2]}, title="t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.png"]


def test_an_existing_chart_is_replaced(tmp_path):
    path = tmp_path / "chart.png"
    path.write_bytes(b"old")
    line_chart(path, {"a": [1, 2, 3]}, title="t", size=(400, 300))
    assert _read(path).shape == (300, 400, 3)
