"""Tests for stamcli.decode.opencv: grabs and verified seeks, lying headers, probe, FrameStream.

Everything here reads with OpenCV alone (``decoder="opencv"``); what both backends must do alike
is in test_decode_clips.py.
"""

from __future__ import annotations

import math
import tracemalloc
from fractions import Fraction
from unittest import mock

import cv2
import numpy as np
import pytest
import torch

from stamcli.decode import SEEK_MIN_GAP, FrameStream, VideoInfo, probe, read_clip, sample_indices
from stamcli.decode import opencv
from stamcli.decode.backend import Request
from stamcli.errors import VideoError
from synthetic import decode_clip_index, index_frame, quadrant_colors, quadrant_frame, write_index_video, write_video, \
    write_video_av

_REAL_CAPTURE = cv2.VideoCapture


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    """Directory for generated videos, shared by the tests of this module."""
    return tmp_path_factory.mktemp("videos")


def clip_ids(clip) -> list[int]:
    """The source-frame numbers encoded in a clip's output frames."""
    return [decode_clip_index(f) for f in clip.frames]


def read(path, num_frames, **kwargs):
    """:func:`read_clip` with OpenCV alone."""
    return read_clip(path, num_frames, decoder="opencv", **kwargs)


class SpyCapture:
    """Wraps a real cv2.VideoCapture, counting calls and optionally lying about properties."""

    instances: list["SpyCapture"] = []

    def __init__(self, real, lies=None):
        self.real, self.lies = real, dict(lies or {})
        self.calls = {"grab": 0, "retrieve": 0, "read": 0, "seek": 0}
        SpyCapture.instances.append(self)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def grab(self):
        self.calls["grab"] += 1
        return self.real.grab()

    def retrieve(self, *a):
        self.calls["retrieve"] += 1
        return self.real.retrieve(*a)

    def read(self, *a):
        self.calls["read"] += 1
        return self.real.read(*a)

    def set(self, prop, value):
        if prop == cv2.CAP_PROP_POS_FRAMES:
            self.calls["seek"] += 1
        if prop in self.lies and prop != cv2.CAP_PROP_POS_FRAMES:
            return False
        return self.real.set(prop, value)

    def get(self, prop):
        return self.lies[prop] if prop in self.lies else self.real.get(prop)


@pytest.fixture
def spy(monkeypatch):
    """Patch cv2.VideoCapture; ``spy.lies`` is applied to new captures."""

    class Factory:
        lies: dict = {}

        def __call__(self, *a, **k):
            return SpyCapture(_REAL_CAPTURE(*a, **k), self.lies)

        def total(self, key):
            return sum(c.calls[key] for c in SpyCapture.instances)

    SpyCapture.instances = []
    factory = Factory()
    monkeypatch.setattr(opencv.cv2, "VideoCapture", factory)
    yield factory
    SpyCapture.instances = []


# ---------------------------------------------------------------------------- grab or seek


@pytest.fixture(scope="module")
def long_h264(vids):
    """400 frames of H.264 with B-frames and a 30-frame GOP."""
    return write_index_video(vids / "long.mp4", 400, 48, 64, 25, codec="libx264", options={"g": "30"})


@pytest.fixture(scope="module")
def long_mp4v(vids):
    return write_index_video(vids / "long_mp4v.mp4", 400, 48, 64, 25, fourcc="mp4v")


@pytest.mark.parametrize("which", ["long_h264", "long_mp4v"])
def test_seek_and_grab_paths_agree(request, spy, which):
    path = request.getfixturevalue(which)
    grab = read(path, 8, seek_min_gap=math.inf)
    assert spy.total("seek") == 0
    assert spy.total("retrieve") == 8  # only sampled frames are converted
    assert spy.total("read") == 0
    seek = read(path, 8, seek_min_gap=20)  # gaps are 50 frames: every step seeks
    assert spy.total("seek") >= 8
    always = read(path, 8, seek_min_gap=0)
    for clip in (grab, seek, always):
        assert clip.frame_count == 400 and clip.decoder == "opencv"
        assert clip.indices == sample_indices(400, 8)
        assert clip_ids(clip) == clip.indices
    assert torch.equal(grab.frames, seek.frames) and torch.equal(grab.frames, always.frames)


def test_default_threshold_chooses_by_gap(long_mp4v, spy):
    assert SEEK_MIN_GAP > 50
    read(long_mp4v, 8)  # gap 50 < SEEK_MIN_GAP: grab through
    assert spy.total("seek") == 0
    clip = read(long_mp4v, 2)  # gap 200 >= SEEK_MIN_GAP: seek
    assert spy.total("seek") >= 1
    assert clip_ids(clip) == clip.indices == [100, 300]


# ---------------------------------------------------------------------------- lying headers


@pytest.mark.parametrize("lie", [0, -1, float("nan"), 1, 20, 39, 41, 80, 10**12])
@pytest.mark.parametrize("seek_min_gap", [math.inf, 0])
def test_lying_frame_count(vids, spy, lie, seek_min_gap):
    path = vids / "lie40.mp4"
    if not path.exists():
        write_index_video(path, 40, 48, 64, fourcc="mp4v")
    spy.lies = {cv2.CAP_PROP_FRAME_COUNT: lie}
    clip = read(path, 8, seek_min_gap=seek_min_gap)
    assert clip.frame_count == 40
    assert clip.indices == sample_indices(40, 8)
    assert clip_ids(clip) == clip.indices


VFR_PTS = {  # in 1/30 s
    "slow_then_fast": [3 * i for i in range(60)] + [180 + i for i in range(120)],  # 10 fps, 30 fps
    "fast_then_slow": list(range(30)) + [30 + 3 * i for i in range(150)],  # 30 fps, 10 fps
}


@pytest.fixture(scope="module", params=[(p, e) for p in VFR_PTS for e in ("mp4", "mkv")],
                ids=lambda p: f"{p[0]}.{p[1]}")
def vfr_video(vids, request):
    """180 frames at a variable frame rate.  OpenCV seeks by time (frame / fps), which lands on
    the wrong frames here; in mkv the header count (duration x fps) is also wrong."""
    kind, ext = request.param
    return write_index_video(vids / f"vfr_{kind}.{ext}", 180, 48, 64, 30, codec="libx264",
                             pts=VFR_PTS[kind], time_base=Fraction(1, 30))


@pytest.mark.parametrize("decoder", ["auto", "opencv"])
def test_variable_frame_rate(vfr_video, decoder):
    for gap in (math.inf, 0, 20, SEEK_MIN_GAP):
        clip = read_clip(vfr_video, 8, seek_min_gap=gap, decoder=decoder)
        assert clip.frame_count == 180
        assert clip_ids(clip) == clip.indices == sample_indices(180, 8)


class _SeenReader(opencv._Reader):
    """The OpenCV reader, keeping the last one made (how many seeks it did, whether it gave up seeking)."""

    last = None

    def __init__(self, *args):
        super().__init__(*args)
        _SeenReader.last = self


def _planned(path, n, f=8, gap=0.0):
    """One planned pass of read_clip (no end-of-video check): indices, frames (the reader made is
    ``_SeenReader.last``)."""
    with opencv._capture(path) as cap, mock.patch.object(opencv, "_Reader", _SeenReader):
        info = opencv._header(cap, path)
        indices, views = opencv._read_planned(cap, info, n or info.frame_count, Request(f, 224, 256), gap,
                                              check_end=False)
        return indices, views[0]  # the one view of a plain read


#: How a planned read with the true count (180) and seeks allowed at any gap goes, per video: the
#: first frames tick at a rate other than the header's, so the reader never seeks; or it seeks and
#: the timestamp check finds a seek that landed elsewhere.
VFR_PLAN = {
    "vfr_slow_then_fast.mp4": "never seeks", "vfr_slow_then_fast.mkv": "never seeks",
    "vfr_fast_then_slow.mp4": "never seeks", "vfr_fast_then_slow.mkv": "seek to 33 landed elsewhere",
}


def test_seeks_by_time_never_mislabel_frames(vfr_video):
    """Without the end check, the rate and timestamp checks alone must catch VFR seeks."""
    expected = VFR_PLAN[vfr_video.name]
    if expected == "never seeks":
        indices, frames = _planned(vfr_video, 180)
        assert _SeenReader.last.seeks == 0 and _SeenReader.last.seek_min_gap == math.inf
        assert [decode_clip_index(f) for f in frames] == indices == sample_indices(180, 8)
    else:
        with pytest.raises(opencv._PlanFailed, match=f"^{expected}$"):
            _planned(vfr_video, 180)


def test_seek_refused_is_detected(long_mp4v, monkeypatch):
    class NoSeek(SpyCapture):
        def set(self, prop, value):
            return False if prop == cv2.CAP_PROP_POS_FRAMES else self.real.set(prop, value)

    monkeypatch.setattr(opencv.cv2, "VideoCapture", lambda *a, **k: NoSeek(_REAL_CAPTURE(*a, **k)))
    with pytest.raises(opencv._PlanFailed, match="seek to 25 failed"):
        _planned(long_mp4v, 400)
    clip = read(long_mp4v, 8, seek_min_gap=0)  # falls back to grabbing
    assert clip_ids(clip) == clip.indices == sample_indices(400, 8)


class EarlySeek(SpyCapture):
    """Seeks report the wanted position but land 3 frames early (cf. OpenCV issue #4890)."""

    offset = 0

    def set(self, prop, value):
        if prop == cv2.CAP_PROP_POS_FRAMES:
            self.calls["seek"] += 1
            self.offset = min(3, int(value))
            return self.real.set(prop, value - self.offset)
        return self.real.set(prop, value)

    def get(self, prop):
        value = self.real.get(prop)
        return value + self.offset if prop == cv2.CAP_PROP_POS_FRAMES else value


def test_seek_to_wrong_position_is_detected(long_mp4v, monkeypatch):
    class WrongPos(SpyCapture):
        def get(self, prop):
            value = self.real.get(prop)
            return value + 1 if prop == cv2.CAP_PROP_POS_FRAMES else value

    monkeypatch.setattr(opencv.cv2, "VideoCapture", lambda *a, **k: WrongPos(_REAL_CAPTURE(*a, **k)))
    with pytest.raises(opencv._PlanFailed, match="seek to 25 failed"):
        _planned(long_mp4v, 400)


class FakeCapture:
    """A capture of ``len(times)`` frames with the given timestamps (ms) that seeks exactly."""

    def __init__(self, times, fps=25.0):
        self.times, self.fps, self.next, self.cur = list(times), fps, 0, None

    def grab(self):
        if self.next >= len(self.times):
            return False
        self.cur, self.next = self.next, self.next + 1
        return True

    def get(self, prop):
        if prop == cv2.CAP_PROP_POS_MSEC:
            return self.times[self.cur] if self.cur is not None else 0.0
        if prop == cv2.CAP_PROP_POS_FRAMES:
            return float(self.next)
        raise AssertionError(prop)

    def set(self, prop, value):
        assert prop == cv2.CAP_PROP_POS_FRAMES
        self.next = int(value)
        return True


def _fake_reader(times, gap=10):
    info = VideoInfo("fake", len(times), 25.0, 64, 48, 0, "")
    return opencv._Reader(FakeCapture(times), info, gap)


def test_reader_rate_checks_with_fake_capture():
    regular = [40.0 * i for i in range(100)]
    r = _fake_reader(regular)
    r.goto(50)  # 8 frames checked, then one seek
    r.goto(90)
    assert (r.seeks, r.pos) == (2, 91)
    r.check_end(100)

    # irregular at the start: never seek, grab through (still the right frames)
    r = _fake_reader([100.0 * i for i in range(100)])
    r.goto(50)
    assert (r.seeks, r.pos) == (0, 51)

    # regular at the start, slower from frame 32: the check before the second seek fails
    later = [40.0 * i for i in range(32)] + [1240.0 + 100.0 * i for i in range(1, 69)]
    r = _fake_reader(later)
    r.goto(30)
    assert r.seeks == 1
    with pytest.raises(opencv._PlanFailed, match="variable frame rate"):
        r.goto(60)

    # a seek that lands on a frame with the wrong timestamp
    r = _fake_reader(regular[:50] + [t + 200.0 for t in regular[50:]])
    with pytest.raises(opencv._PlanFailed, match="landed elsewhere"):
        r.goto(60)

    # the video ends early or goes on past n
    r = _fake_reader(regular[:60])
    with pytest.raises(opencv._PlanFailed, match="no frame"):
        r.goto(70)
    r = _fake_reader(regular)
    r.goto(20)
    with pytest.raises(opencv._PlanFailed, match="more than 90 frames"):
        r.check_end(90)


def test_seek_landing_elsewhere_is_detected(long_mp4v, monkeypatch):
    monkeypatch.setattr(opencv.cv2, "VideoCapture", lambda *a, **k: EarlySeek(_REAL_CAPTURE(*a, **k)))
    with pytest.raises(opencv._PlanFailed, match="landed elsewhere"):
        _planned(long_mp4v, 400)


def test_seek_landing_elsewhere_falls_back(long_mp4v, monkeypatch):
    SpyCapture.instances = []
    monkeypatch.setattr(opencv.cv2, "VideoCapture", lambda *a, **k: EarlySeek(_REAL_CAPTURE(*a, **k)))
    clip = read(long_mp4v, 8, seek_min_gap=0)
    assert sum(c.calls["seek"] for c in SpyCapture.instances) >= 1
    assert len(SpyCapture.instances) == 3  # planned read, counting pass, grab-only read
    assert clip_ids(clip) == clip.indices == sample_indices(400, 8)
    SpyCapture.instances = []


# ---------------------------------------------------------------------------- rotation, probe


def test_rotation_left_to_opencv_when_auto_cannot_be_disabled(vids, spy):
    src = quadrant_frame(48, 80)
    path = write_video_av(vids / "rot90b.mp4", [src] * 2, 25, "libx264", rotation=90)
    spy.lies = {cv2.CAP_PROP_ORIENTATION_AUTO: 1}  # set() refuses, get() says still on
    clip = read(path, 1)
    assert clip.rotation == 0  # we do not rotate; OpenCV does
    assert quadrant_colors(clip.frames[0]) == quadrant_colors(np.rot90(src)[..., ::-1])


def test_probe(vids, tmp_path):
    good = write_index_video(vids / "good.mp4", 30, 48, 64, fourcc="mp4v")
    info = probe(good)
    assert (info.frame_count, info.fps, info.width, info.height, info.rotation) == (30, 25.0, 64, 48, 0)
    assert info.codec.lower() in ("mp4v", "fmp4")
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "missing.mp4")


# ---------------------------------------------------------------------------- memory, FrameStream


def test_long_video_memory_is_bounded(vids, spy):
    n = 2000
    path = write_video(vids / "long2000.avi", (index_frame(i, 48, 64) for i in range(n)), 25, "MJPG")
    tracemalloc.start()
    try:
        clip = read(path, 8, seek_min_gap=math.inf)  # grab through all 2000 frames
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert clip_ids(clip) == clip.indices == sample_indices(n, 8)
    assert spy.total("retrieve") == 8 and spy.total("read") == 0
    assert spy.total("grab") == n + 1  # every frame once, plus the end-of-video check
    # 2000 decoded 64x48 BGR frames would be 18 MB of numpy arrays; we hold a handful
    assert peak < 2_000_000, peak


def test_frame_stream_walks_every_frame_and_preprocesses_only_the_wanted(vids):
    path = write_index_video(vids / "stream.mp4", 30, 48, 64, fourcc="mp4v")
    with FrameStream(path, 32) as stream:
        assert (stream.info.frame_count, stream.info.fps) == (30, 25.0)
        got = list(stream.frames(lambda i: i % 10 == 3))
    assert [i for i, _ in got] == list(range(30)) and (stream.grabs, stream.retrieved) == (30, 3)
    kept = {i: frame for i, frame in got if frame is not None}
    assert sorted(kept) == [3, 13, 23] and all(decode_clip_index(f) == i for i, f in kept.items())
    assert torch.equal(kept[13], read(path, 1, img_size=32, sampler=lambda n, f: [13]).frames[0])
