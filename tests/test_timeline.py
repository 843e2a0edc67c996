"""Timelines: window planning, the one-pass window reader, `stam predict --window`, srt/vtt output."""

from __future__ import annotations

import csv
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_LABELS, make_tiny_model
from synthetic import (decode_clip_index, quadrant_colors, quadrant_frame, write_empty, write_index_video,
                       write_raw_h264, write_text, write_video_av)
from stamcli.cli import app
from stamcli.decode import opencv, sample_indices
from stamcli.decode.pyav import SparseDecoder, Unsupported
from stamcli.engine import PredictOptions, Predictor
from stamcli.errors import UsageError, VideoError
from stamcli.subtitles import format_subtitles, subtitle_cues
from stamcli.timeline import (TimelinePredictor, TimelineReader, Window, check_timeline, plan_windows, segments,
                              window_indices, window_lengths)
from stamcli.writers import read_records

runner = CliRunner()


def _spans(windows) -> list[tuple[int, int]]:
    return [(w.start, w.end) for w in windows]


class CountingCapture:
    """A real cv2.VideoCapture that counts opens and grabs and can lie about the frame count."""

    opened = 0
    grabs = 0
    frame_count_lie = None
    fps_lie = None

    def __init__(self, *args, **kwargs):
        self.real = _REAL_CAPTURE(*args, **kwargs)
        CountingCapture.opened += 1

    def __getattr__(self, name):
        return getattr(self.real, name)

    def grab(self):
        CountingCapture.grabs += 1
        return self.real.grab()

    def get(self, prop):
        if prop == cv2.CAP_PROP_FRAME_COUNT and CountingCapture.frame_count_lie is not None:
            return CountingCapture.frame_count_lie
        if prop == cv2.CAP_PROP_FPS and CountingCapture.fps_lie is not None:
            return CountingCapture.fps_lie
        return self.real.get(prop)


_REAL_CAPTURE = cv2.VideoCapture


@pytest.fixture(params=["auto", "opencv"])
def decoder(request):
    """The default decoding (PyAV, OpenCV where PyAV gives up) and OpenCV alone."""
    return request.param


@pytest.fixture
def opencv_default(monkeypatch):
    """``stam predict`` decodes with OpenCV alone (``STAM_DECODER=opencv``): for CLI tests of the
    OpenCV stream's own logic."""
    monkeypatch.setenv("STAM_DECODER", "opencv")


@pytest.fixture
def counting(monkeypatch):
    CountingCapture.opened, CountingCapture.grabs = 0, 0
    CountingCapture.frame_count_lie = CountingCapture.fps_lie = None
    monkeypatch.setattr(opencv.cv2, "VideoCapture", CountingCapture)
    return CountingCapture


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Index-encoded videos at 10 fps: 60 frames (6 s) and 40 / 160 frames for the memory test."""
    root = tmp_path_factory.mktemp("timeline")
    write_index_video(root / "a.mp4", 60, fps=10)
    write_index_video(root / "b.mp4", 40, fps=10)
    write_index_video(root / "long.mp4", 160, fps=10)
    return root


def _ids(clip) -> list[int]:
    return [decode_clip_index(frame) for frame in clip.frames]


# ---------------------------------------------------------------------------- planning


def test_window_planning_numbers():
    assert window_lengths(10, 2, 1.5) == (20, 15)
    assert window_lengths(29.97, 10) == (300, 300)  # stride defaults to the window; whole frames
    assert window_lengths(10, 0.01, 0.01) == (1, 1)  # at least one frame
    assert _spans(plan_windows(60, 10, 2, 1.5)) == [(0, 20), (15, 35), (30, 50), (45, 60)]  # short tail
    assert _spans(plan_windows(50, 10, 2)) == [(0, 20), (20, 40), (40, 50)]  # stride = window
    assert _spans(plan_windows(40, 10, 2, 1)) == [(0, 20), (10, 30), (20, 40)]  # ends exactly: no tail
    assert _spans(plan_windows(7, 10, 2, 1)) == [(0, 7)]  # shorter than one window
    assert _spans(plan_windows(100, 10, 1, 3)) == [(0, 10), (30, 40), (60, 70), (90, 100)]  # gaps
    windows = plan_windows(60, 10, 2, 1.5)
    assert [(w.index, w.start_s, w.end_s) for w in windows] == [(0, 0.0, 2.0), (1, 1.5, 3.5), (2, 3.0, 5.0),
                                                                 (3, 4.5, 6.0)]
    assert window_indices(windows[1], 4) == [17, 22, 27, 32] == [15 + i for i in sample_indices(20, 4)]
    assert window_indices(windows[3], 4) == [46, 50, 54, 58]
    assert window_indices(Window(0, 0, 2, 10), 4) == [0, 0, 1, 1]  # fewer frames than F: repeats


def test_segments_tile_the_video_nearest_centre():
    spans = [(0.0, 2.0), (1.5, 3.5), (3.0, 5.0), (4.5, 6.0)]
    assert segments(spans, 6.0) == [(0.0, 1.75), (1.75, 3.25), (3.25, 4.625), (4.625, 6.0)]
    assert segments([(0.0, 1.0), (3.0, 4.0)], 10.0) == [(0.0, 2.0), (2.0, 10.0)]  # gaps are shared out too
    assert segments([(0.0, 0.7)], 0.7) == [(0.0, 0.7)]
    assert segments([], 3.0) == []


def test_option_checks():
    check_timeline(None, None)
    check_timeline(2.5, 1)
    for window, stride, message in [(0, None, "--window must be a number of seconds greater than 0, got 0"),
                                    (-1, None, "--window must be"), (float("nan"), None, "--window must be"),
                                    (2, 0, "--stride must be a number of seconds greater than 0, got 0"),
                                    (None, 1, "--stride needs --window")]:
        with pytest.raises(UsageError, match=message.replace("-", r"\-")):
            check_timeline(window, stride)


# ---------------------------------------------------------------------------- the reader


def test_reader_decodes_once_and_returns_the_planned_source_frames(clips, counting):
    reader = TimelineReader(clips / "a.mp4", 4, 64, 2, 1.5, decoder="opencv")
    got = list(reader)
    planned = plan_windows(60, 10, 2, 1.5)
    assert [w for w, _ in got] == planned
    for window, clip in got:
        assert clip.indices == window_indices(window, 4) == _ids(clip)
        assert clip.frames.shape == (4, 3, 64, 64) and clip.frames.dtype == torch.uint8
        span = (window.end - window.start, 10.0, window.end_s - window.start_s)
        assert (clip.frame_count, clip.fps, clip.duration_s) == span
    assert (reader.frame_count, reader.fps, reader.duration_s) == (60, 10.0, 6.0)
    assert counting.opened == 1 and counting.grabs == 61  # every frame once, then the end
    assert reader.grabs == 60
    # only sampled frames are converted: the plan's 14, plus 52 and 57, which the tail window would sample
    # were it full length (kept in case the header's frame count is wrong)
    assert len({i for w in planned for i in window_indices(w, 4)}) == 14 and reader.retrieved == 16


def test_buffered_frames_do_not_grow_with_the_video(clips, decoder):
    peaks = []
    for name, n in (("b.mp4", 40), ("long.mp4", 160)):
        reader = TimelineReader(clips / name, 4, 32, 1, 0.5, decoder=decoder)
        windows = [w for w, _ in reader]
        assert _spans(windows) == _spans(plan_windows(n, 10, 1, 0.5))
        peaks.append(reader.peak_buffered)
    assert peaks[0] == peaks[1]  # 4x longer, same peak
    assert 4 <= peaks[0] <= 2 * 4  # at most two windows (window / stride) of F frames are ever held


@pytest.mark.parametrize("lie, tail_ids", [
    (None, [31, 33, 36, 38]),  # the header is right: the tail is sampled exactly like plan_windows(40)
    (60, [31, 35, 35, 39]),  # over-count: the stream ends inside window 3; its sampled frames < 40, resampled
    (25, [31, 35, 35, 39]),  # under-count: windows go on past the header's end
    (0, [31, 35, 35, 39]),  # no count at all
])
def test_a_lying_header_count_still_gives_the_real_windows(clips, counting, lie, tail_ids):
    counting.frame_count_lie = lie
    reader = TimelineReader(clips / "b.mp4", 4, 64, 1.5, 1, decoder="opencv")
    got = list(reader)
    assert _spans(w for w, _ in got) == _spans(plan_windows(40, 10, 1.5, 1)) == [(0, 15), (10, 25), (20, 35), (30, 40)]
    for window, clip in got[:3]:  # full windows never depend on the count
        assert _ids(clip) == clip.indices == window_indices(window, 4)
    assert _ids(got[3][1]) == got[3][1].indices == tail_ids
    assert reader.frame_count == 40 and counting.opened == 1


def test_rotation_is_honoured(tmp_path, decoder):
    src = quadrant_frame(48, 80)
    path = write_video_av(tmp_path / "rot.mp4", [src] * 6, 10, "libx264", rotation=90)
    reader = TimelineReader(path, 2, 32, 5, decoder=decoder)
    (window, clip), = list(reader)
    assert reader.decoder == clip.decoder == {"auto": "pyav", "opencv": "opencv"}[decoder]
    upright = np.rot90(src, k=1)
    assert (clip.height, clip.width) == upright.shape[:2] and clip.rotation == 270
    assert quadrant_colors(clip.frames[0]) == quadrant_colors(upright[..., ::-1])


@pytest.fixture(scope="module")
def h264(tmp_path_factory) -> Path:
    """An index-encoded x264 video (B-frames, a clean key frame every 30 frames): 300 frames at 25 fps."""
    return write_index_video(tmp_path_factory.mktemp("timeline_h264") / "h264.mp4", 300, fps=25, codec="libx264",
                             options={"g": "30"})


def _timeline(path, decoder: str, *args) -> tuple[TimelineReader, list]:
    reader = TimelineReader(path, *args, decoder=decoder)
    return reader, list(reader)


def _same_windows(got, expected) -> None:
    assert [w for w, _ in got] == [w for w, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert a.indices == b.indices == _ids(a)
        assert torch.equal(a.frames, b.frames)  # bit for bit
        facts = ("frame_count", "fps", "duration_s", "width", "height", "rotation")
        assert [getattr(a, f) for f in facts] == [getattr(b, f) for f in facts]


@pytest.mark.parametrize("window, stride, most_decoded", [  # x264 here decodes 187, 64, 35 and 70 of the 300
    (2, 1, 215),  # overlapping windows: the sampled frames and the reference frames up to each
    (1, 4, 75),  # 1 s of every 4 s: seeks to the key frame before each window
    (12, None, 45),  # one window over the whole video: a seek to the key frame before each sampled frame
    (5, 3.5, 85),
])
def test_pyav_plans_the_timeline_up_front_and_decodes_only_what_it_needs(h264, window, stride, most_decoded):
    cv, expected = _timeline(h264, "opencv", 4, 32, window, stride)
    pyav, got = _timeline(h264, "auto", 4, 32, window, stride)
    assert (pyav.decoder, cv.decoder) == ("pyav", "opencv")
    assert {clip.decoder for _, clip in got} == {"pyav"}
    windows = plan_windows(300, 25, window, stride)
    assert [w for w, _ in expected] == windows
    _same_windows(got, expected)
    assert (pyav.frame_count, pyav.fps, pyav.duration_s) == (cv.frame_count, cv.fps, cv.duration_s) == (300, 25.0, 12.0)
    assert pyav.retrieved == len({j for w in windows for j in window_indices(w, 4)})  # the plan's frames, no more
    assert cv.grabs == 300 and pyav.grabs <= most_decoded  # unsampled non-reference frames are never decoded
    assert pyav.peak_buffered <= cv.peak_buffered


TIMELINE_VIDEOS = {  # name: (file, write_index_video arguments)
    "open_gop": ("open.mkv", dict(n=300, codec="libx264", options={"g": "30", "x264-params": "open-gop=1"})),
    "vfr": ("vfr.mp4", dict(n=180, fps=30, codec="libx264", pts=list(range(30)) + [30 + 3 * i for i in range(150)],
                            time_base=Fraction(1, 30))),  # 30 fps, then 10 fps
    "mpeg4": ("mpeg4.mp4", dict(n=120)),  # OpenCV's mp4v: no B-frames
    "hevc": ("hevc.mkv", dict(n=200, codec="libx265", options={"x265-params": "log-level=error"})),
}


@pytest.mark.parametrize("name", list(TIMELINE_VIDEOS))
@pytest.mark.parametrize("window, stride", [(2, 1), (1, 3)])
def test_pyav_and_opencv_timelines_agree(tmp_path, name, window, stride):
    file, kwargs = TIMELINE_VIDEOS[name]
    kwargs = {"fps": 25, **kwargs}
    path = write_index_video(tmp_path / file, kwargs.pop("n"), **kwargs)
    cv, expected = _timeline(path, "opencv", 4, 32, window, stride)
    pyav, got = _timeline(path, "auto", 4, 32, window, stride)
    assert (pyav.decoder, cv.decoder) == ("pyav", "opencv")
    _same_windows(got, expected)
    assert [w for w, _ in got] == plan_windows(cv.frame_count, cv.fps, window, stride)
    assert (pyav.frame_count, pyav.fps) == (cv.frame_count, cv.fps) and pyav.grabs < cv.grabs


def _give_up_after(frames_out: int, monkeypatch) -> None:
    """PyAV gives up (Unsupported) after ``frames_out`` frames of each read."""
    real = SparseDecoder.frames

    def gives_up(self, wanted):
        for count, item in enumerate(real(self, wanted)):
            if count == frames_out:
                raise Unsupported("gave up for the test")
            yield item

    monkeypatch.setattr(SparseDecoder, "frames", gives_up)


def test_pyav_giving_up_part_way_hands_each_window_on_once(h264, monkeypatch):
    _, expected = _timeline(h264, "opencv", 4, 32, 2, 1)
    _give_up_after(20, monkeypatch)
    reader, got = _timeline(h264, "auto", 4, 32, 2, 1)
    _same_windows(got, expected)  # every window once, in order
    decoders = [clip.decoder for _, clip in got]
    first = decoders.count("pyav")
    assert 1 <= first < len(got) and decoders == ["pyav"] * first + ["opencv"] * (len(got) - first)
    assert (reader.decoder, reader.frame_count, reader.grabs) == ("opencv", 300, 300)


def test_pyav_alone_reports_what_it_cannot_read_also_part_way(h264, tmp_path, monkeypatch):
    raw = write_raw_h264(tmp_path / "raw.h264", 120)
    with pytest.raises(VideoError, match=r"raw\.h264: PyAV cannot read it exactly \(a packet without a timestamp\)"):
        list(TimelineReader(raw, 4, 32, 2, decoder="pyav"))
    reader, got = _timeline(raw, "auto", 4, 32, 2)
    assert reader.decoder == "opencv" and reader.frame_count == 120 and len(got) >= 2
    assert [w for w, _ in got] == plan_windows(120, reader.fps, 2) and all(_ids(c) == c.indices for _, c in got)
    _, expected = _timeline(h264, "pyav", 4, 32, 2, 1)
    _give_up_after(20, monkeypatch)
    reader, got = TimelineReader(h264, 4, 32, 2, 1, decoder="pyav"), []
    with pytest.raises(VideoError, match="PyAV cannot read it exactly \\(gave up for the test\\)"):
        for item in reader:
            got.append(item)
    assert 1 <= len(got) < len(expected)  # the windows before PyAV gave up, then the error
    _same_windows(got, expected[: len(got)])


def test_the_predictor_s_decoder_reads_the_timelines(clips):
    for decoder, backend in (("opencv", "opencv"), ("pyav", "pyav"), ("auto", "pyav")):
        timeline = TimelinePredictor(Predictor(make_tiny_model(), PredictOptions(device="cpu", decoder=decoder)), 2)
        reader = timeline.reader(str(clips / "b.mp4"))
        assert [clip.decoder for _, clip in reader] == [backend] * 2 and reader.decoder == backend


@pytest.mark.parametrize("lie", [60, 25, 0])
def test_pyav_counts_the_frames_itself_so_a_lying_header_changes_nothing(clips, counting, lie):
    counting.frame_count_lie = lie
    reader = TimelineReader(clips / "b.mp4", 4, 64, 1.5, 1)
    got = list(reader)
    assert reader.decoder == "pyav" and counting.opened == 0
    assert _spans(w for w, _ in got) == [(0, 15), (10, 25), (20, 35), (30, 40)]
    assert _ids(got[3][1]) == got[3][1].indices == [31, 33, 36, 38]  # the tail sampled as plan_windows(40) says
    assert reader.frame_count == 40


def test_unreadable_videos_raise_one_line_errors(clips, tmp_path, counting):
    with pytest.raises(VideoError, match="the file is empty"):
        list(TimelineReader(write_empty(tmp_path / "e.mp4"), 4, 32, 1, decoder="opencv"))
    counting.fps_lie = 0
    with pytest.raises(VideoError, match=r"b\.mp4: its header has no frame rate, needed to place timeline windows"):
        list(TimelineReader(clips / "b.mp4", 4, 32, 1, decoder="opencv"))
    counting.fps_lie, counting.frame_count_lie = None, 20
    write_index_video(tmp_path / "one.mp4", 1, fps=10)  # the header says 20 frames; window 0 samples 2, 7, 12, 17
    with pytest.raises(VideoError, match="no timeline window could be filled from its 1 decodable frames"):
        list(TimelineReader(tmp_path / "one.mp4", 4, 32, 2, decoder="opencv"))
    counting.frame_count_lie = None
    (window, clip), = TimelineReader(tmp_path / "one.mp4", 4, 32, 2, decoder="opencv")  # true count: one 1-frame window
    assert (window.start, window.end, clip.indices) == (0, 1, [0, 0, 0, 0])


# ---------------------------------------------------------------------------- subtitles (pure)


def _window_record(start, end, label, score):
    return {"type": "window", "start_s": start, "end_s": end, "predictions": [{"label": label, "score": score}]}


def test_cues_do_not_overlap_and_merge_equal_labels():
    windows = [_window_record(0.0, 2.0, "archery", 0.5), _window_record(1.5, 3.5, "archery", 0.625),
               _window_record(3.0, 5.0, "baking", 0.75), _window_record(4.5, 6.0, "eating --> fork\nfast", 0.875)]
    cues = subtitle_cues(windows, 6.0)
    assert cues == [(0, 3250, "archery (0.56)"), (3250, 4625, "baking (0.75)"),
                    (4625, 6000, "eating -> fork fast (0.88)")]
    assert format_subtitles(cues, "srt").split("\n") == [
        "1", "00:00:00,000 --> 00:00:03,250", "archery (0.56)", "",
        "2", "00:00:03,250 --> 00:00:04,625", "baking (0.75)", "",
        "3", "00:00:04,625 --> 00:00:06,000", "eating -> fork fast (0.88)", "", ""]
    assert format_subtitles(cues, "vtt").split("\n") == [
        "WEBVTT", "",
        "00:00:00.000 --> 00:00:03.250", "archery (0.56)", "",
        "00:00:03.250 --> 00:00:04.625", "baking (0.75)", "",
        "00:00:04.625 --> 00:00:06.000", "eating -> fork fast (0.88)", "", ""]
    assert format_subtitles([(3_723_004, 3_723_005, "x (1.00)")], "srt").split("\n")[1] == \
        "01:02:03,004 --> 01:02:03,005"


# ---------------------------------------------------------------------------- stam predict --window


def _predict(*args):
    """``stam predict --device cpu ARGS`` (ARGS may name another device)."""
    return runner.invoke(app, ["predict", "--device", "cpu", *map(str, args)], catch_exceptions=False)


@pytest.fixture
def scripted(monkeypatch):
    """The model's answer depends on where the window is: top-1 archery before frame 30, baking after,
    with a score of 0.5 + 0.125 * (first sampled frame // 15); the other labels follow in class order."""

    def probabilities(self, clips):
        rows = []
        for clip in clips:
            top, score = (0 if clip.indices[0] < 30 else 1), 0.5 + 0.125 * (clip.indices[0] // 15)
            rest = iter((1 - score) * share for share in (0.4, 0.3, 0.2, 0.1))
            row = [score if label == top else next(rest) for label in range(5)]
            rows.append(row)
        return torch.tensor(rows)

    monkeypatch.setattr(Predictor, "probabilities", probabilities)


WINDOW_KEYS = ["path", "status", "error", "predictions", "frames", "model", "duration_s", "fps", "type", "window",
               "start_s", "end_s"]


def test_jsonl_windows_and_summary(clips, tiny_checkpoint, tmp_path, scripted, opencv_default, counting):
    out = tmp_path / "t.jsonl"
    result = _predict(clips / "a.mp4", clips / "b.mp4", "-m", tiny_checkpoint, "--window", 2, "--stride", 1.5,
                      "-k", 2, "-b", 3, "-o", out)
    assert result.exit_code == 0, result.output
    assert "tagged 2, failed 0" in result.output
    assert counting.opened == 2 and counting.grabs == 60 + 40 + 2  # each video decoded once
    records = [json.loads(line) for line in out.read_text().splitlines()]
    a = [r for r in records if r["path"] == str(clips / "a.mp4")]
    assert records[: len(a)] == a  # one video's records, then the next one's
    assert [r["type"] for r in a] == ["window"] * 4 + ["video"]
    assert all(list(r) == WINDOW_KEYS for r in a[:4])
    assert [(r["window"], r["start_s"], r["end_s"], r["frames"], r["duration_s"]) for r in a[:4]] == [
        (0, 0.0, 2.0, 20, 2.0), (1, 1.5, 3.5, 20, 2.0), (2, 3.0, 5.0, 20, 2.0), (3, 4.5, 6.0, 15, 1.5)]
    assert [[p["label"] for p in r["predictions"]] for r in a[:4]] == [["archery", "baking"], ["archery", "baking"],
                                                                        ["baking", "archery"], ["baking", "archery"]]
    assert [r["predictions"][0]["score"] for r in a[:4]] == [0.5, 0.625, 0.75, 0.875]
    summary = a[4]
    assert list(summary) == WINDOW_KEYS + ["windows", "coverage"]
    assert (summary["status"], summary["frames"], summary["duration_s"], summary["fps"], summary["windows"]) == \
        ("ok", 60, 6.0, 10.0, 4)
    assert (summary["window"], summary["start_s"], summary["end_s"]) == (None, 0.0, 6.0)
    assert summary["coverage"] == [{"label": "archery", "index": 0, "seconds": 3.25},
                                   {"label": "baking", "index": 1, "seconds": 2.75}]
    assert sum(c["seconds"] for c in summary["coverage"]) == pytest.approx(summary["duration_s"], abs=1e-9)
    assert [(p["label"], p["score"]) for p in summary["predictions"]] == [("archery", 3.25 / 6), ("baking", 2.75 / 6)]
    b = records[len(a):]
    assert [(r["type"], r["start_s"], r["end_s"]) for r in b] == [("window", 0.0, 2.0), ("window", 1.5, 3.5),
                                                                  ("window", 3.0, 4.0), ("video", 0.0, 4.0)]
    assert sum(c["seconds"] for c in b[-1]["coverage"]) == pytest.approx(4.0, abs=1e-9)


def test_model_streams_give_the_same_timeline_in_the_same_order(clips, tiny_checkpoint, tmp_path):
    runs = []
    for streams in (1, 3):
        out = tmp_path / f"streams{streams}.jsonl"
        result = _predict(clips / "a.mp4", clips / "b.mp4", "-m", tiny_checkpoint, "--window", 2, "--stride", 1.5,
                          "-b", 2, "--streams", streams, "-o", out, "-q")
        assert result.exit_code == 0, result.output
        runs.append([json.loads(line) for line in out.read_text().splitlines()])
    one, three = runs
    keys = [(r["path"], r["type"], r["window"], r["start_s"], r["end_s"]) for r in one]
    assert [(r["path"], r["type"], r["window"], r["start_s"], r["end_s"]) for r in three] == keys
    assert [k[1] for k in keys] == ["window"] * 4 + ["video"] + ["window"] * 3 + ["video"]
    for a, b in zip(one, three):
        assert [p["index"] for p in b["predictions"]] == [p["index"] for p in a["predictions"]]
        assert [p["score"] for p in b["predictions"]] == pytest.approx([p["score"] for p in a["predictions"]], abs=1e-5)


def test_csv_has_timeline_columns_and_reads_back(clips, tiny_checkpoint, tmp_path):
    out = tmp_path / "t.csv"
    result = _predict(clips / "a.mp4", "-m", tiny_checkpoint, "--window", 2.5, "-k", 1, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "status", "error", "label_1", "score_1", "frames", "model", "duration_s", "fps",
                       "type", "window", "start_s", "end_s"]
    assert [r[9:] for r in rows[1:]] == [["window", "0", "0.0", "2.5"], ["window", "1", "2.5", "5.0"],
                                         ["window", "2", "5.0", "6.0"], ["video", "", "0.0", "6.0"]]
    assert [r[5] for r in rows[1:]] == ["25", "25", "10", "60"]
    assert all(r[3] in TINY_LABELS for r in rows[1:])
    back = read_records(out)
    assert [(r["type"], r["window"], r["start_s"], r["end_s"]) for r in back] == [
        ("window", 0, 0.0, 2.5), ("window", 1, 2.5, 5.0), ("window", 2, 5.0, 6.0), ("video", None, 0.0, 6.0)]
    assert float(rows[4][4]) == 1.0  # one label covers the whole video with this model


def test_bad_videos_give_an_error_record_and_the_run_goes_on(clips, tiny_checkpoint, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(clips / "b.mp4", folder / "b.mp4")
    write_empty(folder / "a_empty.mp4")
    write_text(folder / "c_text.avi")
    out = tmp_path / "t.json"
    result = _predict(folder, "-m", tiny_checkpoint, "--window", 2, "-o", out, "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    records = json.loads(out.read_text())
    assert [(Path(r["path"]).name, r["type"], r["status"]) for r in records] == [
        ("a_empty.mp4", "video", "error"), ("b.mp4", "window", "ok"), ("b.mp4", "window", "ok"),
        ("b.mp4", "video", "ok"), ("c_text.avi", "video", "error")]
    assert records[0]["error"] == f"cannot read video {folder / 'a_empty.mp4'}: the file is empty (0 bytes)"
    assert records[-1]["error"].startswith(f"cannot read video {folder / 'c_text.avi'}: not a video file")


def test_resume_redoes_a_half_written_video_without_duplicates(clips, tiny_checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clips / name, folder / name)
    out = tmp_path / "t.json"
    original = TimelinePredictor.predict

    def interrupted(self, paths):
        for i, record in enumerate(original(self, paths)):
            if i == 7:  # a: 4 windows + video record; b: 2 of its windows
                raise KeyboardInterrupt
            yield record

    monkeypatch.setattr(TimelinePredictor, "predict", interrupted)
    result = _predict(folder, "-m", tiny_checkpoint, "--window", 2, "--stride", 1.5, "-o", out, "-b", 1)
    assert result.exit_code == 130 and "--resume" in result.output
    first = json.loads(out.read_text())  # valid JSON although interrupted
    assert [(Path(r["path"]).name, r["type"]) for r in first] == [("a.mp4", "window")] * 4 + [("a.mp4", "video")] + \
        [("b.mp4", "window")] * 2
    monkeypatch.setattr(TimelinePredictor, "predict", original)
    result = _predict(folder, "-m", tiny_checkpoint, "--window", 2, "--stride", 1.5, "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "tagged 1, failed 0, 1 already done" in " ".join(result.output.split())
    records = json.loads(out.read_text())
    assert records[:5] == first[:5]
    assert [(Path(r["path"]).name, r["type"], r["window"]) for r in records[5:]] == [
        ("b.mp4", "window", 0), ("b.mp4", "window", 1), ("b.mp4", "window", 2), ("b.mp4", "video", None)]


def test_srt_beside_each_video_by_default(clips, tiny_checkpoint, tmp_path, scripted):
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(clips / "a.mp4", folder / "a.mp4")
    result = _predict(folder / "a.mp4", "-m", tiny_checkpoint, "--window", 2, "--stride", 1.5, "--format", "srt", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.mp4", "a.srt"]
    assert (folder / "a.srt").read_text(encoding="utf-8").split("\n") == [
        "1", "00:00:00,000 --> 00:00:03,250", "archery (0.56)", "",
        "2", "00:00:03,250 --> 00:00:06,000", "baking (0.81)", "", ""]


def test_vtt_to_a_file_a_folder_and_resume(clips, tiny_checkpoint, tmp_path, scripted):
    result = _predict(clips / "a.mp4", "-m", tiny_checkpoint, "--window", 2, "--stride", 1.5, "-o",
                      tmp_path / "tags.vtt", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tags.vtt").read_text(encoding="utf-8").split("\n") == [
        "WEBVTT", "", "00:00:00.000 --> 00:00:03.250", "archery (0.56)", "",
        "00:00:03.250 --> 00:00:06.000", "baking (0.81)", "", ""]
    subs = tmp_path / "subs"
    args = [clips / "a.mp4", clips / "b.mp4", "-m", tiny_checkpoint, "--window", 2, "--format", "vtt", "-o", subs]
    assert _predict(*args, "-q").exit_code == 0
    assert sorted(p.name for p in subs.iterdir()) == ["a.vtt", "b.vtt"]
    assert (subs / "b.vtt").read_text(encoding="utf-8").split("\n")[:4] == [
        "WEBVTT", "", "00:00:00.000 --> 00:00:04.000", "archery (0.56)"]  # windows 0-2 s and 2-4 s merged
    (subs / "a.vtt").unlink()
    result = _predict(*args, "--resume")
    assert result.exit_code == 0 and "tagged 1, failed 0, 1 already done" in " ".join(result.output.split())
    assert sorted(p.name for p in subs.iterdir()) == ["a.vtt", "b.vtt"]


def test_srt_without_window_is_one_cue_for_the_whole_video(clips, tiny_checkpoint, tmp_path):
    out = tmp_path / "whole.srt"
    result = _predict(clips / "a.mp4", "-m", tiny_checkpoint, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[:2] == ["1", "00:00:00,000 --> 00:00:06,000"] and lines[3:] == ["", ""]
    label, score = lines[2].rsplit(" ", 1)
    assert label in TINY_LABELS and score.startswith("(0.") and score.endswith(")")


def test_usage_errors_exit_2(clips, tiny_checkpoint, tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for name in ("x.mp4", "x.avi"):
        shutil.copy(clips / "b.mp4", both / name)
    cases = [
        (["--window", 0], "--window must be a number of seconds greater than 0, got 0"),
        (["--window", 2, "--stride", -1], "--stride must be a number of seconds greater than 0, got -1"),
        (["--stride", 1], "--stride needs --window"),
        (["--format", "xml"], "unknown format 'xml': choose one of csv, json, jsonl, parquet, srt, vtt, otio, edl, "
                              "fcp7xml, chapters, ffmetadata"),
        ([clips / "b.mp4", "--window", 1, "-o", tmp_path / "x.srt"], "is one subtitle file, but there are 2 videos"),
        ([both, "--format", "srt", "--window", 1], "would both write their subtitles to"),
        (["--window", 1, "--preview", tmp_path / "sheets"], "--preview cannot be combined with --window"),
        (["--window", 1, "--clips", 2], "--clips/--crops cannot be combined with --window"),
    ]
    for args, message in cases:
        result = _predict(clips / "a.mp4", "-m", tiny_checkpoint, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "x.srt").exists() and not (tmp_path / "sheets").exists() and sorted(os.listdir(both)) == ["x.avi", "x.mp4"]


def test_torchrun_merge_keeps_the_timeline_columns_and_only_finished_videos(tmp_path):
    from stamcli.distributed import Distributed
    from stamcli.tagging import TaggingJob, _done_paths, _merge_parts, _part_path
    from stamcli.timeline import TIMELINE_COLUMNS
    from stamcli.writers import make_record, open_writer

    def record(path, kind, k=None):
        return make_record(path, predictions=[{"label": "archery", "index": 0, "score": 0.5}], model="m", type=kind,
                           window=k, start_s=0.0 if k is None else 2.0 * k, end_s=2.0 if k is not None else 4.0)

    out = tmp_path / "m.csv"
    with open_writer(out, "csv", top_k=1, columns=TIMELINE_COLUMNS) as writer:  # an earlier, interrupted run
        for rec in (record("x", "window", 0), record("x", "video"), record("y", "window", 0)):
            writer.write(rec)
    job = TaggingJob(paths=[], output=str(out), resume=True, window=2.0)
    assert _done_paths(job, "csv") == {"x"}  # y has no video record yet: it is redone
    for rank, path in enumerate(("y", "z")):
        with open_writer(_part_path(str(out), rank, 2), "csv", top_k=1, columns=TIMELINE_COLUMNS) as writer:
            for rec in (record(path, "window", 0), record(path, "window", 1), record(path, "video")):
                writer.write(rec)
    _merge_parts(job, "csv", 1, Distributed(0, 2), TIMELINE_COLUMNS)
    merged = read_records(out)
    assert [(r["path"], r["type"], r["window"]) for r in merged] == [
        ("x", "window", 0), ("x", "video", None), ("y", "window", 0), ("y", "window", 1), ("y", "video", None),
        ("z", "window", 0), ("z", "window", 1), ("z", "video", None)]
    assert merged[3]["start_s"] == 2.0 and sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_table_on_stdout_shows_each_window_and_the_video(clips, tiny_checkpoint):
    result = runner.invoke(app, ["predict", str(clips / "b.mp4"), "-m", str(tiny_checkpoint), "--window", "2", "-q",
                                 "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "b.mp4" in line]
    assert [row.split(" ok ")[0].split("b.mp4 ")[1].strip() for row in rows] == ["[0.0-2.0s]", "[2.0-4.0s]",
                                                                                "[share of time]"]
    assert rows[-1].split()[-1] == "1.000"  # one label covers the whole video with this model


def test_progress_shows_where_in_a_long_video_and_counts_videos():
    import io

    from rich.console import Console

    from stamcli.progress import RunProgress

    console = Console(file=io.StringIO(), width=150, force_terminal=True)
    with RunProgress(console) as progress:
        progress.start(2)
        task = progress._progress.tasks[0]
        progress.advance({"path": "/x/[match].mp4", "status": "ok", "type": "window", "start_s": 3600.0,
                          "end_s": 3725.4})
        assert task.completed == 0 and task.fields["where"] == r" \[match].mp4 at 1:02:05"
        assert progress._progress.columns[0].render(task).plain == "tagging [match].mp4 at 1:02:05"
        progress.advance({"path": "/x/[match].mp4", "status": "ok", "type": "event", "start_s": 0.0, "end_s": 9.0})
        assert task.completed == 0  # events are not videos
        progress.advance({"path": "/x/[match].mp4", "status": "ok", "type": "video"})
        assert task.completed == 1 and task.fields["where"] == ""


def test_decode_workers_read_several_videos_at_once_and_the_records_keep_the_input_order(clips, tiny_checkpoint,
                                                                                        monkeypatch):
    # One decode thread cannot feed a GPU: with --workers 3, three videos decode at once. Here the
    # first window of each of the first three videos is handed on only once all three have started.
    import threading

    from stamcli import load_checkpoint
    from stamcli.jobs import PredictOptions

    all_started = threading.Barrier(3, timeout=10)
    readers = []
    real_iter = TimelineReader.__iter__

    def iterate(reader):
        windows = real_iter(reader)
        first = next(windows)
        readers.append(reader)
        if len(readers) <= 3:
            all_started.wait()
        yield first
        yield from windows

    monkeypatch.setattr(TimelineReader, "__iter__", iterate)
    predictor = Predictor(load_checkpoint(tiny_checkpoint), PredictOptions(device="cpu", workers=3, batch_size=1))
    paths = [str(clips / name) for name in ("a.mp4", "b.mp4", "long.mp4", "a.mp4")]
    records = list(TimelinePredictor(predictor, window_s=2).predict(paths))
    videos = [(r["path"], r["status"]) for r in records if r["type"] == "video"]
    assert videos == [(path, "ok") for path in paths]
    groups = [r["path"] for r in records]  # each video's windows and then its record, video after video
    assert groups == [p for p, n in zip(paths, (3, 2, 8, 3)) for _ in range(n + 1)]


@pytest.mark.parametrize("streams", [1, 2])
def test_a_video_s_record_comes_with_its_last_window_before_the_next_video_is_read(clips, monkeypatch, streams):
    # a.mp4's 3 windows fill one batch: once it is scored, a.mp4's record comes too. It must not wait
    # for b.mp4's first window (Ctrl-C there would lose a finished video's record, and --resume redo
    # it), nor, with 2 model streams, for a batch after it to be read.
    import threading

    first, second = str(clips / "a.mp4"), str(clips / "b.mp4")
    got, seen = [], []  # the records the run yields; those it had yielded when b.mp4's first window was read
    released = threading.Event()  # set once a.mp4's record is out
    real_iter = TimelineReader.__iter__

    def iterate(reader):
        if reader.path == second:
            released.wait(timeout=60)  # only waits out the timeout where a.mp4's record waits for this window
            seen.extend((r["path"], r["type"]) for r in list(got))
        yield from real_iter(reader)

    monkeypatch.setattr(TimelineReader, "__iter__", iterate)
    predictor = Predictor(make_tiny_model(), PredictOptions(device="cpu", workers=1, streams=streams, batch_size=3))
    for record in TimelinePredictor(predictor, window_s=2).predict([first, second]):
        got.append(record)
        if record["type"] == "video" and record["path"] == first:
            released.set()
    assert seen == [(first, "window")] * 3 + [(first, "video")]
    assert [(r["path"], r["type"], r["window"], r["status"]) for r in got] == [
        *((first, "window", k, "ok") for k in range(3)), (first, "video", None, "ok"),
        *((second, "window", k, "ok") for k in range(2)), (second, "video", None, "ok")]
    assert [r["windows"] for r in got if r["type"] == "video"] == [3, 2]
