"""Files written beside each video (or in an ``--output`` folder) from its timeline: subtitle tracks
(``--format srt|vtt``), editor markers and chapters (``--format otio|edl|fcp7xml|chapters|ffmetadata``,
made by :mod:`stamcli.markers`); and the writer of a timeline run.

A subtitle track shows a video's top-1 label per window over the part of the video that window
covers (:func:`stamcli.timeline.segments`: each instant belongs to the window whose centre is
nearest), so cues never overlap; consecutive equal labels become one cue with their mean score.
With ``--events`` the cues are the events instead (:mod:`stamcli.events`).  Without ``--window``
a video gets one cue over its whole duration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .errors import UsageError
from .fileutils import write_atomic
from .markers import MARKER_FORMATS, clock_time
from .storage import is_url
from .timeline import TIMELINE_COLUMNS, segments
from .writers import FORMATS, ResultWriter, format_for, open_writer

__all__ = ["SUBTITLE_FORMATS", "SIDECAR_FORMATS", "output_format", "subtitle_paths", "subtitle_cues", "event_cues",
           "format_subtitles", "SubtitleWriter", "open_timeline_writer"]

SUBTITLE_FORMATS = ("srt", "vtt")

#: Every format written as one file per video, and its file suffix.
SIDECAR_FORMATS: dict[str, str] = {"srt": ".srt", "vtt": ".vtt",
                                   **{name: suffix for name, (suffix, _, _) in MARKER_FORMATS.items()}}


def _sidecar_from_suffix(output: str) -> Optional[str]:
    """The per-video format an ``--output`` file name ends in (the longest suffix wins: .chapters.vtt)."""
    name = str(output).lower()
    matches = [fmt for fmt, suffix in SIDECAR_FORMATS.items() if name.endswith(suffix)]
    return max(matches, key=lambda fmt: len(SIDECAR_FORMATS[fmt]), default=None)


def output_format(output: Optional[str], fmt: Optional[str]) -> Optional[str]:
    """Like :func:`~stamcli.writers.format_for`, plus the per-video formats of :data:`SIDECAR_FORMATS`
    (given, or from an output file name ending in one of their suffixes)."""
    name = fmt.strip().lower().lstrip(".") if fmt else None
    if name in SIDECAR_FORMATS:
        return name
    if name is not None and name not in (*FORMATS, "ndjson"):
        raise UsageError(f"unknown format '{fmt}': choose one of {', '.join((*FORMATS, *SIDECAR_FORMATS))}")
    if not fmt and output is not None and (sidecar := _sidecar_from_suffix(output)):
        return sidecar
    return format_for(output, fmt)


def subtitle_paths(videos: Sequence[str], output: Optional[str], fmt: str) -> dict[str, Path]:
    """Where each video's file of format ``fmt`` goes: beside it as ``<video stem><suffix>`` (no
    ``--output``), ``output`` itself (one video and a file name with the format's suffix), else
    ``output/<stem><suffix>``; the suffix is :data:`SIDECAR_FORMATS`' (``.srt``, ``.otio``...)."""
    suffix = SIDECAR_FORMATS[fmt]
    noun = "subtitle" if fmt in SUBTITLE_FORMATS else fmt
    if output is not None and is_url(str(output)):
        raise UsageError(f"--output {output}: {noun} files are written to local files; give a folder")
    if (output is None or str(output) == "-") and any(is_url(video) for video in videos):
        raise UsageError(f"{noun} files of videos read from URLs need --output FOLDER (they cannot go beside the "
                         "videos)")
    if output is None or str(output) == "-":
        paths = {video: Path(video).with_name(Path(video).stem + suffix) for video in videos}
    elif _sidecar_from_suffix(output) is not None and not Path(output).is_dir():
        if len(videos) != 1:
            raise UsageError(f"--output {output} is one {noun} file, but there are {len(videos)} videos: "
                             "give a folder, or no --output to write each video's file beside it")
        paths = {videos[0]: Path(output)}
    else:
        paths = {video: Path(output) / (Path(video).stem + suffix) for video in videos}
    seen: dict[Path, str] = {}
    for video, path in paths.items():
        if path in seen:
            raise UsageError(f"{seen[path]} and {video} would both write their {noun}s to {path}")
        seen[path] = video
    return paths


def _cue_text(label: str, score: float) -> str:
    return f"{' '.join(str(label).split()).replace('-->', '->')} ({score:.2f})"


def subtitle_cues(windows: Sequence[dict], duration_s: float) -> list[tuple[int, int, str]]:
    """``(start_ms, end_ms, text)`` cues from window records (their top-1 label and score).

    Each window shows over its :func:`segments` part; consecutive windows with the same label
    become one cue showing their mean score; cues never overlap and empty ones are dropped, as are
    windows with no label (below ``--min-score`` or their thresholds): the track has a gap there.
    """
    spans = [(w["start_s"], w["end_s"]) for w in windows]
    merged: list[list] = []  # [start_ms, end_ms, label, scores]; label None: a gap
    for (a, b), window in zip(segments(spans, duration_s), windows):
        top = (window["predictions"] or [{"label": None, "score": None}])[0]
        a_ms, b_ms = round(a * 1000), round(b * 1000)
        if merged and merged[-1][2] == top["label"]:
            merged[-1][1] = b_ms
            merged[-1][3].append(top["score"])
        else:
            merged.append([a_ms, b_ms, top["label"], [top["score"]]])
    return [(a, b, _cue_text(label, sum(scores) / len(scores))) for a, b, label, scores in merged
            if b > a and label is not None]


def format_subtitles(cues: Sequence[tuple[int, int, str]], fmt: str) -> str:
    """SubRip (numbered cues, ``HH:MM:SS,mmm``) or WebVTT (``WEBVTT`` header, ``HH:MM:SS.mmm``) text."""
    if fmt == "srt":
        return "".join(f"{i}\n{clock_time(a, ',')} --> {clock_time(b, ',')}\n{text}\n\n"
                       for i, (a, b, text) in enumerate(cues, 1))
    return "WEBVTT\n\n" + "".join(f"{clock_time(a)} --> {clock_time(b)}\n{text}\n\n" for a, b, text in cues)


def event_cues(events: Sequence[dict]) -> list[tuple[int, int, str]]:
    """``(start_ms, end_ms, text)`` cues from event records: one per event, ``label (score)``."""
    cues = [(round(e["start_s"] * 1000), round(e["end_s"] * 1000), _cue_text(e["label"], e["score"])) for e in events]
    return [(a, b, text) for a, b, text in cues if b > a]


class SubtitleWriter(ResultWriter):
    """Writes one file per video (a subtitle track, or :mod:`stamcli.markers`' markers or chapters)
    when its video record arrives, atomically: a file that exists is complete.  With ``events``
    (``--events``) the cues and marks are the video's event records.  Without windows (no
    ``--window``) a video is one stretch with its top-1 label."""

    def __init__(self, fmt: str, destinations: dict[str, Path], top_k: int, *, resume: bool = False,
                 events: bool = False):
        super().__init__(top_k)
        self.format, self.destinations, self.events = fmt, destinations, events
        self.written: list[Path] = []
        self.done_paths = {video for video, path in destinations.items() if resume and path.is_file()}
        self.counts["resumed"] = len(self.done_paths)
        self._windows: dict[str, list[dict]] = {}
        self._events: dict[str, list[dict]] = {}

    def _write(self, record: dict) -> None:
        kind = record.get("type")
        if kind in ("window", "event"):
            (self._windows if kind == "window" else self._events).setdefault(record["path"], []).append(record)
            return
        windows = self._windows.pop(record["path"], [])
        events = self._events.pop(record["path"], []) if self.events else None
        if record.get("status") != "ok":
            return
        duration = record.get("duration_s") or 0.0
        if not windows:  # a whole-video record: one stretch
            windows = [dict(record, start_s=0.0, end_s=duration, window=None)]
        if self.format in SUBTITLE_FORMATS:
            cues = event_cues(events) if events is not None else subtitle_cues(windows, duration)
            text, what = format_subtitles(cues, self.format), "subtitles to "
        else:
            _, what, render = MARKER_FORMATS[self.format]
            text, what = render(record, windows, events), f"{what} to "
        path = self.destinations[record["path"]]
        write_atomic(path, text.encode("utf-8", "surrogateescape"), what=what)
        self.written.append(path)


def open_timeline_writer(target: Optional[str], fmt: Optional[str], videos: Sequence[str], *, top_k: int,
                         resume: bool = False, console=None, columns: Sequence[str] = TIMELINE_COLUMNS,
                         events: bool = False) -> ResultWriter:
    """The writer of a timeline run or a per-video file format: a :class:`SubtitleWriter` for the
    formats of :data:`SIDECAR_FORMATS` (``events``: their cues and marks are the event records),
    else :func:`~stamcli.writers.open_writer` with the extra CSV ``columns`` (``()`` without a timeline)."""
    if fmt in SIDECAR_FORMATS:
        return SubtitleWriter(fmt, subtitle_paths(videos, target, fmt), top_k, resume=resume, events=events)
    return open_writer(target, fmt, top_k=top_k, resume=resume, console=console, columns=tuple(columns))
