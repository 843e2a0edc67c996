"""Editor markers and chapters (stamcli.markers): files read back with OpenTimelineIO and FFmpeg."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import opentimelineio as otio
import pytest

from synthetic import write_video_av
from stamcli.markers import (MARKER_FORMATS, marks_from_records, render_chapters, render_edl, render_fcp7xml,
                             render_ffmetadata, render_otio)

LABELS = ["dribbling basketball", "dunking basketball", "eating, with a fork"]


def video_record(path="/footage/match 1.mp4", fps=25.0, frames=500) -> dict:
    return {"path": path, "status": "ok", "type": "video", "fps": fps, "frames": frames,
            "duration_s": frames / fps, "model": "tiny"}


def window(k, start, end, fps, label, score):
    return {"path": "x", "type": "window", "window": k, "start_s": start / fps, "end_s": end / fps, "fps": fps,
            "predictions": [{"label": label, "index": LABELS.index(label), "score": score}]}


def event(k, start, end, fps, label, score, windows):
    return {"path": "x", "type": "event", "event": k, "label": label, "score": score, "start_s": start / fps,
            "end_s": end / fps, "windows": windows,
            "predictions": [{"label": label, "index": LABELS.index(label), "score": score}]}


def events_at(fps):
    """Three events of a 500-frame video, in frames: 0-113, 312-456 and 460-500."""
    return [event(0, 0, 113, fps, LABELS[0], 0.91, [0, 1]), event(1, 312, 456, fps, LABELS[1], 0.66, [5, 6, 7]),
            event(2, 460, 500, fps, LABELS[2], 0.5, [9])]


def frames_of(time_range) -> tuple[int, int]:
    return round(time_range.start_time.value), round(time_range.duration.value)


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_otio_has_a_clip_of_the_video_and_a_marker_per_event(fps):
    timeline = otio.adapters.read_from_string(render_otio(video_record(fps=fps), [], events_at(fps)), "otio_json")
    (clip,) = timeline.find_clips()
    assert otio.url_utils.filepath_from_url(clip.media_reference.target_url) == "/footage/match 1.mp4"
    assert clip.media_reference.target_url.startswith("file:///footage/")
    assert frames_of(clip.media_reference.available_range) == (0, 500)
    assert clip.media_reference.available_range.duration.rate == fps
    assert [(m.name, frames_of(m.marked_range)) for m in clip.markers] == [
        (LABELS[0], (0, 113)), (LABELS[1], (312, 144)), (LABELS[2], (460, 40))]
    meta = clip.markers[1].metadata["stamcli"]
    assert (meta["score"], meta["event"], list(meta["windows"])) == (0.66, 1, [5, 6, 7])
    assert clip.markers[1].comment == "score 0.66"
    assert clip.markers[0].color != clip.markers[1].color or LABELS[0] == LABELS[1]


def test_otio_without_events_marks_every_window_even_overlapping_ones():
    windows = [window(0, 0, 50, 25.0, LABELS[0], 0.8), window(1, 25, 75, 25.0, LABELS[0], 0.7),
               window(2, 50, 100, 25.0, LABELS[2], 0.6)]
    text = render_otio(video_record(path="relative/clip.mp4", frames=100), windows, None)
    (clip,) = otio.adapters.read_from_string(text, "otio_json").find_clips()
    assert otio.url_utils.filepath_from_url(clip.media_reference.target_url) == os.path.abspath("relative/clip.mp4")
    assert [(m.name, frames_of(m.marked_range), m.metadata["stamcli"]["window"]) for m in clip.markers] == [
        (LABELS[0], (0, 50), 0), (LABELS[0], (25, 50), 1), (LABELS[2], (50, 50), 2)]


@pytest.mark.parametrize("fps", [25.0, 24.0, 30000 / 1001])
def test_edl_reads_back_with_the_same_labels_and_spans(fps):
    text = render_edl(video_record(fps=fps), [], events_at(fps))
    assert "* FROM CLIP NAME:  dunking basketball" in text
    timeline = otio.adapters.read_from_string(text, "cmx_3600", rate=fps)
    clips = timeline.find_clips()
    assert [(c.name, frames_of(c.source_range)) for c in clips] == [
        (LABELS[0], (0, 113)), (LABELS[1], (312, 144)), (LABELS[2], (460, 40))]
    assert [line.split(None, 4)[4] for line in text.splitlines() if line.startswith("* LOC:")] == [
        label.upper() for label in LABELS]  # a locator per edit (the adapter upper-cases it)
    if fps in (24.0, 25.0):  # the adapter reads no locators back from drop-frame time codes (29.97)
        assert [m.name for c in clips for m in c.markers] == [label.upper() for label in LABELS]
    assert {otio.url_utils.filepath_from_url(c.media_reference.target_url) for c in clips} == {"/footage/match 1.mp4"}
    # each edit sits at its own time in the record timeline: the gaps between them are kept
    track = timeline.tracks[0]
    assert [frames_of(track.range_of_child(c)) for c in clips] == [(0, 113), (312, 144), (460, 40)]


def test_edl_without_events_cuts_overlapping_windows_at_their_owned_segments():
    windows = [window(0, 0, 50, 25.0, LABELS[0], 0.8), window(1, 25, 75, 25.0, LABELS[1], 0.7),
               window(2, 50, 100, 25.0, LABELS[2], 0.6)]
    timeline = otio.adapters.read_from_string(render_edl(video_record(frames=100), windows, None), "cmx_3600", rate=25)
    # owned: 0-1.5 s, 1.5-2.5 s, 2.5-4 s, i.e. frames 0-37.5-62.5-100, halves rounded up
    assert [(c.name, frames_of(c.source_range)) for c in timeline.find_clips()] == [
        (LABELS[0], (0, 38)), (LABELS[1], (38, 25)), (LABELS[2], (63, 37))]


def test_fcp7_xml_markers_read_back():
    timeline = otio.adapters.read_from_string(render_fcp7xml(video_record(), [], events_at(25.0)), "fcp_xml")
    (clip,) = timeline.find_clips()
    assert otio.url_utils.filepath_from_url(clip.media_reference.target_url) == "/footage/match 1.mp4"
    assert [(m.name, frames_of(m.marked_range)) for m in clip.markers] == [
        (LABELS[0], (0, 113)), (LABELS[1], (312, 144)), (LABELS[2], (460, 40))]


def test_chapters_text():
    events = events_at(25.0)
    events[2]["label"] = "a --> b"
    assert render_chapters(video_record(), [], events) == (
        "WEBVTT\n\n"
        "1\n00:00:00.000 --> 00:00:04.520\ndribbling basketball\n\n"
        "2\n00:00:12.480 --> 00:00:18.240\ndunking basketball\n\n"
        "3\n00:00:18.400 --> 00:00:20.000\na -> b\n\n")


def test_chapters_without_events_join_equal_neighbours():
    windows = [window(0, 0, 50, 25.0, LABELS[0], 0.8), window(1, 50, 100, 25.0, LABELS[0], 0.6),
               window(2, 100, 125, 25.0, LABELS[2], 0.6)]
    assert render_chapters(video_record(frames=125), windows, []) == "WEBVTT\n\n"  # --events, and none
    assert render_chapters(video_record(frames=125), windows, None) == (
        "WEBVTT\n\n1\n00:00:00.000 --> 00:00:04.000\ndribbling basketball\n\n"
        "2\n00:00:04.000 --> 00:00:05.000\neating, with a fork\n\n")


def test_ffmetadata_text_and_ffmpeg_reads_it(tmp_path):
    events = events_at(25.0)
    events[1]["label"] = "a=b; c#d \\ e"
    text = render_ffmetadata(video_record(), [], events)
    assert text == (";FFMETADATA1\n\n"
                    "[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=4520\ntitle=dribbling basketball\n\n"
                    "[CHAPTER]\nTIMEBASE=1/1000\nSTART=12480\nEND=18240\ntitle=a\\=b\\; c\\#d \\\\ e\n\n"
                    "[CHAPTER]\nTIMEBASE=1/1000\nSTART=18400\nEND=20000\ntitle=eating, with a fork\n")
    path = tmp_path / "match.ffmetadata"
    path.write_text(text)
    with av.open(str(path), format="ffmetadata") as meta:  # FFmpeg's own reader of the format
        chapters = meta.chapters()
    assert [(c["start"], c["end"], c["time_base"], c["metadata"]["title"]) for c in chapters] == [
        (0, 4520, Fraction(1, 1000), LABELS[0]), (12480, 18240, Fraction(1, 1000), "a=b; c#d \\ e"),
        (18400, 20000, Fraction(1, 1000), LABELS[2])]

    # what `ffmpeg -i video -i chapters -map_metadata 1 -codec copy out.mp4` does: copy the stream, add the chapters
    src = write_video_av(tmp_path / "v.mp4", [np.full((32, 32, 3), 90, np.uint8)] * 500, fps=25)
    out = tmp_path / "with_chapters.mp4"
    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        stream = dst.add_stream_from_template(inp.streams.video[0])
        dst.set_chapters(chapters)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with av.open(str(out)) as muxed:
        titles = [(round(c["start"] * c["time_base"] * 1000), c["metadata"]["title"]) for c in muxed.chapters()]
    assert titles == [(0, LABELS[0]), (12480, "a=b; c#d \\ e"), (18400, LABELS[2])]


def test_formats_table():
    assert {name: suffix for name, (suffix, _, _) in MARKER_FORMATS.items()} == {
        "otio": ".otio", "edl": ".edl", "fcp7xml": ".xml", "chapters": ".chapters.vtt", "ffmetadata": ".ffmetadata"}


def test_marks_prefer_events():
    windows = [window(0, 0, 50, 25.0, LABELS[0], 0.8)]
    assert [m.label for m in marks_from_records(windows, events_at(25.0))] == LABELS
    assert [(m.label, m.start_s, m.end_s, m.score) for m in marks_from_records(windows, None)] == [
        (LABELS[0], 0.0, 2.0, 0.8)]
    assert marks_from_records(windows, []) == []
    unsure = dict(windows[0], predictions=[], window=1, start_s=2.0, end_s=4.0)  # no label left (--min-score)
    assert [m.label for m in marks_from_records([*windows, unsure], None)] == [LABELS[0]]
