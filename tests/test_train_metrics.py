"""Evaluation metrics on hand-computed examples, the report files, and the training log."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch

from stamcli.errors import StamError
from stamcli.plots import confusion_matrix_figure, figure_pixels
from stamcli.train.metrics import MetricsLog, evaluate_predictions, report_paths, write_report

LABELS = ["archery", "eating, with a fork", 'say "cheese"']
# sample: true class -> predicted (top-1)
PROBS = [
    [0.70, 0.20, 0.10],  # 0 -> 0 right
    [0.10, 0.60, 0.30],  # 1 -> 1 right
    [0.50, 0.40, 0.10],  # 1 -> 0 wrong, score 0.5, true 0.4
    [0.20, 0.20, 0.60],  # 2 -> 2 right
    [0.30, 0.30, 0.40],  # 0 -> 2 wrong, score 0.4, true 0.3
    [0.05, 0.80, 0.15],  # 0 -> 1 wrong, score 0.8, true 0.05 (not even in the top 2)
]
TARGETS = [0, 1, 1, 2, 0, 0]
PATHS = [f"clips/v{i}.mp4" for i in range(5)] + ["clips/a, b.mp4"]


def _report(**kwargs):
    return evaluate_predictions(np.array(PROBS), TARGETS, LABELS, PATHS, **kwargs)


def test_hand_computed_metrics():
    report = _report()
    assert report["videos"] == 6
    assert report["top1"] == pytest.approx(3 / 6)
    assert report["top5"] == pytest.approx(1.0)  # top-3: with 3 classes every video is a hit
    expected_loss = -np.mean(np.log([0.7, 0.6, 0.4, 0.6, 0.3, 0.05]))
    assert report["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert report["per_class"] == [
        {"label": "archery", "index": 0, "support": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)},
        {"label": "eating, with a fork", "index": 1, "support": 2, "correct": 1, "accuracy": 0.5},
        {"label": 'say "cheese"', "index": 2, "support": 1, "correct": 1, "accuracy": 1.0},
    ]
    assert report["mean_class_accuracy"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert report["confusion"] == [[1, 1, 1], [1, 1, 0], [0, 0, 1]]
    assert report["misclassified"] == [
        {"path": "clips/a, b.mp4", "label": "archery", "predicted": "eating, with a fork", "score": 0.8,
         "true_score": 0.05},
        {"path": "clips/v2.mp4", "label": "eating, with a fork", "predicted": "archery", "score": 0.5,
         "true_score": 0.4},
        {"path": "clips/v4.mp4", "label": "archery", "predicted": 'say "cheese"', "score": 0.4,
         "true_score": 0.3},
    ]
    json.dumps(report)  # plain Python types only


def test_top_k_with_k_below_the_number_of_classes():
    assert _report(k=2)["top5"] == pytest.approx(5 / 6)  # only the last video misses its top 2
    assert _report(k=1)["top5"] == pytest.approx(3 / 6)


def test_a_class_without_videos_is_left_out_of_the_mean_class_accuracy():
    probs = [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]
    report = evaluate_predictions(np.array(probs), [0, 1, 1], ["a", "b", "c"])
    assert report["per_class"][2] == {"label": "c", "index": 2, "support": 0, "correct": 0, "accuracy": None}
    assert report["mean_class_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert report["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert [m["path"] for m in report["misclassified"]] == [None]


def test_tensors_ties_and_zero_probabilities():
    probs = torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=torch.float32)
    report = evaluate_predictions(probs, torch.tensor([1, 0]), ["a", "b"], ["x", "y"])
    assert report["confusion"] == [[0, 1], [1, 0]]  # a tie goes to the lower index
    assert report["top1"] == 0.0 and report["top5"] == 1.0
    assert report["loss"] == pytest.approx((-math.log(0.5) - math.log(1e-12)) / 2)  # clamped, finite
    assert [m["path"] for m in report["misclassified"]] == ["y", "x"]


def test_mismatched_inputs_raise_stam_error():
    with pytest.raises(StamError, match="do not match 2 labels"):
        evaluate_predictions(np.array(PROBS), TARGETS, ["a", "b"])
    with pytest.raises(StamError, match="5 targets for 6"):
        evaluate_predictions(np.array(PROBS), TARGETS[:5], LABELS)
    with pytest.raises(StamError, match="target 3 is not a class index"):
        evaluate_predictions(np.array(PROBS), [0, 1, 3, 2, 0, 0], LABELS)
    with pytest.raises(StamError, match="2 paths for 6"):
        evaluate_predictions(np.array(PROBS), TARGETS, LABELS, ["a", "b"])


def test_write_report_files(tmp_path):
    report = _report()
    report["model"] = "tiny"
    output = tmp_path / "out" / "val_report.json"
    written = write_report(report, output)
    names = ["val_report.json", "val_report_confusion.csv", "val_report_confusion.png",
             "val_report_misclassified.csv"]
    assert [p.name for p in written] == names
    assert sorted(p.name for p in output.parent.iterdir()) == sorted(names)
    assert list(report_paths(output).values()) == written
    assert json.loads(output.read_text(encoding="utf-8")) == report
    assert output.read_text(encoding="utf-8").startswith('{\n  "videos": 6,')
    with open(written[1], newline="", encoding="utf-8") as handle:
        assert handle.read() == (
            'true \\ predicted,archery,"eating, with a fork","say ""cheese"""\r\n'
            "archery,1,1,1\r\n"
            '"eating, with a fork",1,1,0\r\n'
            '"say ""cheese""",0,0,1\r\n'
        )
    with open(written[3], newline="", encoding="utf-8") as handle:
        assert handle.read() == (
            "path,label,predicted,score,true_score\r\n"
            '"clips/a, b.mp4",archery,"eating, with a fork",0.8,0.05\r\n'
            'clips/v2.mp4,"eating, with a fork",archery,0.5,0.4\r\n'
            'clips/v4.mp4,archery,"say ""cheese""",0.4,0.3\r\n'
        )
    with open(written[1], newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == LABELS and [r[0] for r in rows[1:]] == LABELS
    image = cv2.imread(str(written[2]))  # the matrix of the CSV above, titled with the videos and top-1
    expected = confusion_matrix_figure([[1, 1, 1], [1, 1, 0], [0, 0, 1]], LABELS,
                                       title="confusion matrix - 6 videos, top-1 50.0%")
    assert np.array_equal(image, figure_pixels(expected)[:, :, ::-1])


def test_write_report_to_an_unwritable_place_raises_stam_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StamError, match="cannot write"):
        write_report(_report(), blocker / "report.json")


def _row(epoch, val=True):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.5 / epoch if val else math.nan,
            "val_top1": 0.5 + epoch / 20 if val else math.nan, "val_top5": 1.0 if val else math.nan,
            "lr": 1e-3 * epoch, "seconds": 2.5}


def test_metrics_log_appends_reads_back_and_truncates(tmp_path):
    path = tmp_path / "run" / "metrics.csv"
    log = MetricsLog(path)
    assert log.rows == [] and not path.exists()
    for epoch in (1, 2, 3):
        log.append(_row(epoch))
        assert len(path.read_text().splitlines()) == epoch + 1  # flushed as it goes
    header = "epoch,train_loss,val_loss,val_top1,val_top5,lr,seconds"
    assert path.read_text().splitlines() == [
        header,
        "1,1.0,1.5,0.55,1.0,0.001,2.5",
        "2,0.5,0.75,0.6,1.0,0.002,2.5",
        "3,0.3333333333333333,0.5,0.65,1.0,0.003,2.5",
    ]
    resumed = MetricsLog(path)
    assert resumed.rows == log.rows == [_row(1), _row(2), _row(3)]  # every float read back exactly
    resumed.truncate_after(1)
    assert [r["epoch"] for r in resumed.rows] == [1]
    assert path.read_text().splitlines() == [header, "1,1.0,1.5,0.55,1.0,0.001,2.5"]
    resumed.append({**_row(2), "val_top1": np.float32(0.25), "seconds": torch.tensor(4.0), "extra": 1})
    assert path.read_text().splitlines()[-1] == "2,0.5,0.75,0.25,1.0,0.002,4.0"
    assert MetricsLog(path).rows[-1]["val_top1"] == 0.25
    resumed.truncate_after(5)  # nothing to drop
    assert len(MetricsLog(path).rows) == 2


def test_metrics_log_drops_a_row_cut_short(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss\n1,0.5\n2,0.2")  # killed while writing epoch 2
    log = MetricsLog(path)
    assert log.rows == [{"epoch": 1, "train_loss": 0.5}]
    log.append({"epoch": 2, "train_loss": 0.25})
    assert path.read_text().splitlines() == ["epoch,train_loss", "1,0.5", "2,0.25"]


def _plotted(figure) -> dict:
    """Each panel's title -> its series: legend name -> (x values, y values) of its line."""
    def series(axes):
        names = [t.get_text() for t in axes.get_legend().get_texts()] if axes.get_legend() else []
        assert len(names) == len(axes.lines)
        return {name: (list(line.get_xdata()), list(line.get_ydata())) for name, line in zip(names, axes.lines)}
    return {axes.get_title(): series(axes) for axes in figure.axes}


def test_metrics_log_plot(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.plot(tmp_path / "empty.png")  # before the first epoch: an empty loss chart
    assert cv2.imread(str(tmp_path / "empty.png")).shape == (440, 640, 3)
    assert _plotted(log.figure()) == {"loss": {}}
    log.append(_row(1))
    one = cv2.imread(str(log.plot(tmp_path / "one.png")))
    assert one.shape == (440, 1280, 3)  # loss and accuracy side by side
    for epoch in range(2, 8):
        log.append(_row(epoch))
    image = cv2.imread(str(log.plot(tmp_path / "training_curves.png")))
    figure = log.figure()
    assert np.array_equal(image, figure_pixels(figure)[:, :, ::-1])  # the file is this figure
    epochs = list(range(1, 8))
    assert _plotted(figure) == {
        "loss": {"train loss": (epochs, [1.0 / e for e in epochs]), "val loss": (epochs, [1.5 / e for e in epochs])},
        "validation accuracy": {"val top-1": (epochs, [(0.5 + e / 20) * 100 for e in epochs]),
                                "val top-5": (epochs, [100.0] * 7)},
    }
    assert [(a.get_ylabel(), a.get_xlabel()) for a in figure.axes] == [("cross-entropy", "epoch"),
                                                                      ("accuracy (%)", "epoch")]
    blue = np.array((180, 119, 31), np.uint8)  # the first series of each panel
    for panel in (image[:, :640], image[:, 640:]):
        assert np.all(panel[70:] == blue, axis=2).sum() > 100
    # without a validation set there is nothing to show for accuracy: the loss panel only
    bare = MetricsLog(tmp_path / "bare.csv")
    for epoch in (1, 2):
        bare.append(_row(epoch, val=False))
    assert math.isnan(bare.rows[0]["val_loss"])
    assert cv2.imread(str(bare.plot(tmp_path / "bare.png"))).shape == (440, 640, 3)
    assert _plotted(bare.figure()) == {"loss": {"train loss": ([1, 2], [1.0, 0.5])}}


def test_metrics_log_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = MetricsLog(blocker / "metrics.csv")
    with pytest.raises(StamError, match="cannot write"):
        log.append(_row(1))
    with pytest.raises(StamError, match="cannot write"):
        MetricsLog(tmp_path / "m.csv").plot(blocker / "curves.png")


def test_metrics_log_draws_the_curves_when_due_and_always_at_the_end(tmp_path, monkeypatch):
    import stamcli.train.metrics as metrics

    clock = {"now": 100.0}

    def tick():  # every reading of the clock moves it on by 0.5 s: each chart "takes" 0.5 s
        clock["now"] += 0.5
        return clock["now"]

    monkeypatch.setattr(metrics.time, "monotonic", tick)
    log = MetricsLog(tmp_path / "metrics.csv")
    png = tmp_path / "training_curves.png"
    log.append(_row(1))
    assert log.plot_if_due(png) == png  # the first chart is always drawn
    first = png.read_bytes()
    log.append(_row(2))
    assert log.plot_if_due(png) is None and png.read_bytes() == first  # 1 s after a 0.5 s chart: not due
    clock["now"] += 5.0  # 5.5 s since the last chart, more than 0.5 s / 10%
    assert log.plot_if_due(png) == png and png.read_bytes() != first
    drawn = png.read_bytes()
    log.append(_row(3))
    assert log.plot_if_due(png, final=True) == png and png.read_bytes() != drawn  # the last epoch is never skipped
