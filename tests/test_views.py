"""Test-time views in the Predictor and the CLI: ``--clips`` temporal offsets x ``--crops`` spatial crops,
decoded once, softmax averaged (how the views are read: test_decode_clips.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_LABELS, make_tiny_model
from synthetic import band_frame, write_index_video, write_video
from stamcli import UsageError, load_checkpoint
from stamcli.cli import app
from stamcli.decode import read_clip, read_views
from stamcli.engine import PredictOptions, Predictor

runner = CliRunner()


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("views")
    write_index_video(root / "index.mp4", 50, 48, 64)  # frame k shows k
    write_video(root / "landscape.avi", [band_frame(32, 96)] * 5, fourcc="MJPG")
    write_video(root / "portrait.avi", [band_frame(96, 32)] * 5, fourcc="MJPG")
    return root


# ---------------------------------------------------------------------------- Predictor


def test_probabilities_are_the_mean_of_every_views_softmax(vids):
    model = make_tiny_model()
    paths = [str(vids / "index.mp4"), str(vids / "landscape.avi")]
    predictor = Predictor(model, PredictOptions(clips=2, crops=3, device="cpu", batch_size=2))
    got = torch.stack([item.probabilities for item in predictor.scores(paths)])
    with torch.inference_mode():
        by_hand = []
        for path in paths:
            views = read_views(path, 4, 32, clips=2, crops=3)
            per_view = [model(views.frames[v][None].float() / 255).softmax(-1)[0] for v in range(6)]
            by_hand.append(torch.stack(per_view).mean(0))
    assert torch.allclose(got, torch.stack(by_hand), atol=1e-6, rtol=0)
    assert not torch.allclose(got[0], Predictor(model, PredictOptions(device="cpu")).probabilities(
        [read_clip(paths[0], 4, 32)])[0], atol=1e-4)  # the views really change the answer


def test_records_name_the_views_and_default_records_are_unchanged(vids):
    model = make_tiny_model()
    paths = [str(vids / "index.mp4"), str(vids / "missing.mp4")]
    ok, bad = Predictor(model, PredictOptions(clips=3, device="cpu")).predict(paths)
    assert (ok["clips"], ok["crops"], ok["status"]) == (3, 1, "ok")
    assert (bad["clips"], bad["crops"], bad["status"]) == (3, 1, "error")
    plain = next(Predictor(model, PredictOptions(device="cpu")).predict(paths[:1]))
    assert list(plain) == ["path", "status", "error", "predictions", "frames", "model", "duration_s", "fps"]


def test_a_batch_of_videos_runs_videos_times_views_inputs(vids, decode_counter):
    model = make_tiny_model()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    paths = [str(vids / "index.mp4")] * 3
    options = PredictOptions(clips=2, crops=3, batch_size=2, device="cpu", decoder=decode_counter.decoder)
    records = list(Predictor(model, options).predict(paths))
    assert [r["status"] for r in records] == ["ok"] * 3
    # two batches (2 videos x 6 views, then 1 x 6); model streams may start them in either order
    assert sorted(seen, reverse=True) == [(12, 4, 3, 32, 32), (6, 4, 3, 32, 32)]
    assert decode_counter.opened == 3  # one decode per video, whatever the views


@pytest.mark.parametrize("kwargs, message", [
    ({"clips": 0}, "--clips must be at least 1"),
    ({"crops": 2}, "--crops must be 1 or 3, got 2"),
    ({"crops": 0}, "--crops must be 1 or 3, got 0"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        PredictOptions(device="cpu", **kwargs).resolve()


# ---------------------------------------------------------------------------- CLI


def test_cli_predict_with_views(vids, tiny_checkpoint, tmp_path):
    out = tmp_path / "tags.jsonl"
    result = runner.invoke(app, ["predict", str(vids / "index.mp4"), "-m", str(tiny_checkpoint), "--clips", "2",
                                 "--crops", "3", "-o", str(out), "-q", "-k", "5", "--device", "cpu"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert (record["clips"], record["crops"]) == (2, 3)
    model = load_checkpoint(tiny_checkpoint)
    views = read_views(vids / "index.mp4", 4, 32, clips=2, crops=3)
    with torch.inference_mode():
        probs = model(views.frames.float() / 255).softmax(-1).mean(0)
    assert [p["score"] for p in record["predictions"]] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-6)


def test_cli_rejects_bad_view_counts(vids, tiny_checkpoint):
    result = runner.invoke(app, ["predict", str(vids / "index.mp4"), "-m", str(tiny_checkpoint), "--crops", "2"])
    assert result.exit_code == 2 and "error: --crops must be 1 or 3, got 2" in result.output
    result = runner.invoke(app, ["predict", str(vids / "index.mp4"), "-m", str(tiny_checkpoint), "--clips", "0"])
    assert result.exit_code == 2 and "--clips" in result.output


def test_cli_evaluate_with_views(vids, tiny_checkpoint, tmp_path):
    data = tmp_path / "val.csv"
    data.write_text(f"path,label\n{vids / 'index.mp4'},{TINY_LABELS[0]}\n{vids / 'landscape.avi'},{TINY_LABELS[1]}\n")
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["evaluate", str(data), "-m", str(tiny_checkpoint), "--clips", "2", "--crops", "3",
                                 "-o", str(report_path), "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert (report["clips"], report["crops"], report["videos"]) == (2, 3, 2)
    model = load_checkpoint(tiny_checkpoint)
    with torch.inference_mode():
        probs = [model(read_views(p, 4, 32, clips=2, crops=3).frames.float() / 255).softmax(-1).mean(0)
                 for p in (vids / "index.mp4", vids / "landscape.avi")]
    hits = [int(p.argmax()) == target for p, target in zip(probs, (0, 1))]
    assert report["top1"] == pytest.approx(sum(hits) / 2)
