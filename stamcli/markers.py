"""Files for editors and players from a video's timeline: markers and chapters.

Each function takes one video's records (its ``video`` record, its ``window`` records and its
``event`` records, as :class:`stamcli.timeline.TimelinePredictor` and :mod:`stamcli.events` make
them; ``None`` for the events without ``--events``) and returns the text of one file.  Marks are
the events with ``--events``, else the windows:

* ``otio`` (OpenTimelineIO JSON): a timeline with one video track holding one clip that refers to
  the video (its absolute ``file://`` URL, its frame count at its frame rate), and on that clip a
  marker per mark: name = label, marked range = the mark's span (frames at the video's rate),
  metadata ``{"stamcli": {"score": ..., "event": k, "windows": [...]}}`` (``"window": k`` for a
  window), colour by label (the same label always gets the same colour).
* ``fcp7xml`` (Final Cut Pro 7 XML, ``.xml``: what Premiere Pro and DaVinci Resolve import as
  "Final Cut Pro XML"): the same timeline through OpenTimelineIO's ``fcp_xml`` adapter; markers
  keep their name and span (the score and colour are not part of that format's markers).
  Final Cut Pro X's own ``.fcpxml`` is not offered: OpenTimelineIO's adapter for it writes only
  eight standard frame rates and turns red and green markers into to-do items.
* ``edl`` (CMX 3600): an EDL has no markers with a length, so each mark is an edit: a piece of
  the video from the mark's start to its end, at its own time in the record timeline, named
  after the label (``* FROM CLIP NAME``), with a ``* LOC`` locator carrying the label too.
  Edits cannot overlap: with overlapping windows each covers the part its window owns
  (:func:`stamcli.timeline.segments`).
* ``chapters`` (a WebVTT chapters track, ``.chapters.vtt``) and ``ffmetadata`` (FFmpeg's
  metadata file with a ``[CHAPTER]`` per mark; ``ffmpeg -i video.mp4 -i video.ffmetadata
  -map_metadata 1 -codec copy out.mp4`` adds the chapters to a copy of the video): one chapter
  per event, titled with its label.  Without ``--events`` the chapters are the subtitle cues'
  stretches (consecutive windows with the same label joined), so chapters never overlap.

OpenTimelineIO and its adapters are the ``editors`` extra (``pip install "stamcli[editors]"``).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import StamError
from .timeline import segments

__all__ = ["Mark", "marks_from_records", "MARKER_FORMATS", "render_otio", "render_edl", "render_fcp7xml",
           "render_chapters", "render_ffmetadata", "editor_timeline", "require_editors", "clock_time"]

#: OpenTimelineIO's marker colours, given out by label.
_COLOURS = ("RED", "PINK", "ORANGE", "YELLOW", "GREEN", "CYAN", "BLUE", "PURPLE", "MAGENTA")


@dataclass(frozen=True)
class Mark:
    """A labelled stretch of a video: an event, or a window."""

    label: str
    start_s: float
    end_s: float
    score: float
    metadata: dict  #: what stamcli knows of it: score, event/window number, windows


def _top(record: dict) -> tuple[str, float]:
    preds = record.get("predictions") or []
    label = record.get("label", preds[0]["label"] if preds else "")
    score = record.get("score", preds[0]["score"] if preds else None)
    return str(label), float(score or 0.0)


def marks_from_records(windows: Sequence[dict], events: Optional[Sequence[dict]], *, owned: bool = False,
                       duration_s: float = 0.0) -> list[Mark]:
    """The events' marks (``events`` not None: ``--events``, even if there are none), else the
    windows' (top-1 label).  ``owned``: a window's mark spans the part of the video it owns
    (:func:`segments`), not its whole span."""
    marks = []
    if events is not None:
        for e in events:
            label, score = _top(e)
            marks.append(Mark(label, e["start_s"], e["end_s"], score,
                              {"score": score, "event": e.get("event"), "windows": list(e.get("windows") or [])}))
        return marks
    spans = [(w["start_s"], w["end_s"]) for w in windows]
    for (a, b), w in zip(segments(spans, duration_s) if owned else spans, windows):
        label, score = _top(w)
        if b > a and w.get("predictions"):  # a window left with no label (--min-score, --thresholds): no mark
            marks.append(Mark(label, a, b, score, {"score": score, "window": w.get("window")}))
    return marks


def _otio():
    try:
        import opentimelineio as otio
    except ImportError:
        raise StamError('editor files need OpenTimelineIO: pip install "stamcli[editors]"') from None
    return otio


def _frame(seconds: float, fps: float) -> int:
    """The frame at ``seconds`` (halves up, so that a stretch ending at x.5 frames meets the next one)."""
    return math.floor(seconds * fps + 0.5)


def _label_colour(label: str) -> str:
    return _COLOURS[zlib.crc32(label.encode("utf-8", "surrogateescape")) % len(_COLOURS)]


def _media(video: dict, otio):
    """The video's media reference (absolute file URL, whole length) and its rate and frame count."""
    fps = float(video.get("fps") or 0.0)
    if not fps > 0:
        raise StamError(f"cannot write editor markers for {video['path']}: its frame rate is unknown")
    frames = video.get("frames") or _frame(video.get("duration_s") or 0.0, fps)
    whole = otio.opentime.TimeRange(otio.opentime.RationalTime(0, fps), otio.opentime.RationalTime(frames, fps))
    url = otio.url_utils.url_from_filepath(os.path.abspath(os.fsdecode(video["path"])))
    return otio.schema.ExternalReference(target_url=url, available_range=whole), fps, frames


def _range(otio, start_s: float, end_s: float, fps: float):
    a, b = _frame(start_s, fps), _frame(end_s, fps)
    return otio.opentime.TimeRange(otio.opentime.RationalTime(a, fps), otio.opentime.RationalTime(max(b - a, 0), fps))


def editor_timeline(video: dict, marks: Sequence[Mark]):
    """An OpenTimelineIO timeline: one track, one clip of the whole video, a marker per mark."""
    otio = _otio()
    reference, fps, frames = _media(video, otio)
    name = Path(video["path"]).name
    timeline = otio.schema.Timeline(name=Path(video["path"]).stem)
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    clip = otio.schema.Clip(name=name, media_reference=reference, source_range=reference.available_range)
    track.append(clip)
    for mark in marks:
        span = _range(otio, mark.start_s, mark.end_s, fps)
        clip.markers.append(otio.schema.Marker(name=mark.label, marked_range=span, color=_label_colour(mark.label),
                                               metadata={"stamcli": mark.metadata}, comment=f"score {mark.score:.2f}"))
    return timeline


def _edit_list(video: dict, marks: Sequence[Mark]):
    """The EDL's timeline: an edit per mark at its own time, gaps between."""
    otio = _otio()
    reference, fps, _ = _media(video, otio)
    timeline = otio.schema.Timeline(name=Path(video["path"]).stem)
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    at = 0  # frames of the record timeline filled so far
    for mark in sorted(marks, key=lambda m: m.start_s):
        span = _range(otio, mark.start_s, mark.end_s, fps)
        start = int(span.start_time.value)
        if span.duration.value <= 0 or start < at:
            continue  # nothing to cut, or it would overlap the edit before (cannot happen with owned spans)
        if start > at:
            track.append(otio.schema.Gap(source_range=_range(otio, at / fps, start / fps, fps)))
        clip = otio.schema.Clip(name=mark.label, media_reference=reference.clone(), source_range=span)
        clip.markers.append(otio.schema.Marker(name=mark.label, marked_range=span, color=_label_colour(mark.label)))
        track.append(clip)
        at = start + int(span.duration.value)
    return timeline


def _write(timeline, adapter: str, **kwargs) -> str:
    return _otio().adapters.write_to_string(timeline, adapter_name=adapter, **kwargs)


def render_otio(video: dict, windows: Sequence[dict], events: Optional[Sequence[dict]]) -> str:
    return _write(editor_timeline(video, marks_from_records(windows, events)), "otio_json")


def render_fcp7xml(video: dict, windows: Sequence[dict], events: Optional[Sequence[dict]]) -> str:
    return _write(editor_timeline(video, marks_from_records(windows, events)), "fcp_xml")


def render_edl(video: dict, windows: Sequence[dict], events: Optional[Sequence[dict]]) -> str:
    marks = marks_from_records(windows, events, owned=True, duration_s=video.get("duration_s") or 0.0)
    return _write(_edit_list(video, marks), "cmx_3600")


def _chapter_marks(video: dict, windows: Sequence[dict], events: Optional[Sequence[dict]]) -> list[Mark]:
    if events is not None:
        return marks_from_records(windows, events)
    from .events import EventOptions, merge_events  # the subtitle cues' stretches: no bridging, nothing dropped

    joined = merge_events(windows, video.get("duration_s") or 0.0, EventOptions(gap_s=0.0, min_event_s=0.0))
    return [Mark(e.label, e.start_s, e.end_s, e.score, {}) for e in joined]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def clock_time(ms: int, separator: str = ".") -> str:
    """``HH:MM:SS.mmm`` (WebVTT; SubRip writes ``,`` as the ``separator``) of ``ms`` milliseconds."""
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def _title(label: str) -> str:
    return " ".join(str(label).split()).replace("-->", "->")


def render_chapters(video: dict, windows: Sequence[dict], events: Optional[Sequence[dict]]) -> str:
    """A WebVTT chapters track: a numbered cue per chapter, its title the label."""
    cues = [(_ms(m.start_s), _ms(m.end_s), _title(m.label)) for m in _chapter_marks(video, windows, events)]
    return "WEBVTT\n\n" + "".join(f"{k}\n{clock_time(a)} --> {clock_time(b)}\n{text}\n\n"
                                  for k, (a, b, text) in enumerate([c for c in cues if c[1] > c[0]], 1))


def _ffmetadata_escape(text: str) -> str:
    """FFmetadata values escape ``=``, ``;``, ``#``, ``\\`` and line breaks with a backslash."""
    out = []
    for ch in " ".join(str(text).split()):
        out.append("\\" + ch if ch in "=;#\\" else ch)
    return "".join(out)


def render_ffmetadata(video: dict, windows: Sequence[dict], events: Optional[Sequence[dict]]) -> str:
    """FFmpeg's metadata file: a ``[CHAPTER]`` per chapter in milliseconds, ``title`` the label."""
    lines = [";FFMETADATA1"]
    for mark in _chapter_marks(video, windows, events):
        a, b = _ms(mark.start_s), _ms(mark.end_s)
        if b > a:
            lines += ["", "[CHAPTER]", "TIMEBASE=1/1000", f"START={a}", f"END={b}",
                      f"title={_ffmetadata_escape(mark.label)}"]
    return "\n".join(lines) + "\n"


#: ``--format`` name -> (file suffix, what it is, renderer(video, windows, events) -> text); ``events``
#: is None without ``--events`` (marks are then the windows).
MARKER_FORMATS: dict[str, tuple[str, str, Callable[[dict, Sequence[dict], Optional[Sequence[dict]]], str]]] = {
    "otio": (".otio", "OpenTimelineIO timeline", render_otio),
    "edl": (".edl", "CMX 3600 EDL", render_edl),
    "fcp7xml": (".xml", "Final Cut Pro 7 XML", render_fcp7xml),
    "chapters": (".chapters.vtt", "WebVTT chapters", render_chapters),
    "ffmetadata": (".ffmetadata", "FFmpeg chapters", render_ffmetadata),
}


def require_editors(fmt: Optional[str]) -> None:
    """StamError (one line) if ``fmt`` is written through OpenTimelineIO and it is not installed."""
    if fmt in ("otio", "edl", "fcp7xml"):
        _otio()
