"""Tests for stamcli.video: sampling, preprocessing, decoding strategies and bad inputs."""

from __future__ import annotations

import math
import os
import tracemalloc
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stamcli import video
from stamcli.errors import StamError, VideoError
from stamcli.video import SEEK_MIN_GAP, preprocess_frame, probe, read_clip, resize_size_for, sample_indices
from synthetic import (
    decode_clip_index,
    index_frame,
    quadrant_colors,
    quadrant_frame,
    write_audio_only,
    write_corrupted,
    write_empty,
    write_index_video,
    write_text,
    write_truncated,
    write_video,
    write_video_av,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
FIXTURE_CLIP = FIXTURES / "clip_400x300_75f.mp4"
FIXTURE_EXPECTED = FIXTURES / "clip_400x300_75f_expected.pt"
_REAL_CAPTURE = cv2.VideoCapture
needs_fixture = pytest.mark.skipif(not FIXTURE_CLIP.exists(), reason="shared fixtures not available")


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    """Directory for generated videos, shared by the tests of this module."""
    return tmp_path_factory.mktemp("videos")


def clip_ids(clip) -> list[int]:
    """The source-frame numbers encoded in a clip's output frames."""
    return [decode_clip_index(f) for f in clip.frames]


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


@pytest.fixture(autouse=True, params=["auto", "opencv"])
def decoder(request, monkeypatch):
    """Every test runs with the default decoding (PyAV, OpenCV where PyAV gives up) and with
    OpenCV alone (``STAM_DECODER=opencv``), so that both paths meet every case below."""
    monkeypatch.setenv("STAM_DECODER", request.param)
    return request.param


@pytest.fixture
def opencv_only(monkeypatch):
    """Read with OpenCV alone (``STAM_DECODER=opencv``): for tests of the OpenCV path's own logic."""
    monkeypatch.setenv("STAM_DECODER", "opencv")


@pytest.fixture
def spy(monkeypatch, opencv_only):
    """Patch cv2.VideoCapture for stamcli.video (OpenCV alone reads); ``spy.lies`` is applied to
    new captures."""
    real_cls = cv2.VideoCapture

    class Factory:
        lies: dict = {}

        def __call__(self, *a, **k):
            return SpyCapture(real_cls(*a, **k), self.lies)

        def total(self, key):
            return sum(c.calls[key] for c in SpyCapture.instances)

    SpyCapture.instances = []
    factory = Factory()
    monkeypatch.setattr(video.cv2, "VideoCapture", factory)
    yield factory
    SpyCapture.instances = []


# ---------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 75, 100, 251, 1000, 12345])
@pytest.mark.parametrize("f", [1, 2, 3, 8, 16, 32, 64])
def test_sample_indices_formula(n, f):
    got = sample_indices(n, f)
    want = [min(math.floor((i + Fraction(1, 2)) * n / f), n - 1) for i in range(f)]
    assert got == want
    assert len(got) == f and all(0 <= k < n for k in got) and got == sorted(got)
    if n >= f:
        assert len(set(got)) == f  # no repeats unless the video is shorter than F


def test_sample_indices_examples():
    assert sample_indices(1, 8) == [0] * 8
    assert sample_indices(10, 1) == [5]
    assert sample_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_indices(300, 8) == [18, 56, 93, 131, 168, 206, 243, 281]
    with pytest.raises(ValueError):
        sample_indices(0, 8)
    with pytest.raises(ValueError):
        sample_indices(5, 0)


@needs_fixture
def test_sample_indices_fixture():
    expected = torch.load(FIXTURE_EXPECTED, weights_only=True)
    assert sample_indices(75, 8) == expected["indices"].tolist()


def test_resize_size_for():
    assert resize_size_for(224) == 256
    assert resize_size_for(112) == 128
    assert resize_size_for(384) == 438  # int(384 / 0.875) = int(438.86)
    assert all(resize_size_for(s) == int(s / 0.875) for s in range(1, 1000))


# ---------------------------------------------------------------------------- preprocessing


@needs_fixture
def test_fixture_matches_reference_preprocessing():
    expected = torch.load(FIXTURE_EXPECTED, weights_only=True)
    clip = read_clip(FIXTURE_CLIP, 8)
    assert clip.indices == expected["indices"].tolist() == [4, 14, 23, 32, 42, 51, 60, 70]
    assert clip.frames.shape == (8, 3, 224, 224) and clip.frames.dtype == torch.uint8
    assert clip.frames.is_contiguous()
    diff = (clip.frames.float() - expected["frames_uint8"].float()).abs()
    mad = diff.mean().item()
    # measured 0.0002 (torch uint8 antialiased bilinear == PIL's filter); float interpolate
    # gives 0.025, cv2.INTER_AREA 0.19, cv2.INTER_LINEAR 0.38 (and far worse on big downscales)
    assert mad < 0.05, mad
    assert diff.max().item() <= 2
    assert (clip.frame_count, clip.fps, clip.width, clip.height, clip.rotation) == (75, 25.0, 400, 300, 0)
    assert clip.duration_s == pytest.approx(3.0)


@pytest.mark.parametrize("hw", [(48, 64), (61, 97), (200, 120), (300, 400), (720, 1280), (256, 256)])
def test_preprocess_frame_matches_pil(hw):
    """Same as the reference transform (PIL bilinear resize, centre crop) on any geometry."""
    Image = pytest.importorskip("PIL.Image")
    h, w = hw
    rng = np.random.default_rng(h * w)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.0)
    bgr[::4] = 255  # fine stripes: aliasing shows up if the downscale is not antialiased
    out = preprocess_frame(bgr, 224)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    nh, nw = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
    ref = np.asarray(Image.fromarray(bgr[..., ::-1].copy()).resize((nw, nh), Image.BILINEAR))
    top, left = int(round((nh - 224) / 2)), int(round((nw - 224) / 2))
    ref = torch.from_numpy(ref[top : top + 224, left : left + 224].copy()).permute(2, 0, 1)
    diff = (out.float() - ref.float()).abs()
    assert diff.mean().item() < 0.05 and diff.max().item() <= 2


def test_preprocess_is_rgb():
    bgr = np.zeros((60, 80, 3), np.uint8)
    bgr[..., 2] = 200  # red in BGR
    out = preprocess_frame(bgr)
    assert out[0].float().mean() == pytest.approx(200, abs=1)
    assert out[1].float().mean() == 0 and out[2].float().mean() == 0


@pytest.mark.parametrize("hw", [(120, 200), (200, 120), (61, 97), (97, 61)])
def test_aspect_ratio_preserved(vids, hw):
    """A centred square stays square (not squashed) for landscape, portrait and odd sizes."""
    h, w = hw
    img = np.full((h, w, 3), 255, np.uint8)
    s = min(h, w) // 2
    t, l = (h - s) // 2, (w - s) // 2
    img[t : t + s, l : l + s] = 0
    path = write_video_av(vids / f"square_{h}x{w}.mkv", [img] * 3, 25, "ffv1", pix_fmt="bgr0")
    clip = read_clip(path, 2)
    assert clip.frames.shape == (2, 3, 224, 224)
    assert (clip.width, clip.height) == (w, h)
    dark = clip.frames[0].float().mean(0) < 128
    rows, cols = dark.any(1).nonzero(), dark.any(0).nonzero()
    box_h, box_w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    side = s * 256 / min(h, w)
    assert abs(box_h - side) <= 3 and abs(box_w - side) <= 3, (box_h, box_w, side)


# ---------------------------------------------------------------------------- frame selection


@pytest.mark.parametrize("n,f", [(40, 8), (8, 8), (5, 8), (1, 8), (1, 1), (2, 1), (37, 16)])
def test_frames_are_the_sampled_ones(vids, n, f):
    path = write_index_video(vids / f"idx_{n}.mp4", n, 48, 64, fourcc="mp4v")
    clip = read_clip(path, f)
    assert clip.frame_count == n
    assert clip.indices == sample_indices(n, f)
    assert clip_ids(clip) == clip.indices
    assert clip.frames.shape == (f, 3, 224, 224)


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
    grab = read_clip(path, 8, seek_min_gap=math.inf)
    assert spy.total("seek") == 0
    assert spy.total("retrieve") == 8  # only sampled frames are converted
    assert spy.total("read") == 0
    seek = read_clip(path, 8, seek_min_gap=20)  # gaps are 50 frames: every step seeks
    assert spy.total("seek") >= 8
    always = read_clip(path, 8, seek_min_gap=0)
    for clip in (grab, seek, always):
        assert clip.frame_count == 400
        assert clip.indices == sample_indices(400, 8)
        assert clip_ids(clip) == clip.indices
    assert torch.equal(grab.frames, seek.frames) and torch.equal(grab.frames, always.frames)


def test_default_threshold_chooses_by_gap(long_mp4v, spy):
    assert SEEK_MIN_GAP > 50
    read_clip(long_mp4v, 8)  # gap 50 < SEEK_MIN_GAP: grab through
    assert spy.total("seek") == 0
    clip = read_clip(long_mp4v, 2)  # gap 200 >= SEEK_MIN_GAP: seek
    assert spy.total("seek") >= 1
    assert clip_ids(clip) == clip.indices == [100, 300]


def test_threads_option_gives_same_frames(long_h264):
    a = read_clip(long_h264, 4, threads=1)
    b = read_clip(long_h264, 4, threads=2)
    assert a.indices == b.indices and torch.equal(a.frames, b.frames)


CODECS = [
    ("mp4v.mp4", dict(fourcc="mp4v")),
    ("mjpg.avi", dict(fourcc="MJPG")),
    ("xvid.avi", dict(fourcc="XVID")),
    ("ffv1.avi", dict(fourcc="FFV1")),
    ("mp4v.mkv", dict(fourcc="mp4v")),
    ("mp4v.mov", dict(fourcc="mp4v")),
    ("h264.mp4", dict(codec="libx264")),
    ("vp8.webm", dict(codec="libvpx")),
    ("mjpeg.mkv", dict(codec="mjpeg")),
    ("ffv1_bgr0.mkv", dict(codec="ffv1", pix_fmt="bgr0")),
]


@pytest.mark.parametrize("name,kw", CODECS, ids=[c[0] for c in CODECS])
def test_codecs_and_containers(vids, name, kw):
    path = write_index_video(vids / name, 30, 48, 64, 25, **kw)
    clip = read_clip(path, 8)
    assert clip.frame_count == 30 and clip.indices == sample_indices(30, 8)
    assert clip_ids(clip) == clip.indices
    assert (clip.width, clip.height) == (64, 48)


@pytest.mark.parametrize("hw", [(61, 97), (200, 120)])
def test_odd_and_portrait_sizes(vids, hw):
    h, w = hw
    # OpenCV's writers round sizes down to even numbers: write odd sizes with PyAV/FFV1
    path = write_index_video(vids / f"size_{h}x{w}.mkv", 12, h, w, codec="ffv1", pix_fmt="bgr0")
    clip = read_clip(path, 4)
    assert clip.frames.shape == (4, 3, 224, 224)
    assert (clip.width, clip.height) == (w, h)
    assert clip_ids(clip) == clip.indices == sample_indices(12, 4)


# ---------------------------------------------------------------------------- lying headers


def test_truncated_avi_header_overcounts(vids):
    full = write_index_video(vids / "t60.avi", 60, 48, 64, fourcc="MJPG")
    path = write_truncated(full, vids / "t60_cut.avi", 0.6)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    header = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    real = 0
    while cap.grab():
        real += 1
    cap.release()
    assert header == 60 and 0 < real < 60  # the header does lie
    clip = read_clip(path, 8)
    assert clip.frame_count == real
    assert clip.indices == sample_indices(real, 8) and max(clip.indices) < real
    assert clip_ids(clip) == clip.indices


def test_truncated_faststart_mp4(vids):
    """moov at the front lists all frames, but the data of the later ones is gone."""
    full = write_index_video(vids / "fs.mp4", 60, 48, 64, codec="libx264",
                             container_options={"movflags": "faststart"})
    path = write_truncated(full, vids / "fs_cut.mp4", 0.6)
    assert probe(path).frame_count == 60
    clip = read_clip(path, 8)
    assert 0 < clip.frame_count < 60
    assert max(clip.indices) < clip.frame_count
    assert clip_ids(clip) == clip.indices == sample_indices(clip.frame_count, 8)


@pytest.mark.parametrize("lie", [0, -1, float("nan"), 1, 20, 39, 41, 80, 10**12])
@pytest.mark.parametrize("seek_min_gap", [math.inf, 0])
def test_lying_frame_count(vids, spy, lie, seek_min_gap):
    path = vids / "lie40.mp4"
    if not path.exists():
        write_index_video(path, 40, 48, 64, fourcc="mp4v")
    spy.lies = {cv2.CAP_PROP_FRAME_COUNT: lie}
    clip = read_clip(path, 8, seek_min_gap=seek_min_gap)
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


def test_variable_frame_rate(vfr_video):
    for gap in (math.inf, 0, 20, SEEK_MIN_GAP):
        clip = read_clip(vfr_video, 8, seek_min_gap=gap)
        assert clip.frame_count == 180
        assert clip_ids(clip) == clip.indices == sample_indices(180, 8)


def _planned(path, n, f=8, gap=0.0):
    """One planned pass of read_clip (no end-of-video check): indices, frames."""
    with video._capture(path) as cap:
        info = video._header(cap, path)
        indices, views = video._read_planned(cap, info, n or info.frame_count, f, 224, 256, gap, check_end=False)
        return indices, views[0]  # the one view of a plain read


def test_seeks_by_time_never_mislabel_frames(vfr_video):
    """Without the end check, the rate and timestamp checks alone must catch VFR seeks."""
    try:
        indices, frames = _planned(vfr_video, None)
    except video._PlanFailed:
        return
    assert [decode_clip_index(f) for f in frames] == indices


def test_seek_refused_is_detected(long_mp4v, monkeypatch, opencv_only):
    class NoSeek(SpyCapture):
        def set(self, prop, value):
            return False if prop == cv2.CAP_PROP_POS_FRAMES else self.real.set(prop, value)

    monkeypatch.setattr(video.cv2, "VideoCapture", lambda *a, **k: NoSeek(_REAL_CAPTURE(*a, **k)))
    with pytest.raises(video._PlanFailed, match="seek to 25 failed"):
        _planned(long_mp4v, 400)
    clip = read_clip(long_mp4v, 8, seek_min_gap=0)  # falls back to grabbing
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


def test_seek_to_wrong_position_is_detected(long_mp4v, monkeypatch, opencv_only):
    class WrongPos(SpyCapture):
        def get(self, prop):
            value = self.real.get(prop)
            return value + 1 if prop == cv2.CAP_PROP_POS_FRAMES else value

    monkeypatch.setattr(video.cv2, "VideoCapture", lambda *a, **k: WrongPos(_REAL_CAPTURE(*a, **k)))
    with pytest.raises(video._PlanFailed, match="seek to 25 failed"):
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
    info = video.VideoInfo("fake", len(times), 25.0, 64, 48, 0, "")
    return video._Reader(FakeCapture(times), info, gap)


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
    with pytest.raises(video._PlanFailed, match="variable frame rate"):
        r.goto(60)

    # a seek that lands on a frame with the wrong timestamp
    r = _fake_reader(regular[:50] + [t + 200.0 for t in regular[50:]])
    with pytest.raises(video._PlanFailed, match="landed elsewhere"):
        r.goto(60)

    # the video ends early or goes on past n
    r = _fake_reader(regular[:60])
    with pytest.raises(video._PlanFailed, match="no frame"):
        r.goto(70)
    r = _fake_reader(regular)
    r.goto(20)
    with pytest.raises(video._PlanFailed, match="more than 90 frames"):
        r.check_end(90)


def test_seek_landing_elsewhere_is_detected(long_mp4v, monkeypatch, opencv_only):
    monkeypatch.setattr(video.cv2, "VideoCapture", lambda *a, **k: EarlySeek(_REAL_CAPTURE(*a, **k)))
    with pytest.raises(video._PlanFailed, match="landed elsewhere"):
        _planned(long_mp4v, 400)


def test_seek_landing_elsewhere_falls_back(long_mp4v, monkeypatch, opencv_only):
    SpyCapture.instances = []
    monkeypatch.setattr(video.cv2, "VideoCapture", lambda *a, **k: EarlySeek(_REAL_CAPTURE(*a, **k)))
    clip = read_clip(long_mp4v, 8, seek_min_gap=0)
    assert sum(c.calls["seek"] for c in SpyCapture.instances) >= 1
    assert len(SpyCapture.instances) == 3  # planned read, counting pass, grab-only read
    assert clip_ids(clip) == clip.indices == sample_indices(400, 8)
    SpyCapture.instances = []


# ---------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("ccw", [0, 90, 180, 270])
def test_rotation_metadata_is_applied_once(vids, ccw):
    src = quadrant_frame(48, 80)
    path = write_video_av(vids / f"rot{ccw}.mp4", [src] * 4, 25, "libx264", rotation=ccw)
    upright = np.rot90(src, k=ccw // 90)  # how a player shows it (PyAV's angle is CCW)
    clip = read_clip(path, 2)
    assert clip.rotation == (360 - ccw) % 360
    assert (clip.height, clip.width) == upright.shape[:2]
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (clip.width, clip.height, clip.rotation)
    assert quadrant_colors(clip.frames[0]) == quadrant_colors(upright[..., ::-1])
    if ccw:
        assert quadrant_colors(clip.frames[0]) != quadrant_colors(src[..., ::-1])


def test_rotation_left_to_opencv_when_auto_cannot_be_disabled(vids, spy):
    src = quadrant_frame(48, 80)
    path = write_video_av(vids / "rot90b.mp4", [src] * 2, 25, "libx264", rotation=90)
    spy.lies = {cv2.CAP_PROP_ORIENTATION_AUTO: 1}  # set() refuses, get() says still on
    clip = read_clip(path, 1)
    assert clip.rotation == 0  # we do not rotate; OpenCV does
    assert quadrant_colors(clip.frames[0]) == quadrant_colors(np.rot90(src)[..., ::-1])


def test_rotation_helper():
    img = quadrant_frame(40, 60)
    assert np.array_equal(video._rotate(img, 90), np.rot90(img, -1))
    assert np.array_equal(video._rotate(img, 180), np.rot90(img, 2))
    assert np.array_equal(video._rotate(img, 270), np.rot90(img, 1))
    assert video._rotate(img, 0) is img


# ---------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def good_mp4(vids):
    return write_index_video(vids / "good.mp4", 30, 48, 64, fourcc="mp4v")


def _err(path, match) -> VideoError:
    with pytest.raises(VideoError, match=match) as info:
        read_clip(path, 8)
    assert isinstance(info.value, StamError)
    msg = str(info.value)
    assert "\n" not in msg and os.path.basename(str(path)) in msg
    return info.value


def test_missing_file(tmp_path):
    _err(tmp_path / "nope.mp4", "no such file")


def test_empty_file(tmp_path):
    _err(write_empty(tmp_path / "empty.mp4"), r"empty \(0 bytes\)")


def test_directory(tmp_path):
    (tmp_path / "x.mp4").mkdir()
    _err(tmp_path / "x.mp4", "is a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path, good_mp4):
    path = tmp_path / "locked.mp4"
    path.write_bytes(good_mp4.read_bytes())
    path.chmod(0)
    try:
        _err(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_text_file(tmp_path):
    _err(write_text(tmp_path / "notes.mp4"), "not a video file")


def test_truncated_mp4(tmp_path, good_mp4):
    _err(write_truncated(good_mp4, tmp_path / "cut.mp4", 0.5), "not a video file")


def test_header_but_no_frames(tmp_path):
    """A faststart mp4 cut just after its header: it opens, claims 30 frames, decodes none."""
    full = write_index_video(tmp_path / "fs.mp4", 30, 48, 64, codec="libx264",
                             container_options={"movflags": "faststart"})
    data = full.read_bytes()
    path = tmp_path / "header_only.mp4"
    path.write_bytes(data[: data.index(b"mdat") + 8])
    assert probe(path).frame_count == 30
    _err(path, "no decodable video frames")


@pytest.mark.parametrize("name,codec", [("tone.m4a", "aac"), ("tone.mp4", "aac"), ("tone.wav", "pcm_s16le")])
def test_audio_only(tmp_path, name, codec):
    _err(write_audio_only(tmp_path / name, codec=codec), "no video stream")


@pytest.mark.parametrize("name,kw", [("c.mp4", dict(fourcc="mp4v")), ("c.avi", dict(fourcc="MJPG")),
                                     ("c264.mp4", dict(codec="libx264"))])
@pytest.mark.parametrize("seed", [0, 1])
def test_corrupted_middle(tmp_path, name, kw, seed):
    full = write_index_video(tmp_path / f"full_{name}", 60, 48, 64, **kw)
    path = write_corrupted(full, tmp_path / name, 0.4, 0.2, seed=seed)
    try:
        clip = read_clip(path, 8)
    except VideoError as exc:
        assert "\n" not in str(exc)
        return
    assert 1 <= clip.frame_count <= 60
    assert clip.indices == sample_indices(clip.frame_count, 8)
    assert clip.frames.shape == (8, 3, 224, 224)
    readable = []
    for f in clip.frames:
        try:
            readable.append(decode_clip_index(f))
        except ValueError:
            pass  # a damaged frame
    # frames that still show their number come in order and before the original end
    assert readable == sorted(readable) and all(0 <= k < 60 for k in readable)
    assert len(readable) >= 4


def test_probe(good_mp4, tmp_path):
    info = probe(good_mp4)
    assert (info.frame_count, info.fps, info.width, info.height, info.rotation) == (30, 25.0, 64, 48, 0)
    assert info.codec.lower() in ("mp4v", "fmp4")
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "missing.mp4")


def test_bad_arguments(good_mp4):
    with pytest.raises(ValueError):
        read_clip(good_mp4, 0)
    with pytest.raises(ValueError):
        read_clip(good_mp4, 8, 224, resize_size=200)


# ---------------------------------------------------------------------------- memory


def test_long_video_memory_is_bounded(vids, spy):
    n = 2000
    path = write_video(vids / "long2000.avi", (index_frame(i, 48, 64) for i in range(n)), 25, "MJPG")
    tracemalloc.start()
    try:
        clip = read_clip(path, 8, seek_min_gap=math.inf)  # grab through all 2000 frames
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert clip_ids(clip) == clip.indices == sample_indices(n, 8)
    assert spy.total("retrieve") == 8 and spy.total("read") == 0
    assert spy.total("grab") == n + 1  # every frame once, plus the end-of-video check
    # 2000 decoded 64x48 BGR frames would be 18 MB of numpy arrays; we hold a handful
    assert peak < 2_000_000, peak  # measured 12 kB (one decoded frame)


def test_read_clip_preprocesses_on_one_torch_thread_and_restores_the_count(tmp_path, monkeypatch):
    """Small per-frame resizes on one core: no OpenMP team fighting the model's for the cores."""
    import torch

    from stamcli import parallel, video

    path = write_index_video(tmp_path / "v.mp4", 20)
    seen = []
    real = video.preprocess_crops
    monkeypatch.setattr(video, "preprocess_crops", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        clip = video.read_clip(path, 4, 32)
        expected = 1 if parallel.PER_THREAD_OMP else 2
        assert seen == [expected] * 4 and torch.get_num_threads() == 2
        assert [decode_clip_index(f) for f in clip.frames] == clip.indices
    finally:
        torch.set_num_threads(before)
