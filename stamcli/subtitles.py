"""Where timeline and subtitle records go: subtitle tracks (``--format srt|vtt``) and the writer of a
timeline run.

A subtitle track shows a video's top-1 label per window over the part of the video that window
covers (:func:`stamcli.timeline.segments`: each instant belongs to the window whose centre is
nearest), so cues never overlap; consecutive equal labels become one cue with their mean score.
Without ``--window`` a video gets one cue over its whole duration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .errors import UsageError
from .fileutils import write_atomic
from .storage import is_url
from .timeline import TIMELINE_COLUMNS, segments
from .writers import FORMATS, ResultWriter, format_for, open_writer

__all__ = ["SUBTITLE_FORMATS", "output_format", "subtitle_paths", "subtitle_cues", "format_subtitles",
           "SubtitleWriter", "open_timeline_writer"]

SUBTITLE_FORMATS = ("srt", "vtt")

def output_format(output: Optional[str], fmt: Optional[str]) -> Optional[str]:
    """Like :func:`~stamcli.writers.format_for`, plus ``srt``/``vtt`` (given, or from a .srt/.vtt output)."""
    name = fmt.strip().lower().lstrip(".") if fmt else None
    if name in SUBTITLE_FORMATS:
        return name
    if name is not None and name not in (*FORMATS, "ndjson"):
        raise UsageError(f"unknown format '{fmt}': choose one of {', '.join((*FORMATS, *SUBTITLE_FORMATS))}")
    if not fmt and output is not None and Path(output).suffix.lower().lstrip(".") in SUBTITLE_FORMATS:
        return Path(output).suffix.lower().lstrip(".")
    return format_for(output, fmt)


def subtitle_paths(videos: Sequence[str], output: Optional[str], fmt: str) -> dict[str, Path]:
    """Where each video's subtitles go: beside it as ``<video stem>.<fmt>`` (no ``--output``),
    ``output`` itself (one video and a ``.srt``/``.vtt`` file name), else ``output/<stem>.<fmt>``."""
    suffix = f".{fmt}"
    if output is not None and is_url(str(output)):
        raise UsageError(f"--output {output}: subtitles are written to local files; give a folder")
    if (output is None or str(output) == "-") and any(is_url(video) for video in videos):
        raise UsageError("subtitles of videos read from URLs need --output FOLDER (they cannot go beside the videos)")
    if output is None or str(output) == "-":
        paths = {video: Path(video).with_suffix(suffix) for video in videos}
    elif Path(output).suffix.lower() in (".srt", ".vtt") and not Path(output).is_dir():
        if len(videos) != 1:
            raise UsageError(f"--output {output} is one subtitle file, but there are {len(videos)} videos: "
                             "give a folder, or no --output to write each video's subtitles beside it")
        paths = {videos[0]: Path(output)}
    else:
        paths = {video: Path(output) / (Path(video).stem + suffix) for video in videos}
    seen: dict[Path, str] = {}
    for video, path in paths.items():
        if path in seen:
            raise UsageError(f"{seen[path]} and {video} would both write their subtitles to {path}")
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


def _timestamp(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def format_subtitles(cues: Sequence[tuple[int, int, str]], fmt: str) -> str:
    """SubRip (numbered cues, ``HH:MM:SS,mmm``) or WebVTT (``WEBVTT`` header, ``HH:MM:SS.mmm``) text."""
    if fmt == "srt":
        return "".join(f"{i}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{text}\n\n"
                       for i, (a, b, text) in enumerate(cues, 1))
    return "WEBVTT\n\n" + "".join(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n\n" for a, b, text in cues)


class SubtitleWriter(ResultWriter):
    """Writes one subtitle file per video when its video record arrives (atomically: a file that
    exists is complete). Without windows (no ``--window``) a video gets one cue, its top-1 label."""

    def __init__(self, fmt: str, destinations: dict[str, Path], top_k: int, *, resume: bool = False):
        super().__init__(top_k)
        self.format, self.destinations = fmt, destinations
        self.written: list[Path] = []
        self.done_paths = {video for video, path in destinations.items() if resume and path.is_file()}
        self.counts["resumed"] = len(self.done_paths)
        self._windows: dict[str, list[dict]] = {}

    def _write(self, record: dict) -> None:
        if record.get("type") == "window":
            self._windows.setdefault(record["path"], []).append(record)
            return
        windows = self._windows.pop(record["path"], [])
        if record.get("status") != "ok":
            return
        duration = record.get("duration_s") or 0.0
        if not windows:  # a whole-video record: one cue
            windows = [dict(record, start_s=0.0, end_s=duration)]
        path = self.destinations[record["path"]]
        text = format_subtitles(subtitle_cues(windows, duration), self.format)
        write_atomic(path, text.encode("utf-8", "surrogateescape"), what="subtitles to ")
        self.written.append(path)


def open_timeline_writer(target: Optional[str], fmt: Optional[str], videos: Sequence[str], *, top_k: int,
                         resume: bool = False, console=None, timeline: bool = True) -> ResultWriter:
    """The writer of a timeline or subtitle run: a :class:`SubtitleWriter` for ``srt``/``vtt``,
    else :func:`~stamcli.writers.open_writer` with the timeline CSV columns."""
    if fmt in SUBTITLE_FORMATS:
        return SubtitleWriter(fmt, subtitle_paths(videos, target, fmt), top_k, resume=resume)
    return open_writer(target, fmt, top_k=top_k, resume=resume, console=console,
                       columns=TIMELINE_COLUMNS if timeline else ())
