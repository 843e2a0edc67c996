"""Tests for stamcli.decode.clips: read_clip, read_views and ClipSpec give the sampled, preprocessed
frames whichever backend reads the video, and one-line errors for bad inputs.

Tests where the backend matters run with ``decoder`` = ``auto`` (PyAV, OpenCV where PyAV gives
up) and ``opencv`` (OpenCV alone), so that both backends meet every case below.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stamcli.decode import ClipSpec, Views, preprocess_crops, probe, read_clip, read_views, sample_indices
from stamcli.decode import backend
from stamcli.errors import StamError, UsageError, VideoError
from synthetic import (
    BANDS,
    band_frame,
    decode_clip_index,
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
needs_fixture = pytest.mark.skipif(not FIXTURE_CLIP.exists(), reason="shared fixtures not available")
_REAL_CAPTURE = cv2.VideoCapture


@pytest.fixture(params=["auto", "opencv"])
def decoder(request):
    """The default decoding (PyAV, OpenCV where PyAV gives up) and OpenCV alone."""
    return request.param


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    """Directory for generated videos, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("videos")
    write_index_video(root / "index.mp4", 50, 48, 64)  # frame k shows k
    write_video(root / "landscape.avi", [band_frame(32, 96)] * 5, fourcc="MJPG")
    write_video(root / "portrait.avi", [band_frame(96, 32)] * 5, fourcc="MJPG")
    return root


def clip_ids(clip) -> list[int]:
    """The source-frame numbers encoded in a clip's output frames."""
    return [decode_clip_index(f) for f in clip.frames]


def colour_name(rgb_chw: torch.Tensor) -> str:
    """The band colour an RGB (3, S, S) crop shows (mean of its central half)."""
    s = rgb_chw.shape[-1]
    mean = rgb_chw[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4].float().mean(dim=(1, 2)).numpy()
    return min(BANDS, key=lambda name: float(((mean - np.array(BANDS[name][::-1])) ** 2).sum()))


# ---------------------------------------------------------------------------- preprocessing


@needs_fixture
def test_fixture_matches_reference_preprocessing(decoder):
    expected = torch.load(FIXTURE_EXPECTED, weights_only=True)
    clip = read_clip(FIXTURE_CLIP, 8, decoder=decoder)
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


@pytest.mark.parametrize("hw", [(120, 200), (200, 120), (61, 97), (97, 61)])
def test_aspect_ratio_preserved(tmp_path_factory, hw, decoder):
    """A centred square stays square (not squashed) for landscape, portrait and odd sizes."""
    h, w = hw
    img = np.full((h, w, 3), 255, np.uint8)
    s = min(h, w) // 2
    t, l = (h - s) // 2, (w - s) // 2
    img[t : t + s, l : l + s] = 0
    path = write_video_av(tmp_path_factory.mktemp("square") / f"square_{h}x{w}.mkv", [img] * 3, 25, "ffv1",
                          pix_fmt="bgr0")
    clip = read_clip(path, 2, decoder=decoder)
    assert clip.frames.shape == (2, 3, 224, 224)
    assert (clip.width, clip.height) == (w, h)
    dark = clip.frames[0].float().mean(0) < 128
    rows, cols = dark.any(1).nonzero(), dark.any(0).nonzero()
    box_h, box_w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    side = s * 256 / min(h, w)
    assert abs(box_h - side) <= 3 and abs(box_w - side) <= 3, (box_h, box_w, side)


def test_read_clip_preprocesses_on_one_torch_thread_and_restores_the_count(tmp_path, monkeypatch, decoder):
    """Small per-frame resizes on one core: no OpenMP team fighting the model's for the cores."""
    from stamcli import parallel

    path = write_index_video(tmp_path / "v.mp4", 20)
    seen = []
    real = backend.preprocess_crops
    monkeypatch.setattr(backend, "preprocess_crops",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        clip = read_clip(path, 4, 32, decoder=decoder)
        expected = 1 if parallel.PER_THREAD_OMP else 2
        assert seen == [expected] * 4 and torch.get_num_threads() == 2
        assert [decode_clip_index(f) for f in clip.frames] == clip.indices
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- frame selection


@pytest.mark.parametrize("n,f", [(40, 8), (8, 8), (5, 8), (1, 8), (1, 1), (2, 1), (37, 16)])
def test_frames_are_the_sampled_ones(vids, n, f, decoder):
    path = vids / f"idx_{n}.mp4"
    if not path.exists():
        write_index_video(path, n, 48, 64, fourcc="mp4v")
    clip = read_clip(path, f, decoder=decoder)
    assert clip.frame_count == n
    assert clip.indices == sample_indices(n, f)
    assert clip_ids(clip) == clip.indices
    assert clip.frames.shape == (f, 3, 224, 224)


def test_threads_option_gives_same_frames(vids, decoder):
    path = write_index_video(vids / "long.mp4", 400, 48, 64, 25, codec="libx264", options={"g": "30"})
    a = read_clip(path, 4, threads=1, decoder=decoder)
    b = read_clip(path, 4, threads=2, decoder=decoder)
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
def test_codecs_and_containers(vids, name, kw, decoder):
    path = vids / name
    if not path.exists():
        write_index_video(path, 30, 48, 64, 25, **kw)
    clip = read_clip(path, 8, decoder=decoder)
    assert clip.frame_count == 30 and clip.indices == sample_indices(30, 8)
    assert clip_ids(clip) == clip.indices
    assert (clip.width, clip.height) == (64, 48)


@pytest.mark.parametrize("hw", [(61, 97), (200, 120)])
def test_odd_and_portrait_sizes(vids, hw, decoder):
    h, w = hw
    # OpenCV's writers round sizes down to even numbers: write odd sizes with PyAV/FFV1
    path = vids / f"size_{h}x{w}.mkv"
    if not path.exists():
        write_index_video(path, 12, h, w, codec="ffv1", pix_fmt="bgr0")
    clip = read_clip(path, 4, decoder=decoder)
    assert clip.frames.shape == (4, 3, 224, 224)
    assert (clip.width, clip.height) == (w, h)
    assert clip_ids(clip) == clip.indices == sample_indices(12, 4)


# ---------------------------------------------------------------------------- lying headers


def test_truncated_avi_header_overcounts(vids, decoder):
    full = write_index_video(vids / "t60.avi", 60, 48, 64, fourcc="MJPG")
    path = write_truncated(full, vids / "t60_cut.avi", 0.6)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    header = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    real = 0
    while cap.grab():
        real += 1
    cap.release()
    assert header == 60 and 0 < real < 60  # the header does lie
    clip = read_clip(path, 8, decoder=decoder)
    assert clip.frame_count == real
    assert clip.indices == sample_indices(real, 8) and max(clip.indices) < real
    assert clip_ids(clip) == clip.indices


def test_truncated_faststart_mp4(vids, decoder):
    """moov at the front lists all frames, but the data of the later ones is gone."""
    full = write_index_video(vids / "fs.mp4", 60, 48, 64, codec="libx264",
                             container_options={"movflags": "faststart"})
    path = write_truncated(full, vids / "fs_cut.mp4", 0.6)
    assert probe(path).frame_count == 60
    clip = read_clip(path, 8, decoder=decoder)
    assert 0 < clip.frame_count < 60
    assert max(clip.indices) < clip.frame_count
    assert clip_ids(clip) == clip.indices == sample_indices(clip.frame_count, 8)


# ---------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("ccw", [0, 90, 180, 270])
def test_rotation_metadata_is_applied_once(vids, ccw, decoder):
    src = quadrant_frame(48, 80)
    path = vids / f"rot{ccw}.mp4"
    if not path.exists():
        write_video_av(path, [src] * 4, 25, "libx264", rotation=ccw)
    upright = np.rot90(src, k=ccw // 90)  # how a player shows it (PyAV's angle is CCW)
    clip = read_clip(path, 2, decoder=decoder)
    assert clip.rotation == (360 - ccw) % 360
    assert (clip.height, clip.width) == upright.shape[:2]
    info = probe(path)
    assert (info.width, info.height, info.rotation) == (clip.width, clip.height, clip.rotation)
    assert quadrant_colors(clip.frames[0]) == quadrant_colors(upright[..., ::-1])
    if ccw:
        assert quadrant_colors(clip.frames[0]) != quadrant_colors(src[..., ::-1])


# ---------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def good_mp4(vids):
    return write_index_video(vids / "good.mp4", 30, 48, 64, fourcc="mp4v")


def _err(path, match, decoder="auto") -> VideoError:
    with pytest.raises(VideoError, match=match) as info:
        read_clip(path, 8, decoder=decoder)
    assert isinstance(info.value, StamError)
    msg = str(info.value)
    assert "\n" not in msg and os.path.basename(str(path)) in msg
    return info.value


def test_file_system_problems_are_found_before_any_backend(tmp_path):
    _err(tmp_path / "nope.mp4", "no such file")
    _err(write_empty(tmp_path / "empty.mp4"), r"empty \(0 bytes\)")
    (tmp_path / "x.mp4").mkdir()
    _err(tmp_path / "x.mp4", "is a directory")
    for decoder in ("pyav", "opencv"):
        _err(tmp_path / "nope.mp4", "no such file", decoder)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path, good_mp4):
    path = tmp_path / "locked.mp4"
    path.write_bytes(good_mp4.read_bytes())
    path.chmod(0)
    try:
        _err(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_text_file(tmp_path, decoder):
    _err(write_text(tmp_path / "notes.mp4"), "not a video file", decoder)


def test_truncated_mp4(tmp_path, good_mp4, decoder):
    _err(write_truncated(good_mp4, tmp_path / "cut.mp4", 0.5), "not a video file", decoder)


def test_header_but_no_frames(tmp_path, decoder):
    """A faststart mp4 cut just after its header: it opens, claims 30 frames, decodes none."""
    full = write_index_video(tmp_path / "fs.mp4", 30, 48, 64, codec="libx264",
                             container_options={"movflags": "faststart"})
    data = full.read_bytes()
    path = tmp_path / "header_only.mp4"
    path.write_bytes(data[: data.index(b"mdat") + 8])
    assert probe(path).frame_count == 30
    _err(path, "no decodable video frames", decoder)


@pytest.mark.parametrize("name,codec", [("tone.m4a", "aac"), ("tone.mp4", "aac"), ("tone.wav", "pcm_s16le")])
def test_audio_only(tmp_path, name, codec, decoder):
    _err(write_audio_only(tmp_path / name, codec=codec), "no video stream", decoder)


@pytest.mark.parametrize("name,kw", [("c.mp4", dict(fourcc="mp4v")), ("c.avi", dict(fourcc="MJPG")),
                                     ("c264.mp4", dict(codec="libx264"))])
@pytest.mark.parametrize("seed", [0, 1])
def test_corrupted_middle(tmp_path, name, kw, seed, decoder):
    full = write_index_video(tmp_path / f"full_{name}", 60, 48, 64, **kw)
    path = write_corrupted(full, tmp_path / name, 0.4, 0.2, seed=seed)
    try:
        clip = read_clip(path, 8, decoder=decoder)
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


def test_bad_arguments(good_mp4):
    with pytest.raises(ValueError):
        read_clip(good_mp4, 0)
    with pytest.raises(ValueError):
        read_clip(good_mp4, 8, 224, resize_size=200)
    with pytest.raises(UsageError, match="decoder 'nvdec' is not one of auto, pyav, opencv"):
        read_clip(good_mp4, 8, decoder="nvdec")


# ---------------------------------------------------------------------------- read_views


def test_one_view_is_exactly_read_clip(vids):
    plain = read_clip(vids / "index.mp4", 4, 32)
    views = read_views(vids / "index.mp4", 4, 32)
    assert isinstance(views, Views) and views.frames.shape == (1, 4, 3, 32, 32)
    assert torch.equal(views.frames[0], plain.frames) and views.indices == plain.indices
    assert (views.frame_count, views.fps, views.width, views.height) == (plain.frame_count, plain.fps, 64, 48)


def test_clips_take_the_offset_frames_in_one_decode(vids, decode_counter):
    views = read_views(vids / "index.mp4", 4, 32, clips=3, decoder=decode_counter.decoder)
    assert views.frames.shape == (3, 4, 3, 32, 32) and (views.clips, views.crops) == (3, 1)
    expected = [[2, 14, 27, 39], [6, 18, 31, 43], [10, 22, 35, 47]]
    assert [views.clip_indices(c) for c in range(3)] == expected
    assert views.indices == sum(expected, [])
    for c in range(3):  # the pixels really are those frames
        assert [decode_clip_index(frame) for frame in views.frames[c]] == expected[c]
    assert decode_counter.opened == 1 and decode_counter.retrieved == 12  # one pass, each wanted frame once


def test_repeated_frames_across_clips_are_decoded_once(vids, decode_counter):
    views = read_views(vids / "index.mp4", 8, 32, clips=4, decoder=decode_counter.decoder)  # 32 distinct of 50
    assert decode_counter.opened == 1 and decode_counter.retrieved == len(set(views.indices)) == 32
    short = read_views(vids / "index.mp4", 40, 32, clips=2, decoder=decode_counter.decoder)  # 80 samples of 50
    assert len(set(short.indices)) == 50 and decode_counter.retrieved == 32 + 50


@pytest.mark.parametrize("name, shape", [("landscape.avi", "wide"), ("portrait.avi", "tall")])
def test_three_crops_are_start_centre_end_of_the_longer_side(vids, decode_counter, name, shape):
    views = read_views(vids / name, 2, 32, crops=3, clips=2, decoder=decode_counter.decoder)
    assert views.frames.shape == (6, 2, 3, 32, 32) and (views.clips, views.crops) == (2, 3)
    for v in range(6):  # view v = clip v // 3, crop v % 3
        assert {colour_name(frame) for frame in views.frames[v]} == {["red", "green", "blue"][v % 3]}
    assert decode_counter.opened == 1
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


# ---------------------------------------------------------------------------- ClipSpec


@pytest.mark.parametrize("decoder", ["auto", "pyav", "opencv"])
def test_clip_spec_pickles_and_reads_what_read_clip_and_read_views_read(vids, decoder):
    path = vids / "index.mp4"
    one, many = ClipSpec(4, 32, decoder=decoder), ClipSpec(4, 32, clips=2, crops=3, decoder=decoder, threads=1)
    for spec in (one, many):
        copy = pickle.loads(pickle.dumps(spec))
        assert copy == spec and hash(copy) == hash(spec)
    clip, expected = pickle.loads(pickle.dumps(one)).read(path), read_clip(path, 4, 32, decoder=decoder)
    assert type(clip) is type(expected) and torch.equal(clip.frames, expected.frames)
    assert (clip.indices, clip.decoder) == (expected.indices, "opencv" if decoder == "opencv" else "pyav")
    views = pickle.loads(pickle.dumps(many)).read(path)
    expected = read_views(path, 4, 32, clips=2, crops=3, decoder=decoder)
    assert isinstance(views, Views) and views.frames.shape == (6, 4, 3, 32, 32) and many.views == 6
    assert torch.equal(views.frames, expected.frames) and views.indices == expected.indices


def test_clip_spec_checks_its_fields():
    assert ClipSpec(8, decoder="OpenCV").decoder == "opencv"
    with pytest.raises(UsageError, match="decoder 'nvdec' is not one of auto, pyav, opencv"):
        ClipSpec(8, decoder="nvdec")
    for bad in (dict(num_frames=0), dict(num_frames=8, clips=0), dict(num_frames=8, crops=2)):
        with pytest.raises(ValueError, match="need num_frames, img_size, clips >= 1 and crops in"):
            ClipSpec(**bad)
    with pytest.raises(AttributeError):
        ClipSpec(8).decoder = "pyav"  # frozen
