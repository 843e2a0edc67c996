"""Test-time views: ``--clips`` temporal offsets x ``--crops`` spatial crops, decoded once, softmax averaged."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_LABELS, make_tiny_model
from synthetic import decode_clip_index, write_index_video, write_video
from stamcli import UsageError, load_checkpoint
from stamcli import video
from stamcli.cli import app
from stamcli.engine import PredictOptions, Predictor
from stamcli.sparse_decode import SparseDecoder
from stamcli.video import Views, crop_offsets, preprocess_crops, read_clip, read_views, sample_indices

runner = CliRunner()
BANDS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}  # BGR


def band_frame(height: int, width: int) -> np.ndarray:
    """Three equal solid bands along the longer side: red, green, blue (left to right, or top to bottom)."""
    img = np.zeros((height, width, 3), np.uint8)
    long_side = max(height, width)
    for k, bgr in enumerate(BANDS.values()):
        lo, hi = k * long_side // 3, (k + 1) * long_side // 3
        if width >= height:
            img[:, lo:hi] = bgr
        else:
            img[lo:hi, :] = bgr
    return img


def colour_name(rgb_chw: torch.Tensor) -> str:
    """The band colour an RGB (3, S, S) crop shows (mean of its central half)."""
    s = rgb_chw.shape[-1]
    mean = rgb_chw[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4].float().mean(dim=(1, 2)).numpy()
    return min(BANDS, key=lambda name: float(((mean - np.array(BANDS[name][::-1])) ** 2).sum()))


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("views")
    write_index_video(root / "index.mp4", 50, 48, 64)  # frame k shows k
    write_video(root / "landscape.avi", [band_frame(32, 96)] * 5, fourcc="MJPG")
    write_video(root / "portrait.avi", [band_frame(96, 32)] * 5, fourcc="MJPG")
    return root


class CountingCapture:
    """cv2.VideoCapture that counts how often videos are opened and frames retrieved."""

    opened = 0
    retrieved = 0

    def __init__(self, *args):
        CountingCapture.opened += 1
        self.real = _REAL_CAPTURE(*args)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def retrieve(self, *args):
        CountingCapture.retrieved += 1
        return self.real.retrieve(*args)


_REAL_CAPTURE = cv2.VideoCapture


@pytest.fixture(params=["auto", "opencv"])
def counting(monkeypatch, request):
    """Counts videos opened and frames retrieved by either decoder (``STAM_DECODER`` = the param):
    OpenCV captures, or :class:`stamcli.sparse_decode.SparseDecoder` reads and the frames they give."""
    monkeypatch.setenv("STAM_DECODER", request.param)
    CountingCapture.opened = CountingCapture.retrieved = 0
    monkeypatch.setattr(video.cv2, "VideoCapture", CountingCapture)
    enter, frames = SparseDecoder.__enter__, SparseDecoder.frames

    def counted_enter(self):
        CountingCapture.opened += 1
        return enter(self)

    def counted_frames(self, wanted):
        for item in frames(self, wanted):
            CountingCapture.retrieved += 1
            yield item

    monkeypatch.setattr(SparseDecoder, "__enter__", counted_enter)
    monkeypatch.setattr(SparseDecoder, "frames", counted_frames)
    return CountingCapture


# ---------------------------------------------------------------------------- sampling and crops


@pytest.mark.parametrize("n", [1, 3, 7, 16, 50, 251])
@pytest.mark.parametrize("f", [1, 4, 8])
@pytest.mark.parametrize("clips", [1, 2, 3, 5])
def test_clip_offsets_formula_and_interleaving(n, f, clips):
    for c in range(clips):
        got = sample_indices(n, f, c, clips)
        assert got == [min(math.floor((i + Fraction(2 * c + 1, 2 * clips)) * n / f), n - 1) for i in range(f)]
        assert got == sample_indices(n, clips * f)[c::clips]  # the clips interleave into one uniform sample
    assert sample_indices(n, f, 0, 1) == sample_indices(n, f)


def test_clip_offsets_worked_example():
    assert [sample_indices(50, 4, c, 3) for c in range(3)] == [[2, 14, 27, 39], [6, 18, 31, 43], [10, 22, 35, 47]]
    with pytest.raises(ValueError, match="clip < clips"):
        sample_indices(50, 4, 3, 3)


def test_crop_offsets():
    assert crop_offsets(32, 42, 32, 3) == [(0, 0), (0, 5), (0, 10)]  # landscape: left, centre, right
    assert crop_offsets(42, 32, 32, 3) == [(0, 0), (5, 0), (10, 0)]  # portrait: top, centre, bottom
    assert crop_offsets(40, 40, 32, 3) == [(4, 0), (4, 4), (4, 8)]  # square: along the width
    assert crop_offsets(256, 341, 224, 1) == [(16, 58)]  # the plain centre crop (rounded)
    with pytest.raises(ValueError, match="crops must be one of"):
        crop_offsets(32, 42, 32, 2)


# ---------------------------------------------------------------------------- read_views


def test_one_view_is_exactly_read_clip(vids):
    plain = read_clip(vids / "index.mp4", 4, 32)
    views = read_views(vids / "index.mp4", 4, 32)
    assert isinstance(views, Views) and views.frames.shape == (1, 4, 3, 32, 32)
    assert torch.equal(views.frames[0], plain.frames) and views.indices == plain.indices
    assert (views.frame_count, views.fps, views.width, views.height) == (plain.frame_count, plain.fps, 64, 48)


def test_clips_take_the_offset_frames_in_one_decode(vids, counting):
    views = read_views(vids / "index.mp4", 4, 32, clips=3)
    assert views.frames.shape == (3, 4, 3, 32, 32) and (views.clips, views.crops) == (3, 1)
    expected = [[2, 14, 27, 39], [6, 18, 31, 43], [10, 22, 35, 47]]
    assert [views.clip_indices(c) for c in range(3)] == expected
    assert views.indices == sum(expected, [])
    for c in range(3):  # the pixels really are those frames
        assert [decode_clip_index(frame) for frame in views.frames[c]] == expected[c]
    assert counting.opened == 1 and counting.retrieved == 12  # one pass, each wanted frame once


def test_repeated_frames_across_clips_are_decoded_once(vids, counting):
    views = read_views(vids / "index.mp4", 8, 32, clips=4)  # 32 distinct frames of 50
    assert counting.opened == 1 and counting.retrieved == len(set(views.indices)) == 32
    short = read_views(vids / "index.mp4", 40, 32, clips=2)  # 80 samples of 50 frames
    assert len(set(short.indices)) == 50 and counting.retrieved == 32 + 50


@pytest.mark.parametrize("name, shape", [("landscape.avi", "wide"), ("portrait.avi", "tall")])
def test_three_crops_are_start_centre_end_of_the_longer_side(vids, counting, name, shape):
    views = read_views(vids / name, 2, 32, crops=3, clips=2)
    assert views.frames.shape == (6, 2, 3, 32, 32) and (views.clips, views.crops) == (2, 3)
    for v in range(6):  # view v = clip v // 3, crop v % 3
        assert {colour_name(frame) for frame in views.frames[v]} == {["red", "green", "blue"][v % 3]}
    assert counting.opened == 1
    # exactly the crops of the frames the clips sampled: shorter side to img_size (32), 3 squares
    cap = _REAL_CAPTURE(str(vids / name))
    decoded = [cap.read()[1] for _ in range(views.frame_count)]
    for v in range(6):
        for i, k in enumerate(views.clip_indices(v // 3)):
            assert torch.equal(views.frames[v, i], preprocess_crops(decoded[k], 32, 32, 3)[v % 3])


def test_one_crop_of_the_bands_is_the_centre(vids):
    views = read_views(vids / "landscape.avi", 2, 32, clips=2)
    assert {colour_name(frame) for frame in views.frames.flatten(0, 1)} == {"green"}


def test_bad_view_counts(vids):
    for kwargs in ({"clips": 0}, {"crops": 2}):
        with pytest.raises(ValueError, match="need clips >= 1 and crops in"):
            read_views(vids / "index.mp4", 4, 32, **kwargs)


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


def test_a_batch_of_videos_runs_videos_times_views_inputs(vids, counting):
    model = make_tiny_model()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    paths = [str(vids / "index.mp4")] * 3
    records = list(Predictor(model, PredictOptions(clips=2, crops=3, batch_size=2, device="cpu")).predict(paths))
    assert [r["status"] for r in records] == ["ok"] * 3
    # two batches (2 videos x 6 views, then 1 x 6); model streams may start them in either order
    assert sorted(seen, reverse=True) == [(12, 4, 3, 32, 32), (6, 4, 3, 32, 32)]
    assert counting.opened == 3  # one decode per video, whatever the views


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
