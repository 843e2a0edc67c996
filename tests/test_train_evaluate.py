"""stamcli.train.evaluate: the report of a model on labelled clips is built from the model's own
predictions of each video; options are checked before the model is loaded; files on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from synthetic import write_index_video, write_text
from stamcli import save_checkpoint
from stamcli.engine import PredictOptions, Predictor
from stamcli.errors import StamError, UsageError
from stamcli.jobs import EvaluationJob
from stamcli.train.evaluate import evaluate, run_evaluation
from stamcli.train.metrics import report_paths

LABELS = [f"class{i}" for i in range(8)]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """A labels CSV of 8 different videos (relative paths) and its (absolute path, label) rows."""
    root = tmp_path_factory.mktemp("evaluate")
    rows = []
    for i in range(8):
        write_index_video(root / f"clip{i}.mp4", 8 + 2 * i, 48, 64)
        rows.append((f"clip{i}.mp4", LABELS[(3 * i) % 8] if i % 3 else LABELS[i % 2]))
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows), encoding="utf-8")
    return root / "labels.csv", [(str(root / p), label) for p, label in rows]


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=7, num_classes=8, labels=LABELS)


def test_report_counts_come_from_the_model_s_predictions_of_each_video(labelled, model, tmp_path):
    data, rows = labelled
    options = PredictOptions(device="cpu", workers=2, batch_size=3)
    report = evaluate(data, model, options, output=tmp_path / "report.json")
    probabilities = [item.probabilities for item in Predictor(model, options).scores([p for p, _ in rows])]
    ranked = [p.argsort(descending=True).tolist() for p in probabilities]
    targets = [LABELS.index(label) for _, label in rows]
    assert report["videos"] == 8 and report["failed"] == [] and report["model"] == model.name
    assert report["top1"] == sum(r[0] == t for r, t in zip(ranked, targets)) / 8
    assert report["top5"] == sum(t in r[:5] for r, t in zip(ranked, targets)) / 8
    assert 0 < report["top5"] < 1  # 8 classes: top-5 is not trivially everything
    confusion = [[0] * 8 for _ in range(8)]
    for r, t in zip(ranked, targets):
        confusion[t][r[0]] += 1
    assert report["confusion"] == confusion
    assert [m["path"] for m in report["misclassified"]] == sorted(
        (p for (p, _), r, t in zip(rows, ranked, targets) if r[0] != t),
        key=lambda p: -max(probabilities[[q for q, _ in rows].index(p)]).item())
    loss = -sum(torch.log(p[t]).item() for p, t in zip(probabilities, targets)) / 8
    assert report["loss"] == pytest.approx(loss, rel=1e-5)
    files = report_paths(tmp_path / "report.json")
    assert all(path.is_file() for path in files.values())
    assert json.loads(files["report"].read_text(encoding="utf-8"))["confusion"] == confusion
    assert "clips" not in report  # one view: no test-time view keys


def test_test_time_views_are_named_in_the_report(labelled, model):
    data, _ = labelled
    report = evaluate(data, model, PredictOptions(device="cpu", workers=1, clips=2, crops=3))
    assert (report["clips"], report["crops"]) == (2, 3) and report["videos"] == 8


def test_run_evaluation_checks_the_options_before_loading_the_model(labelled, model, tmp_path):
    data, _ = labelled
    missing = str(tmp_path / "never-loaded.safetensors")
    with pytest.raises(UsageError, match="invalid device 'tpu'"):
        run_evaluation(EvaluationJob(data=str(data), model=missing, options=PredictOptions(device="tpu")))
    with pytest.raises(UsageError, match="--crops"):
        run_evaluation(EvaluationJob(data=str(data), model=missing, options=PredictOptions(device="cpu", crops=2)))
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    report = run_evaluation(EvaluationJob(data=str(data), model=str(path), output=str(tmp_path / "r.json"),
                                          options=PredictOptions(device="cpu", workers=1)))
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == report and report["videos"] == 8


def test_no_readable_video_is_an_error_and_skip_bad_drops_missing_files(tmp_path, model):
    bad = write_text(tmp_path / "bad.mp4")
    (tmp_path / "all_bad.csv").write_text(f"path,label\n{bad},class0\n", encoding="utf-8")
    with pytest.raises(StamError, match=r"no video in .*all_bad\.csv could be read"):
        evaluate(tmp_path / "all_bad.csv", model, PredictOptions(device="cpu", workers=1))
    good = write_index_video(tmp_path / "good.mp4", 8, 48, 64)
    (tmp_path / "some_missing.csv").write_text(f"path,label\n{good},class1\n{tmp_path / 'gone.mp4'},class2\n",
                                               encoding="utf-8")
    with pytest.raises(StamError, match="gone.mp4"):
        evaluate(tmp_path / "some_missing.csv", model, PredictOptions(device="cpu", workers=1))
    report = evaluate(tmp_path / "some_missing.csv", model, PredictOptions(device="cpu", workers=1), skip_bad=True)
    assert report["videos"] == 1 and sum(report["confusion"][1]) == 1 and sum(map(sum, report["confusion"])) == 1
