"""Timelines for long videos: STAM on sliding windows, per-video summaries and subtitle tracks.

``stam predict LONG.mp4 --window 10 --stride 5`` cuts each video into windows of ``window_s``
seconds starting every ``stride_s`` seconds, samples ``F`` frames inside each window by the same
uniform rule as a whole video (:func:`~stamcli.video.sample_indices`), and tags every window.

Window planning (:func:`plan_windows`) works in whole frames: a window is ``W = round(window_s *
fps)`` frames long and window ``k`` starts at frame ``k * S`` with ``S = round(stride_s * fps)``
(both at least 1).  Windows end at ``min(k * S + W, n)`` and planning stops after the first
window that reaches the end of the video, so the last window may be shorter (a tail) and a video
shorter than one window gives one window over the whole video.  Times are ``frame / fps``.

Decoding (:class:`TimelineReader`) walks each video once, frame after frame: every frame is
grabbed, only the frames some open window samples are retrieved and preprocessed, and only
those of windows still open are kept, so memory does not grow with the video's length.  A
window is handed on as soon as its last frame is decoded.  Full windows do not depend on the
header's frame count; the tail does, so the header count plans it and the real end of the
stream confirms it.  When the stream ends elsewhere (the header lied), the window the stream
ends in is truncated at the last decoded frame and uses the frames it had sampled, resampled
uniformly to ``F``; later windows are dropped.

The video's own record ranks labels by the seconds they cover: each instant belongs to the
window whose centre is nearest (:func:`segments`), and counts for that window's top-1 label, so
the seconds add up to the video's duration.  Subtitles (``--format srt|vtt``) show the same
segments as cues, consecutive equal labels merged.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import torch

from .engine import Predictor, _reason, _single_threaded_decode
from .errors import StamError, UsageError, VideoError
from .video import Clip, FrameStream, sample_indices
from .writers import FORMATS, ResultWriter, error_record, format_for, make_record, open_writer

__all__ = ["Window", "window_lengths", "plan_windows", "window_indices", "TimelineReader", "TimelinePredictor",
           "segments", "check_timeline", "output_format", "subtitle_paths", "subtitle_cues", "format_subtitles",
           "SubtitleWriter", "open_timeline_writer", "SUBTITLE_FORMATS", "TIMELINE_COLUMNS"]

SUBTITLE_FORMATS = ("srt", "vtt")
#: CSV columns a timeline run adds after the standard ones.
TIMELINE_COLUMNS = ("type", "window", "start_s", "end_s")


# ---------------------------------------------------------------------------- planning (pure)


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of a video, the ``index``-th window of its timeline."""

    index: int
    start: int
    end: int
    fps: float

    @property
    def start_s(self) -> float:
        return self.start / self.fps

    @property
    def end_s(self) -> float:
        return self.end / self.fps


def check_timeline(window_s: Optional[float], stride_s: Optional[float]) -> None:
    """UsageError unless ``--window`` (and ``--stride``, which needs it) are positive seconds."""
    if stride_s is not None and window_s is None:
        raise UsageError("--stride needs --window (the length of each window in seconds)")
    for name, value in (("--window", window_s), ("--stride", stride_s)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a number of seconds greater than 0, got {value:g}")


def window_lengths(fps: float, window_s: float, stride_s: Optional[float] = None) -> tuple[int, int]:
    """``(W, S)``: window length and stride in frames, rounded, at least 1 (stride defaults to the window)."""
    check_timeline(window_s, stride_s)
    if not fps > 0:
        raise ValueError(f"need a frame rate > 0, got {fps}")
    stride_s = window_s if stride_s is None else stride_s
    return max(1, round(window_s * fps)), max(1, round(stride_s * fps))


def plan_windows(n: int, fps: float, window_s: float, stride_s: Optional[float] = None) -> list[Window]:
    """The windows of an ``n``-frame video (see the module docstring for the rule)."""
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    length, stride = window_lengths(fps, window_s, stride_s)
    windows: list[Window] = []
    while len(windows) * stride < n:
        start = len(windows) * stride
        windows.append(Window(len(windows), start, min(start + length, n), fps))
        if windows[-1].end == n:
            break
    return windows


def window_indices(window: Window, frames: int) -> list[int]:
    """The ``frames`` source frames sampled in ``window``: :func:`sample_indices` inside it."""
    return [window.start + i for i in sample_indices(window.end - window.start, frames)]


def segments(spans: Sequence[tuple[float, float]], duration_s: float) -> list[tuple[float, float]]:
    """The part of ``[0, duration_s]`` each window owns: the instants nearest its centre.

    ``spans`` are the windows' ``(start_s, end_s)`` in order; the segments tile the video (the
    first starts at 0, the last ends at ``duration_s``, each ends where the next begins).
    """
    if not spans:
        return []
    centres = [(a + b) / 2 for a, b in spans]
    bounds = [0.0, *((x + y) / 2 for x, y in zip(centres, centres[1:])), max(duration_s, 0.0)]
    bounds = [min(max(b, 0.0), bounds[-1]) for b in bounds]
    return list(zip(bounds, bounds[1:]))


# ---------------------------------------------------------------------------- decoding


class _Open:
    """A window being filled: the frames it samples if it is full, or if it is the header's tail."""

    def __init__(self, index: int, start: int, length: int, frames: int, header_n: Optional[int]):
        self.index, self.start = index, start
        self.full = [start + i for i in sample_indices(length, frames)]
        self.tail = None  # sampled for the tail the header predicts, [start, header_n)
        if header_n is not None and start < header_n < start + length:
            self.tail = [start + i for i in sample_indices(header_n - start, frames)]
        self.wanted = set(self.full) | set(self.tail or ())


class TimelineReader:
    """The windows of one video with their ``F`` preprocessed frames, decoding it once.

    Iterating yields ``(Window, Clip)`` as each window fills.  Afterwards :attr:`frame_count`
    is the number of decoded frames and :attr:`duration_s` the video's duration.
    :attr:`peak_buffered` is the most preprocessed frames held at once (it depends on the
    window, stride and ``F``, not on the video's length).
    """

    def __init__(self, path, frames: int, img_size: int, window_s: float, stride_s: Optional[float] = None, *,
                 threads: int = 0):
        check_timeline(window_s, stride_s)
        self.path, self.frames, self.img_size = path, frames, img_size
        self.window_s, self.stride_s, self.threads = window_s, stride_s, threads
        self.frame_count: Optional[int] = None
        self.fps = 0.0
        self.peak_buffered = 0
        self.grabs = 0  # frames decoded
        self.retrieved = 0  # frames converted and preprocessed (those some window samples)

    @property
    def duration_s(self) -> float:
        return (self.frame_count or 0) / self.fps if self.fps > 0 else 0.0

    def __iter__(self) -> Iterator[tuple[Window, Clip]]:
        with FrameStream(self.path, self.img_size, threads=self.threads) as stream:
            info = stream.info
            if info.fps <= 0:
                raise VideoError(f"cannot read video {info.path}: its header has no frame rate, "
                                 "needed to place timeline windows in seconds")
            self.fps = info.fps
            length, stride = window_lengths(info.fps, self.window_s, self.stride_s)
            opened: list[_Open] = []  # by start, which is also the order they fill in
            need: Counter = Counter()  # frame -> open windows that sample it
            buffer: dict[int, torch.Tensor] = {}
            next_k, last_end = 0, None

            def wanted(i: int) -> bool:
                nonlocal next_k
                while next_k * stride <= i:
                    opened.append(_Open(next_k, next_k * stride, length, self.frames, info.frame_count))
                    need.update(opened[-1].wanted)
                    next_k += 1
                return need[i] > 0

            def close(window: _Open, end: int, indices: list[int]) -> tuple[Window, Clip]:
                for j in window.wanted:
                    need[j] -= 1
                frames = torch.stack([buffer[j] for j in indices])
                for j in window.wanted:
                    if need[j] <= 0:
                        need.pop(j, None)
                        buffer.pop(j, None)
                w = Window(window.index, window.start, end, info.fps)
                clip = Clip(path=os.fsdecode(self.path), frames=frames, indices=indices, frame_count=end - w.start,
                            fps=info.fps, duration_s=w.end_s - w.start_s, width=info.width, height=info.height,
                            rotation=info.rotation)
                return w, clip

            for i, frame in stream.frames(wanted):
                self.grabs, self.retrieved = stream.grabs, stream.retrieved
                if frame is not None:
                    buffer[i] = frame
                    self.peak_buffered = max(self.peak_buffered, len(buffer))
                while opened and opened[0].start + length == i + 1:  # a full window is complete
                    window = opened.pop(0)
                    last_end = i + 1
                    yield close(window, i + 1, window.full)
            n = self.frame_count = stream.grabs
            if n == 0:
                raise VideoError(f"cannot read video {info.path}: no decodable video frames")
            if last_end != n and opened:  # the first open window is the tail; later ones are inside it
                window = opened[0]
                if n == info.frame_count and window.tail is not None:
                    indices = window.tail
                else:  # the header was wrong: resample what this window has read
                    got = sorted(j for j in window.wanted if j < n)
                    indices = [got[j] for j in sample_indices(len(got), self.frames)] if got else []
                if indices:
                    last_end = n
                    yield close(window, n, indices)
            if last_end is None:
                raise VideoError(f"cannot read video {info.path}: no timeline window could be filled "
                                 f"from its {n} decodable frames")


# ---------------------------------------------------------------------------- scoring


_END = object()


@dataclass
class _Item:
    """What the decode thread hands over: a filled window, or the end of a video (its reader or error)."""

    path: str
    window: Optional[Window] = None
    clip: Optional[Clip] = None
    reader: Optional[TimelineReader] = None
    error: Optional[str] = None


class TimelinePredictor:
    """Tags every window of each video with a :class:`~stamcli.engine.Predictor`'s model.

    :meth:`predict` yields, per video in input order, its window records (``"type": "window"``)
    and then its video record (``"type": "video"``: the summary, or the error).  One thread decodes
    the videos one after another, a bounded number of windows ahead; windows are scored
    ``--batch-size`` at a time, across videos.

    >>> timeline = TimelinePredictor(Predictor(stamcli.load_model("stam_16")), window_s=10, stride_s=5)
    >>> for record in timeline.predict(["match.mp4"]): print(record["start_s"], record["predictions"][0])
    """

    def __init__(self, predictor: Predictor, window_s: float, stride_s: Optional[float] = None):
        check_timeline(window_s, stride_s)
        self.predictor, self.window_s, self.stride_s = predictor, window_s, stride_s
        self.peak_buffered = 0  #: the most frames any video's reader held at once
        self._tops: dict[str, list[tuple[Window, dict]]] = {}  # scored windows of unfinished videos

    def reader(self, path: str) -> TimelineReader:
        model = self.predictor.model
        return TimelineReader(path, self.predictor.frames, model.config.img_size, self.window_s, self.stride_s)

    def predict(self, paths: Iterable[str]) -> Iterator[dict]:
        """Window records and a video record for each path (see the README for the schema)."""
        batch_size = self.predictor.options.batch_size
        items: queue.Queue = queue.Queue(maxsize=2 * batch_size)
        stop = threading.Event()
        model_threads = torch.get_num_threads()
        thread = threading.Thread(target=self._decode, args=(list(paths), items, stop), daemon=True,
                                  name="stam-timeline-decode")
        thread.start()
        pending: list[_Item] = []
        try:
            while True:
                item = items.get()
                if item is _END:
                    yield from self._flush(pending)
                    return
                pending.append(item)
                if sum(p.window is not None for p in pending) >= batch_size:
                    yield from self._flush(pending)
                    pending = []
        finally:
            stop.set()
            thread.join()
            torch.set_num_threads(model_threads)  # the default that threads started later inherit

    def _decode(self, paths: list[str], items: queue.Queue, stop: threading.Event) -> None:
        """The decode thread: every window of every video, then its end, then ``_END``."""

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        _single_threaded_decode()
        try:
            for path in paths:
                reader = self.reader(path)
                try:
                    for window, clip in reader:
                        if not put(_Item(path, window, clip)):
                            return
                    end = _Item(path, reader=reader)
                except Exception as err:  # one bad video never stops the run
                    end = _Item(path, error=_reason(err))
                self.peak_buffered = max(self.peak_buffered, reader.peak_buffered)
                if not put(end):
                    return
        finally:
            put(_END)

    def _flush(self, pending: list[_Item]) -> Iterator[dict]:
        clips = [item.clip for item in pending if item.window is not None]
        probabilities = iter(self.predictor.probabilities(clips)) if clips else iter(())
        model = self.predictor.model.name
        for item in pending:
            if item.window is not None:
                predictions = self.predictor.top_predictions(next(probabilities))
                self._tops.setdefault(item.path, []).append((item.window, predictions[0]))
                w = item.window
                yield make_record(item.path, predictions=predictions, frames=w.end - w.start, model=model,
                                  duration_s=w.end_s - w.start_s, fps=w.fps, type="window", window=w.index,
                                  start_s=w.start_s, end_s=w.end_s)
                continue
            tops = self._tops.pop(item.path, [])
            if item.error is not None:
                yield error_record(item.path, item.error, model=model, type="video", window=None, start_s=None,
                                   end_s=None)
            else:
                yield self._summary(item.path, item.reader, tops)

    def _summary(self, path: str, reader: TimelineReader, tops: list[tuple[Window, dict]]) -> dict:
        """The video record: labels ranked by the seconds where they are the top-1 label."""
        duration = reader.duration_s
        seconds: dict[tuple[str, int], float] = {}
        for (a, b), (_, top) in zip(segments([(w.start_s, w.end_s) for w, _ in tops], duration), tops):
            key = (top["label"], top["index"])
            seconds[key] = seconds.get(key, 0.0) + (b - a)
        ranked = sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0][1]))
        predictions = [{"label": label, "index": index, "score": s / duration if duration > 0 else 0.0}
                       for (label, index), s in ranked[: self.predictor.top_k]]
        coverage = [{"label": label, "index": index, "seconds": s} for (label, index), s in ranked]
        return make_record(path, predictions=predictions, frames=reader.frame_count, model=self.predictor.model.name,
                           duration_s=duration, fps=reader.fps, type="video", window=None, start_s=0.0,
                           end_s=duration, windows=len(tops), coverage=coverage)


# ---------------------------------------------------------------------------- subtitles


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
    become one cue showing their mean score; cues never overlap and empty ones are dropped.
    """
    spans = [(w["start_s"], w["end_s"]) for w in windows]
    merged: list[list] = []  # [start_ms, end_ms, label, scores]
    for (a, b), window in zip(segments(spans, duration_s), windows):
        top = window["predictions"][0]
        a_ms, b_ms = round(a * 1000), round(b * 1000)
        if merged and merged[-1][2] == top["label"]:
            merged[-1][1] = b_ms
            merged[-1][3].append(top["score"])
        else:
            merged.append([a_ms, b_ms, top["label"], [top["score"]]])
    return [(a, b, _cue_text(label, sum(scores) / len(scores))) for a, b, label, scores in merged if b > a]


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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise StamError(f"cannot write subtitles to {path}: {err.strerror or err}") from None
        self.written.append(path)


def open_timeline_writer(target: Optional[str], fmt: Optional[str], videos: Sequence[str], *, top_k: int,
                         resume: bool = False, console=None, timeline: bool = True) -> ResultWriter:
    """The writer of a timeline or subtitle run: a :class:`SubtitleWriter` for ``srt``/``vtt``,
    else :func:`~stamcli.writers.open_writer` with the timeline CSV columns."""
    if fmt in SUBTITLE_FORMATS:
        return SubtitleWriter(fmt, subtitle_paths(videos, target, fmt), top_k, resume=resume)
    return open_writer(target, fmt, top_k=top_k, resume=resume, console=console,
                       columns=TIMELINE_COLUMNS if timeline else ())
