"""Evaluation metrics, the report files that explain them, and the per-epoch training log.

* :func:`evaluate_predictions` - top-1/top-k accuracy, cross-entropy, per-class accuracy, the
  confusion matrix and the misclassified videos of a set of predicted probabilities, as a
  JSON-serialisable dict.
* :func:`write_report` - that dict as JSON, plus ``<stem>_confusion.csv``,
  ``<stem>_confusion.png`` and ``<stem>_misclassified.csv`` beside it.
* :class:`MetricsLog` - ``metrics.csv`` of a training run, one row per epoch, read back when a
  run is resumed, and drawn as ``training_curves.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..errors import StamError
from ..fileutils import write_atomic
from ..plots import Panel, confusion_matrix_image, line_chart_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

__all__ = ["evaluate_predictions", "write_report", "report_paths", "MetricsLog"]

CONFUSION_CORNER = "true \\ predicted"
MISCLASSIFIED_FIELDS = ["path", "label", "predicted", "score", "true_score"]


# --------------------------------------------------------------------------- evaluation


def _as_array(values, dtype) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device and of any dtype
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def evaluate_predictions(
    probs,
    targets,
    labels: Sequence[str],
    paths: Optional[Sequence[str]] = None,
    k: int = 5,
) -> dict:
    """Measure predicted class probabilities ``probs`` (N, C) against true class indices ``targets`` (N,).

    Returns ``{"videos", "top1", "top5", "loss", "per_class", "mean_class_accuracy", "confusion",
    "misclassified"}``: accuracies in [0, 1]; ``top5`` is top-min(k, C); ``loss`` the mean
    cross-entropy of the probabilities (clamped at 1e-12); ``per_class`` one entry per label
    (``accuracy`` None for a class with no video); ``mean_class_accuracy`` the mean over classes
    with videos; ``confusion`` C x C counts (rows true, columns predicted); ``misclassified`` the
    wrongly predicted videos, most confident first. Ties between classes go to the lower index.
    With no video at all the accuracies and the loss are None.
    """
    labels = [str(label) for label in labels]
    C = len(labels)
    p = _as_array(probs, np.float64)
    if p.ndim == 1 and p.size == 0:
        p = p.reshape(0, C)
    if p.ndim != 2 or p.shape[1] != C:
        raise StamError(f"predictions of shape {tuple(p.shape)} do not match {C} labels (expected N x {C})")
    N = p.shape[0]
    t = _as_array(targets, np.float64).reshape(-1)
    if t.shape[0] != N:
        raise StamError(f"{t.shape[0]} targets for {N} predictions")
    if N and (not np.all(np.isfinite(t)) or np.any(t != np.round(t)) or t.min() < 0 or t.max() >= C):
        bad = next(v for v in t if not (math.isfinite(v) and v == round(v) and 0 <= v < C))
        raise StamError(f"target {bad:g} is not a class index in 0..{C - 1}")
    t = t.astype(np.int64)
    if paths is not None and len(paths) != N:
        raise StamError(f"{len(paths)} paths for {N} predictions")
    k = max(1, min(int(k), C)) if C else 1

    order = np.argsort(-p, axis=1, kind="stable") if C else np.zeros((N, 0), np.int64)
    predicted = order[:, 0] if C else np.zeros(N, np.int64)
    hit1 = predicted == t
    hitk = (order[:, :k] == t[:, None]).any(axis=1) if C else np.zeros(N, bool)
    rows = np.arange(N)
    true_p = p[rows, t] if N else np.zeros(0)
    loss = float(np.mean(-np.log(np.clip(true_p, 1e-12, None)))) if N else None

    confusion = np.zeros((C, C), np.int64)
    np.add.at(confusion, (t, predicted), 1)
    per_class = []
    for c, label in enumerate(labels):
        support = int(confusion[c].sum())
        correct = int(confusion[c, c])
        per_class.append({"label": label, "index": c, "support": support, "correct": correct,
                          "accuracy": correct / support if support else None})
    seen = [entry["accuracy"] for entry in per_class if entry["support"]]

    wrong = [int(i) for i in np.flatnonzero(~hit1)]
    misclassified = [{
        "path": str(paths[i]) if paths is not None else None,
        "label": labels[t[i]],
        "predicted": labels[predicted[i]],
        "score": float(p[i, predicted[i]]),
        "true_score": float(true_p[i]),
    } for i in wrong]
    misclassified.sort(key=lambda entry: -entry["score"])  # stable: ties keep the input order

    return {
        "videos": int(N),
        "top1": float(hit1.mean()) if N else None,
        "top5": float(hitk.mean()) if N else None,
        "loss": loss,
        "per_class": per_class,
        "mean_class_accuracy": float(sum(seen) / len(seen)) if seen else None,
        "confusion": confusion.tolist(),
        "misclassified": misclassified,
    }


# --------------------------------------------------------------------------- report files


def report_paths(output: str | os.PathLike) -> dict[str, Path]:
    """The files :func:`write_report` writes for ``output``, by kind."""
    output = Path(output)
    return {
        "report": output,
        "confusion_csv": output.with_name(f"{output.stem}_confusion.csv"),
        "confusion_png": output.with_name(f"{output.stem}_confusion.png"),
        "misclassified_csv": output.with_name(f"{output.stem}_misclassified.csv"),
    }


def _jsonable(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # a torch tensor
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _csv_text(rows: list[list]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)  # RFC 4180: quoted where needed, CRLF line ends
    writer.writerows(rows)
    return buffer.getvalue()


def _report_labels(report: dict) -> list[str]:
    per_class = report.get("per_class")
    if per_class:
        return [entry["label"] for entry in sorted(per_class, key=lambda entry: entry["index"])]
    return [str(label) for label in report.get("labels", [])]


def write_report(report: dict, output: str | os.PathLike) -> list[Path]:
    """Write ``report`` (from :func:`evaluate_predictions`) to ``output`` as pretty UTF-8 JSON, and
    beside it ``<stem>_confusion.csv``, ``<stem>_confusion.png`` and ``<stem>_misclassified.csv``.
    Each file is written atomically; :class:`StamError` when one cannot be. Returns the paths."""
    files = report_paths(output)
    labels = _report_labels(report)
    confusion = [[int(v) for v in row] for row in report.get("confusion", [])]
    if len(confusion) != len(labels):
        raise StamError(f"the report's confusion matrix has {len(confusion)} rows for {len(labels)} labels")

    text = json.dumps(report, indent=2, ensure_ascii=False, default=_jsonable) + "\n"
    written = [write_atomic(files["report"], text.encode("utf-8"))]

    table = [[CONFUSION_CORNER, *labels]] + [[label, *row] for label, row in zip(labels, confusion)]
    written.append(write_atomic(files["confusion_csv"], _csv_text(table).encode("utf-8")))

    title = "confusion matrix"
    if report.get("videos") and report.get("top1") is not None:
        title += f" - {report['videos']} videos, top-1 {100 * report['top1']:.1f}%"
    written.append(confusion_matrix_image(files["confusion_png"], confusion, labels, title=title))

    rows = [MISCLASSIFIED_FIELDS] + [
        ["" if entry.get(field) is None else entry.get(field) for field in MISCLASSIFIED_FIELDS]
        for entry in report.get("misclassified", [])
    ]
    written.append(write_atomic(files["misclassified_csv"], _csv_text(rows).encode("utf-8")))
    return written


# --------------------------------------------------------------------------- training log


def _cell(value) -> str:
    """How a metric value is written to metrics.csv (floats exactly, by ``repr``)."""
    if value is None:
        return ""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy or torch scalar
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse(text: str):
    """A metrics.csv cell read back: int for whole numbers written as such, float for other
    numbers (nan included), None for an empty cell, the text otherwise."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class MetricsLog:
    """``metrics.csv`` of a training run: one row per epoch.

    The header comes from the first appended row's keys (``epoch, train_loss, val_loss,
    val_top1, val_top5, lr, seconds`` in fine-tuning). An existing file is read back on
    construction (``rows``: numbers parsed, as when a run is resumed) and later rows are appended
    to it; each row is flushed to disk as it is appended.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_dir():
            path = path / "metrics.csv"
        self.path = path
        self.fields: list[str] = []
        self._raw: list[list[str]] = []  # cells as written, so that rewriting never changes them
        self.rows: list[dict] = []
        self._warned: set[str] = set()
        self._last_plot: Optional[tuple[float, float]] = None  # (when, seconds it took)
        if path.exists():
            self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise StamError(f"cannot read {self.path}: {getattr(err, 'strerror', None) or err}") from None
        complete = text.endswith("\n")
        records = list(csv.reader(io.StringIO(text, newline="")))
        records = [r for r in records if r]
        if records and not complete:  # the last row was cut short (the run was killed mid-write)
            records.pop()
        if not records:
            if text:
                self._rewrite()
            return
        self.fields = records[0]
        self._raw = [r + [""] * (len(self.fields) - len(r)) for r in records[1:]]
        self._raw = [r[: len(self.fields)] for r in self._raw]
        self.rows = [self._row(r) for r in self._raw]
        if not complete:
            self._rewrite()

    def _row(self, cells: list[str]) -> dict:
        return {field: _parse(cell) for field, cell in zip(self.fields, cells)}

    def _rewrite(self) -> None:
        rows = ([self.fields] if self.fields else []) + self._raw
        write_atomic(self.path, _csv_text(rows).encode("utf-8"))

    def append(self, row: dict) -> None:
        """Add ``row`` (field -> value) at the end of the file; keys not in the header are dropped
        with a warning, missing ones left empty."""
        new_file = not self.fields
        if new_file:
            self.fields = [str(key) for key in row]
        extra = [str(key) for key in row if str(key) not in self.fields and str(key) not in self._warned]
        if extra:
            self._warned.update(extra)
            log.warning("%s has no column for %s; the value is not logged", self.path, ", ".join(extra))
        values = {str(key): value for key, value in row.items()}
        cells = [_cell(values.get(field)) for field in self.fields]
        text = _csv_text(([self.fields] if new_file else []) + [cells])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w" if new_file else "a", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise StamError(f"cannot write {self.path}: {err.strerror or err}") from None
        self._raw.append(cells)
        self.rows.append(self._row(cells))

    def truncate_after(self, epoch: int) -> None:
        """Drop the rows of epochs after ``epoch`` (a run resumed from an earlier point), in
        memory and in the file."""
        keep = [i for i, row in enumerate(self.rows)
                if not isinstance(row.get("epoch"), (int, float)) or not row["epoch"] > epoch]
        if len(keep) == len(self.rows):
            return
        self._raw = [self._raw[i] for i in keep]
        self.rows = [self.rows[i] for i in keep]
        self._rewrite()

    def column(self, field: str) -> list[Optional[float]]:
        """The values of ``field`` in every row (None where missing or not a number)."""
        out = []
        for row in self.rows:
            value = row.get(field)
            out.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None)
        return out

    def figure(self) -> "Figure":
        """The losses (``train_loss``, ``val_loss``) and the validation accuracy (``val_top1``,
        ``val_top5``, in %) over the epochs, side by side, as a matplotlib Figure. A panel with
        nothing to show (no validation set) is left out."""
        x = self.column("epoch") if "epoch" in self.fields else None
        if x is not None and all(v is None for v in x):
            x = None

        def present(names: dict[str, str], scale: float = 1.0) -> dict[str, list]:
            out = {}
            for field, name in names.items():
                if field in self.fields:
                    values = [None if v is None else v * scale for v in self.column(field)]
                    if any(v is not None and math.isfinite(v) for v in values):
                        out[name] = values
            return out

        losses = present({"train_loss": "train loss", "val_loss": "val loss"})
        accuracy = present({"val_top1": "val top-1", "val_top5": "val top-5"}, 100.0)
        panels = []
        if losses or not accuracy:
            panels.append(Panel(losses, title="loss", ylabel="cross-entropy"))
        if accuracy:
            panels.append(Panel(accuracy, title="validation accuracy", ylabel="accuracy (%)"))
        return line_chart_figure(panels, x=x, size=(640, 440))

    def plot(self, png_path: str | os.PathLike) -> Path:
        """Draw :meth:`figure` into the PNG ``png_path``; returns the path."""
        return save_figure(self.figure(), png_path)

    def plot_if_due(self, png_path: str | os.PathLike, *, final: bool = False, budget: float = 0.1) -> Optional[Path]:
        """:meth:`plot`, unless the last chart was drawn so recently that drawing again would take
        more than ``budget`` of the time since (a chart costs a fraction of a CPU-second, and an
        epoch with a frozen backbone can be shorter than that). ``final`` always draws. Returns the
        path when the chart was drawn, else None."""
        started = time.monotonic()
        if not final and self._last_plot is not None:
            when, cost = self._last_plot
            if started - when < cost / budget:
                return None
        path = self.plot(png_path)
        self._last_plot = (started, time.monotonic() - started)
        return path
