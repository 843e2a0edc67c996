"""Tests for stamcli.decode.pyav: PyAV sparse decoding gives OpenCV's frames with less decoding,
and gives up (Unsupported) on every case it cannot do exactly."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from stamcli.decode import pyav, read_clip, read_views, sample_indices
from stamcli.decode.pyav import SparseDecoder, SparseFrameStream, Unsupported
from synthetic import (decode_clip_index, decode_index, index_frame, write_audio_only, write_index_video,
                       write_raw_h264, write_video_av)

pytestmark = pytest.mark.skipif(not pyav.available(), reason="PyAV missing or older than 14")


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    return tmp_path_factory.mktemp("sparse")


def facts(clip) -> tuple:
    return clip.frame_count, clip.fps, clip.width, clip.height, clip.rotation, clip.indices


def read_both(path, reader=read_clip, **kw):
    """``(auto, opencv)`` reads of ``path``."""
    return reader(path, decoder="auto", **kw), reader(path, decoder="opencv", **kw)


GOP30 = {"g": "30"}
CASES = [  # name, writer options: all read by PyAV
    ("h264.mp4", dict(codec="libx264")),  # B-frames, b-pyramid, one key frame
    ("h264_gop30.mp4", dict(codec="libx264", options=GOP30)),  # several clean key frames
    ("h264_open_gop.mp4", dict(codec="libx264", options={"g": "30", "x264-params": "open-gop=1"})),
    ("h264_open_gop.mkv", dict(codec="libx264", options={"g": "30", "x264-params": "open-gop=1"})),
    ("h264.mkv", dict(codec="libx264", options=GOP30)),
    ("hevc.mp4", dict(codec="libx265", options={"x265-params": "log-level=error"})),  # B-frames, b-pyramid
    ("mp4v.mp4", dict(fourcc="mp4v")),  # written by OpenCV
    ("mjpg.avi", dict(fourcc="MJPG")),
    ("xvid.avi", dict(fourcc="XVID")),
    ("vp8.webm", dict(codec="libvpx")),
    ("ffv1_bgr0.mkv", dict(codec="ffv1", pix_fmt="bgr0")),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_same_frames_and_facts_as_opencv(vids, name, kw):
    path = write_index_video(vids / name, 200, 48, 64, 25, **kw)
    fast, opencv = read_both(path, num_frames=8)
    assert (fast.decoder, opencv.decoder) == ("pyav", "opencv")
    assert facts(fast) == facts(opencv) == (200, 25.0, 64, 48, 0, sample_indices(200, 8))
    assert [decode_clip_index(f) for f in fast.frames] == fast.indices
    assert torch.equal(fast.frames, opencv.frames)


def test_a_video_with_sound(vids):
    """Kinetics clips have an audio track: its packets are not counted as frames."""
    import av

    video_only = write_index_video(vids / "silent.mp4", 100, 48, 64, 25, codec="libx264", options=GOP30)
    tone = write_audio_only(vids / "tone.m4a", seconds=4.0)
    path = vids / "with_sound.mp4"
    with av.open(str(video_only)) as v, av.open(str(tone)) as a, av.open(str(path), "w") as out:
        streams = {v.streams.video[0]: out.add_stream_from_template(v.streams.video[0]),
                   a.streams.audio[0]: out.add_stream_from_template(a.streams.audio[0])}
        packets = [p for src in (v, a) for p in src.demux() if p.size]
        for packet in sorted(packets, key=lambda p: float(p.dts * p.time_base)):
            packet.stream = streams[packet.stream]
            out.mux(packet)
    with av.open(str(path)) as check:
        assert (len(check.streams.video), len(check.streams.audio)) == (1, 1)
    fast, opencv = read_both(path, num_frames=8)
    assert fast.decoder == "pyav" and facts(fast) == facts(opencv) and fast.frame_count == 100
    assert [decode_clip_index(f) for f in fast.frames] == fast.indices
    assert torch.equal(fast.frames, opencv.frames)


def test_views_sampler_and_crop_match_opencv(vids):
    path = write_index_video(vids / "views.mp4", 120, 48, 64, 25, codec="libx264", options=GOP30)
    fast, opencv = read_both(path, reader=read_views, num_frames=4, clips=3, crops=3)
    assert fast.decoder == "pyav" and fast.indices == opencv.indices
    assert torch.equal(fast.frames, opencv.frames) and fast.frames.shape == (9, 4, 3, 224, 224)
    asked = []

    def crop(h, w):
        asked.append((h, w))
        return 4, 8, 32, 40

    sampler = lambda n, f: [n - 1 - i for i in range(f)]  # noqa: E731 - backwards, as augmentation may
    fast, opencv = read_both(path, num_frames=5, sampler=sampler, crop=crop)
    assert fast.decoder == "pyav" and fast.indices == opencv.indices == [119, 118, 117, 116, 115]
    assert torch.equal(fast.frames, opencv.frames)
    assert asked == [(48, 64), (48, 64)]  # once per read


@pytest.mark.parametrize("ccw", [90, 180, 270])
def test_rotation(vids, ccw):
    path = write_video_av(vids / f"rot{ccw}.mp4", [index_frame(i, 48, 64) for i in range(6)], 25, rotation=ccw)
    fast, opencv = read_both(path, num_frames=3)
    assert fast.decoder == "pyav" and fast.rotation == (360 - ccw) % 360
    assert facts(fast) == facts(opencv) and torch.equal(fast.frames, opencv.frames)
    assert (fast.width, fast.height) == ((48, 64) if ccw != 180 else (64, 48))


def test_variable_frame_rate_needs_no_fallback(vids):
    pts = list(range(30)) + [30 + 3 * i for i in range(150)]  # 30 fps, then 10 fps
    path = write_index_video(vids / "vfr.mp4", 180, 48, 64, 30, codec="libx264", pts=pts, time_base=Fraction(1, 30))
    fast, opencv = read_both(path, num_frames=8)
    assert fast.decoder == "pyav" and fast.frame_count == opencv.frame_count == 180
    assert [decode_clip_index(f) for f in fast.frames] == fast.indices == sample_indices(180, 8)
    assert torch.equal(fast.frames, opencv.frames)


def test_unwanted_non_reference_frames_are_not_decoded(vids):
    """x264's B-frames that nothing references are skipped: fewer frames come out of the decoder
    than packets go in, and the wanted ones are exactly the frames a full decode gives."""
    path = write_index_video(vids / "skip.mp4", 100, 48, 64, 25, codec="libx264")
    with SparseDecoder(path, threads=1) as decoder:
        wanted = sample_indices(100, 4)  # 12, 37, 62, 87
        got = dict(decoder.frames(wanted))
        assert sorted(got) == wanted and decoder.seeks == 0
        assert decoder.packets_read >= 88  # the decoder reads up to frame 87 and its reorder delay
        assert decoder.frames_decoded < decoder.packets_read - 20
        every = dict(decoder.frames(list(range(100))))
        assert decoder.frames_decoded == decoder.packets_read == 100
    assert all((got[k] == every[k]).all() for k in wanted)
    assert [decode_index(every[k]) for k in (0, 50, 99)] == [0, 50, 99]


def test_seeks_to_clean_key_frames_only(vids):
    path = write_index_video(vids / "gop30.mp4", 400, 48, 64, 25, codec="libx264", options=GOP30)
    with SparseDecoder(path, threads=1) as decoder:
        assert decoder.frame_count == 400 and len(decoder.clean_keys) >= 13
        got = dict(decoder.frames([20, 390]))
        assert decoder.seeks >= 1 and decoder.packets_read < 80  # not the 390 packets up to frame 390
        assert sorted(got) == [20, 390]
    with SparseDecoder(path, threads=1) as decoder:
        decoder_every = dict(decoder.frames(list(range(400))))
    assert (got[390] == decoder_every[390]).all() and (got[20] == decoder_every[20]).all()


def test_open_gop_key_frames_are_not_seek_targets(vids):
    """With open GOPs, frames after an I-frame in decode order may be shown before it (they
    reference the previous GOP): seeking there would give broken frames, so such key frames are
    not clean, and those leading frames come out right (they do not when every key frame is
    taken for clean: checked by hand, all 8 wrong)."""
    path = write_index_video(vids / "open.mkv", 300, 48, 64, 25, codec="libx264",
                             options={"g": "30", "x264-params": "open-gop=1"})
    with SparseDecoder(path, threads=1) as decoder:
        pts = list(decoder.pts)
        keys = [i for i, packet in enumerate(_packets(path)) if packet.is_keyframe]
        leading = [i for i in keys if min(pts[i:]) < pts[i]]
        assert len(leading) >= 3
        assert decoder.clean_keys == [i for i in keys if i not in leading]
        shown = sorted(pts)  # the frames decoded after a key frame but shown before it:
        wanted = [shown.index(pts[j]) for i in leading for j in range(i + 1, i + 6) if pts[j] < pts[i]]
        assert len(wanted) >= 3
    for k in wanted:  # each read alone, so that the decoder would seek if it could
        with SparseDecoder(path, threads=1) as decoder:
            (index, frame), = decoder.frames([k])
            assert index == k and decode_index(frame) == k


def _packets(path):
    import av

    with av.open(str(path)) as container:
        return [p for p in container.demux(container.streams.video[0]) if p.size]


def test_frame_threads_give_the_same_frames(vids):
    path = write_index_video(vids / "threads.mp4", 150, 48, 64, 25, codec="libx264", options=GOP30)
    one, auto = read_clip(path, 8, threads=1), read_clip(path, 8, threads=0)
    assert one.decoder == auto.decoder == "pyav" and torch.equal(one.frames, auto.frames)


def test_raw_h264_without_timestamps_is_unsupported(vids):
    """A raw H.264 stream has no container timestamps for PyAV to order frames by."""
    with pytest.raises(Unsupported, match="a packet without a timestamp"):
        with SparseDecoder(write_raw_h264(vids / "raw.h264")) as decoder:
            list(decoder.frames([0]))


def test_sparse_frame_stream_gives_read_clip_s_frames(vids):
    path = write_index_video(vids / "stream.mp4", 100, 48, 64, 25, codec="libx264", options=GOP30)
    with SparseFrameStream(path, 32) as stream:
        assert (stream.frame_count, stream.fps) == (100, 25.0)
        got = dict(stream.frames([5, 50, 95]))
        assert stream.retrieved == 3 and 3 <= stream.decoded < 100
        assert (stream.info.width, stream.info.height, stream.info.frame_count) == (64, 48, 100)
    expected = read_clip(path, 3, 32, sampler=lambda n, f: [5, 50, 95], decoder="opencv")
    assert torch.equal(torch.stack([got[k] for k in (5, 50, 95)]), expected.frames)
