"""Timelines for long videos: STAM on sliding windows, per-video summaries and subtitle tracks.

``stam predict LONG.mp4 --window 10 --stride 5`` cuts each video into windows of ``window_s``
seconds starting every ``stride_s`` seconds, samples ``F`` frames inside each window by the same
uniform rule as a whole video (:func:`~stamcli.decode.sample_indices`), and tags every window.

Window planning (:func:`plan_windows`) works in whole frames: a window is ``W = round(window_s *
fps)`` frames long and window ``k`` starts at frame ``k * S`` with ``S = round(stride_s * fps)``
(both at least 1).  Windows end at ``min(k * S + W, n)`` and planning stops after the first
window that reaches the end of the video, so the last window may be shorter (a tail) and a video
shorter than one window gives one window over the whole video.  Times are ``frame / fps``.

Decoding (:class:`TimelineReader`) reads each video once, and only the frames of windows still
open are kept, so memory does not grow with the video's length.  The backends and the fallback
are those of :func:`~stamcli.decode.read_clip` (:func:`~stamcli.decode.decode_with_fallback`,
decoder ``auto``, ``pyav`` or ``opencv``):

* PyAV (:class:`~stamcli.decode.SparseFrameStream`): a pass over the packets gives the
  exact frame count, so all windows are planned up front; only their sampled frames, and the
  frames those are predicted from, are decoded (the rest of x264's B-frames are dropped unseen).
  A window is handed on as soon as its last sampled frame is out.  If PyAV gives up, also
  part-way, OpenCV reads the video again (``auto``) and the windows already handed on are not
  repeated.
* OpenCV (:class:`~stamcli.decode.FrameStream`) walks the video frame after frame: every frame
  is grabbed, only the frames some open window samples are retrieved and preprocessed, and a
  window is handed on when its last frame is decoded.  Full windows do not depend on the
  header's frame count; the tail does, so the header count plans it and the real end of the
  stream confirms it.  When the stream ends elsewhere (the header
  lied), the window the stream ends in is truncated at the last decoded frame and uses the
  frames it had sampled, resampled uniformly to ``F``; later windows are dropped.

Both give the same windows and the same frames, bit for bit, where the header is right.

``--window shots`` (:class:`ShotWindows`) makes each camera shot a window.  Finding the shots
needs every frame, so the reader decodes every frame once (same backends, same fallback) and
hands each to a :class:`~stamcli.shots.ShotDetector`; :func:`plan_shot_windows` cuts shots
longer than ``--max-shot`` into equal parts.  A shot's frames can only be sampled once its end
is known, so the open shot's frames are kept as decoded until then, and its windows are handed
on, only their sampled frames preprocessed, as soon as the detector can no longer move its end
(each frame is decoded once).  An open shot whose frames outgrow :attr:`ShotWindows.buffer_mb`
(512 MiB by default: 31 s of 640x360, 3.4 s of 1080p at 25 fps) stops the keeping for the rest of
that video: the windows from that shot on are read in a second pass (PyAV decodes only their
sampled frames and what those are predicted from), so memory stays bounded whatever the shots.

The video's own record ranks labels by the seconds they cover: each instant belongs to the
window whose centre is nearest (:func:`segments`), and counts for that window's top-1 label, so
the seconds add up to the video's duration.  Subtitles (``--format srt|vtt``) show the same
segments as cues, consecutive equal labels merged (:mod:`stamcli.subtitles`).
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .decode import Clip, FrameStream, SparseFrameStream, Unsupported, VideoInfo, decode_with_fallback, sample_indices
from .decode.backend import Backend
from .decode.files import one_line
from .engine import Predictor, error_reason
from .errors import UsageError, VideoError
from .jobs import DEFAULT_MAX_SHOT_S
from .parallel import WAITING, ModelStreams, single_threaded_decode
from .shots import FrameSpan, Shot, ShotDetector, ShotList, ShotOptions, every_frame_stream
from .storage import abort_downloads, local_input
from .writers import error_record, make_record

__all__ = ["Window", "window_lengths", "plan_windows", "plan_shot_windows", "DEFAULT_SHOT_BUFFER_MB", "ShotWindows",
           "timeline_columns", "window_indices", "TimelineReader", "TimelinePredictor",
           "segments", "check_timeline", "TIMELINE_COLUMNS"]

#: CSV columns a timeline run adds after the standard ones.
TIMELINE_COLUMNS = ("type", "window", "start_s", "end_s")


def timeline_columns(*, shots: bool = False, events: bool = False) -> tuple[str, ...]:
    """:data:`TIMELINE_COLUMNS`, then ``shot`` (``--window shots``), then ``event`` and ``windows``
    (``--events``: the event's number and its windows' numbers as a JSON list)."""
    return (*TIMELINE_COLUMNS, *(("shot",) if shots else ()), *(("event", "windows") if events else ()))


#: The most MiB of decoded frames (3 bytes a pixel) of one open shot kept while its end is not known:
#: 31 s of 640x360 or 3.4 s of 1080p at 25 fps; a longer shot and the rest of its video are read in a
#: second pass.
DEFAULT_SHOT_BUFFER_MB = 512.0


# ---------------------------------------------------------------------------- planning (pure)


@dataclass(frozen=True)
class Window(FrameSpan):
    """Frames ``[start, end)`` of a video, the ``index``-th window of its timeline (and a part of
    shot number ``shot`` with ``--window shots``)."""

    shot: Optional[int] = None


@dataclass(frozen=True)
class ShotWindows:
    """``--window shots``: a window per shot (found with ``detection``), shots longer than
    ``max_shot_s`` (None: no limit) cut into equal parts (:func:`plan_shot_windows`);
    ``buffer_mb``: the most megabytes of decoded frames of an open shot kept to read the shots in
    one pass (0: always two passes; see :class:`TimelineReader`)."""

    max_shot_s: Optional[float] = DEFAULT_MAX_SHOT_S
    detection: ShotOptions = ShotOptions()
    buffer_mb: float = DEFAULT_SHOT_BUFFER_MB

    def check(self) -> None:
        _check_max_shot(self.max_shot_s)
        self.detection.check()
        if not (math.isfinite(self.buffer_mb) and self.buffer_mb >= 0):
            raise UsageError(f"the shot buffer must be 0 MB or more, got {self.buffer_mb:g}")


def _check_max_shot(max_shot_s: Optional[float]) -> None:
    if max_shot_s is not None and not (math.isfinite(max_shot_s) and max_shot_s > 0):
        raise UsageError(f"--max-shot must be a number of seconds greater than 0, got {max_shot_s:g}")


def check_timeline(window_s: Optional[float], stride_s: Optional[float], *, shots: bool = False) -> None:
    """UsageError unless ``--window`` (and ``--stride``, which needs it) are positive seconds;
    with ``shots`` (``--window shots``) there is no ``window_s`` and no stride."""
    if shots:
        if stride_s is not None:
            raise UsageError("--stride cannot be combined with --window shots: each shot is a window")
        return
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


def plan_shot_windows(shots: Sequence[Shot], max_shot_s: Optional[float] = DEFAULT_MAX_SHOT_S, *,
                      first_index: int = 0) -> list[Window]:
    """A window per shot (:mod:`stamcli.shots`), numbered in order from ``first_index``; a shot longer than
    ``max_shot_s`` (None: no limit) is cut into the fewest equal parts no longer than that
    (``k = ceil(L / M)`` parts of ``L`` frames, ``M = round(max_shot_s * fps)``; part ``j`` starts
    at frame ``floor(j * L / k)`` of the shot).  Every part carries its shot's number."""
    _check_max_shot(max_shot_s)
    windows: list[Window] = []
    for shot in shots:
        length = shot.end - shot.start
        most = length if max_shot_s is None else max(1, round(max_shot_s * shot.fps))
        parts = max(1, -(-length // most))
        bounds = [shot.start + j * length // parts for j in range(parts + 1)]
        windows += [Window(first_index + len(windows) + j, a, b, shot.fps, shot.index)
                    for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    return windows


def window_indices(window: Window, num_frames: int) -> list[int]:
    """The ``num_frames`` source frames sampled in ``window``: :func:`sample_indices` inside it."""
    return [window.start + i for i in sample_indices(window.end - window.start, num_frames)]


def segments(spans: Sequence[tuple[float, float]], duration_s: float) -> list[tuple[float, float]]:
    """The part of ``[0, duration_s]`` each window owns: the instants nearest its centre, kept
    inside the windows where they meet.

    ``spans`` are the windows' ``(start_s, end_s)`` in order; the segments tile the video (the
    first starts at 0, the last ends at ``duration_s``, each ends where the next begins).  Two
    neighbouring windows part at the midpoint of their centres, moved into the stretch between
    one's end and the other's start (the overlap of overlapping windows, the gap between windows
    with a gap): so where windows do not overlap, such as shots or back-to-back windows with a
    shorter tail, each window owns exactly its own span.  Windows of equal length always part
    at the midpoint of their centres.
    """
    if not spans:
        return []
    end = max(duration_s, 0.0)
    inner = []
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        lo, hi = min(b0, a1), max(b0, a1)
        inner.append(min(max((a0 + b0 + a1 + b1) / 4, lo), hi))
    bounds = [min(max(b, 0.0), end) for b in (0.0, *inner, end)]
    return list(zip(bounds, bounds[1:]))


# ---------------------------------------------------------------------------- decoding


class _Open:
    """A window being filled: the frames it samples if it is full, or if it is the header's tail."""

    def __init__(self, index: int, start: int, length: int, num_frames: int, header_n: Optional[int]):
        self.index, self.start = index, start
        self.full = [start + i for i in sample_indices(length, num_frames)]
        self.tail = None  # sampled for the tail the header predicts, [start, header_n)
        if header_n is not None and start < header_n < start + length:
            self.tail = [start + i for i in sample_indices(header_n - start, num_frames)]
        self.wanted = set(self.full) | set(self.tail or ())


class TimelineReader:
    """The windows of one video (a file, or a URL read from a temporary local copy) with their ``F``
    preprocessed frames, decoding it once.

    ``decoder``: ``auto``, ``pyav`` or ``opencv`` (:mod:`stamcli.decode.decoders`).  Iterating
    yields ``(Window, Clip)`` as each window fills.  Afterwards :attr:`frame_count` is the number
    of decodable frames, :attr:`duration_s` the video's duration and :attr:`decoder` the backend
    that read it (``"pyav"`` or ``"opencv"``, see the module docstring).  :attr:`peak_buffered` is
    the most preprocessed frames held at once (it depends on the window, stride and ``F``, not on
    the video's length; with ``--window shots``: decoded frames of the open shot, at most
    :attr:`ShotWindows.buffer_mb`).

    With ``shots`` (``--window shots``) every frame is decoded once, handed to the shot detector
    and kept (as decoded) until its shot ends; a shot's windows are handed on, their sampled
    frames preprocessed, as soon as its end is certain (:attr:`shot_list` holds the shots
    afterwards; :attr:`reread` counts the windows a second pass read).  ``on_frame(k)`` is called
    for each frame of that pass (to show progress, or to stop it by raising).
    """

    def __init__(self, path, num_frames: int, img_size: int, window_s: Optional[float],
                 stride_s: Optional[float] = None, *, threads: int = 0, decoder: str = "auto",
                 shots: Optional[ShotWindows] = None, on_frame: Optional[Callable[[int], None]] = None):
        check_timeline(window_s, stride_s, shots=shots is not None)
        if shots is not None:
            shots.check()
        self.path, self.num_frames, self.img_size = path, num_frames, img_size
        self.window_s, self.stride_s, self.threads = window_s, stride_s, threads
        self.choice = decoder  # the backends allowed: "auto", "pyav" or "opencv"
        self.shots, self.on_frame = shots, on_frame
        self.shot_list: Optional[ShotList] = None  #: the shots found (``--window shots``)
        self.reread = 0  #: windows read in a second pass (from a shot longer than ShotWindows.buffer_mb)
        self.frame_count: Optional[int] = None
        self.fps = 0.0
        self.peak_buffered = 0
        self.grabs = 0  # frames decoded
        self.retrieved = 0  # frames converted and preprocessed (those some window samples)
        self.decoder: Optional[str] = None  # what decoded it: "pyav" or "opencv" (as Clip.decoder)

    @property
    def duration_s(self) -> float:
        return (self.frame_count or 0) / self.fps if self.fps > 0 else 0.0

    @property
    def shot_count(self) -> Optional[int]:
        """The number of shots found (``--window shots``), else None."""
        return None if self.shot_list is None else len(self.shot_list.shots)

    def __iter__(self) -> Iterator[tuple[Window, Clip]]:
        with local_input(self.path) as local:  # a URL is read from a temporary local copy
            yield from decode_with_fallback(self.choice, local, lambda backend: self._windows(backend, local))

    def _windows(self, backend: Backend, local) -> Iterator[tuple[Window, Clip]]:
        """Every window of the file ``local``, read by ``backend``: PyAV knows the exact frame count
        before decoding and plans every window up front; OpenCV walks the video and checks the
        header's count.  Shots are found in the same pass that reads their frames (:meth:`_shot_windows`)."""
        self.frame_count, self.peak_buffered, self.grabs, self.retrieved = None, 0, 0, 0  # PyAV may have begun
        if self.shots is not None:
            return self._shot_windows(backend, local)
        return self._planned(local) if backend.name == "pyav" else self._streamed(local)

    def _clip(self, window: Window, indices: list[int], frames: list[torch.Tensor], info: VideoInfo) -> Clip:
        return Clip(path=os.fsdecode(self.path), frames=torch.stack(frames), indices=indices,
                    frame_count=window.end - window.start, fps=info.fps, duration_s=window.end_s - window.start_s,
                    width=info.width, height=info.height, rotation=info.rotation, decoder=self.decoder)

    def _window_clip(self, window: Window, indices: list[int], buffer: dict, need: Counter, sampled,
                     info: VideoInfo) -> Clip:
        """The window's clip from the buffered frames; frames no open window samples any more are dropped."""
        clip = self._clip(window, indices, [buffer[j] for j in indices], info)
        for j in sampled:
            need[j] -= 1
            if need[j] <= 0:
                need.pop(j, None)
                buffer.pop(j, None)
        return clip

    def _fill(self, windows: list[Window], frames: Callable[[list[int]], Iterator[tuple[int, torch.Tensor]]],
              info: Callable[[], VideoInfo], count: Callable[[], None]) -> Iterator[tuple[Window, Clip]]:
        """Planned ``windows`` from ``frames(wanted)``, which yields the wanted frames in increasing
        order: a window is handed on as soon as its last sampled frame is out (windows stay in order)."""
        plans = [window_indices(w, self.num_frames) for w in windows]
        need = Counter(j for indices in plans for j in set(indices))
        buffer: dict[int, torch.Tensor] = {}
        ready = 0  # windows handed on
        for k, frame in frames(sorted(need)):
            count()
            buffer[k] = frame
            self.peak_buffered = max(self.peak_buffered, len(buffer))
            while ready < len(windows) and max(plans[ready]) <= k:
                window, indices = windows[ready], plans[ready]
                ready += 1
                yield window, self._window_clip(window, indices, buffer, need, set(indices), info())

    def _planned(self, local) -> Iterator[tuple[Window, Clip]]:
        """PyAV (:class:`SparseFrameStream`): the exact frame count first, so every window is planned
        up front and only their sampled frames (and what those are predicted from) are decoded."""
        with SparseFrameStream(local, self.img_size, threads=self.threads) as stream:
            if stream.fps <= 0:
                raise Unsupported("no frame rate")  # OpenCV's path explains it
            self.decoder, self.fps, self.frame_count = "pyav", stream.fps, stream.frame_count
            windows = plan_windows(stream.frame_count, stream.fps, self.window_s, self.stride_s)
            yield from self._fill(windows, stream.frames, lambda: stream.info, self._counter(stream))

    def _counter(self, stream) -> Callable[[], None]:
        """Copies ``stream``'s counts of decoded and preprocessed frames into :attr:`grabs` and :attr:`retrieved`."""
        def count():
            self.grabs = stream.decoded if isinstance(stream, SparseFrameStream) else stream.grabs
            self.retrieved = stream.retrieved
        return count

    def _shot_windows(self, backend: Backend, local) -> Iterator[tuple[Window, Clip]]:
        """``--window shots`` in one pass: every frame decoded once, pushed to a
        :class:`~stamcli.shots.ShotDetector` and kept as decoded until the shot it belongs to
        ends; the windows of a shot are handed on once the detector can no longer move its end,
        and only the frames they sample are preprocessed.

        An open shot whose frames outgrow :attr:`ShotWindows.buffer_mb` stops the keeping for
        the rest of the video: its windows and all later ones are planned as the shots come and
        read in a second pass of the same backend (PyAV: only their sampled frames)."""
        with every_frame_stream(backend, local, self.img_size, self.threads) as (stream, fps):
            self.decoder, self.fps = backend.name, fps
            detector = ShotDetector(fps, self.shots.detection)
            planned: list[Window] = []  # every window so far; those from `deferred` on wait for a second pass
            deferred: Optional[int] = None
            buffer: dict[int, np.ndarray] = {}  # frame -> upright BGR as decoded, from the open shot's first frame
            budget = self.shots.buffer_mb * 2**20
            count = self._counter(stream)

            def ended(shots: list[Shot]) -> Iterator[tuple[Window, Clip]]:
                nonlocal deferred
                for shot in shots:
                    windows = plan_shot_windows([shot], self.shots.max_shot_s, first_index=len(planned))
                    planned.extend(windows)
                    if deferred is not None or any(j not in buffer for j in range(shot.start, shot.end)):
                        deferred = windows[0].index if deferred is None else deferred
                        continue
                    for window in windows:
                        indices = window_indices(window, self.num_frames)
                        frames = {j: stream.preprocess(buffer[j]) for j in set(indices)}
                        yield window, self._clip(window, indices, [frames[j] for j in indices], stream.info)
                    for j in range(shot.start, shot.end):
                        del buffer[j]

            for k, bgr in stream.every_frame():
                if self.on_frame is not None:
                    self.on_frame(k)
                detector.push(bgr)
                if deferred is None:
                    buffer[k] = bgr
                    self.peak_buffered = max(self.peak_buffered, len(buffer))
                yield from ended(detector.finished())
                count()
                if deferred is None and len(buffer) * bgr.nbytes > budget:
                    buffer.clear()  # the open shot's windows are read again, and every later one
                    deferred = len(planned)
            if detector.frames == 0:
                raise VideoError(f"cannot read video {one_line(self.path)}: no decodable video frames")
            shots = detector.shots()
            yield from ended(shots[detector.handed:])
            count()
            self.frame_count = detector.frames
            self.shot_list = ShotList(shots, detector.frames, fps, backend.name)
        if deferred is not None:
            self.reread = len(planned) - deferred
            yield from self._reread(planned[deferred:], backend.name == "pyav", local)

    def _reread(self, windows: list[Window], pyav: bool, local) -> Iterator[tuple[Window, Clip]]:
        """The second pass over planned shot windows of the file ``local``, with the backend of the first."""
        if pyav:
            with SparseFrameStream(local, self.img_size, threads=self.threads) as stream:
                if stream.frame_count != self.frame_count:
                    raise Unsupported("the second pass found other frames")
                yield from self._fill(windows, stream.frames, lambda: stream.info, self._counter(stream))
            return
        with FrameStream(local, self.img_size, threads=self.threads) as stream:

            def frames(wanted: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
                for i, frame in stream.frames(set(wanted).__contains__):
                    if frame is not None:
                        yield i, frame

            filled = 0
            for item in self._fill(windows, frames, lambda: stream.info, self._counter(stream)):
                filled += 1
                yield item
            if filled < len(windows):
                raise VideoError(f"cannot read video {stream.info.path}: it ended at another frame when read "
                                 "again after finding its shots")

    def _streamed(self, local) -> Iterator[tuple[Window, Clip]]:
        """OpenCV (:class:`FrameStream`): every frame decoded in turn, windows opened as the stream
        reaches them and planned from the header's count, which the stream's end then checks."""
        with FrameStream(local, self.img_size, threads=self.threads) as stream:
            info = stream.info
            if info.fps <= 0:
                raise VideoError(f"cannot read video {info.path}: its header has no frame rate, "
                                 "needed to place timeline windows in seconds")
            self.decoder, self.fps = "opencv", info.fps
            length, stride = window_lengths(info.fps, self.window_s, self.stride_s)
            opened: list[_Open] = []  # by start, which is also the order they fill in
            need: Counter = Counter()  # frame -> open windows that sample it
            buffer: dict[int, torch.Tensor] = {}
            next_k, last_end = 0, None

            def wanted(i: int) -> bool:
                nonlocal next_k
                while next_k * stride <= i:
                    opened.append(_Open(next_k, next_k * stride, length, self.num_frames, info.frame_count))
                    need.update(opened[-1].wanted)
                    next_k += 1
                return need[i] > 0

            def close(window: _Open, end: int, indices: list[int]) -> tuple[Window, Clip]:
                w = Window(window.index, window.start, end, info.fps)
                return w, self._window_clip(w, indices, buffer, need, window.wanted, info)

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
                    indices = [got[j] for j in sample_indices(len(got), self.num_frames)] if got else []
                if indices:
                    last_end = n
                    yield close(window, n, indices)
            if last_end is None:
                raise VideoError(f"cannot read video {info.path}: no timeline window could be filled "
                                 f"from its {n} decodable frames")


# ---------------------------------------------------------------------------- scoring


_END = object()


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` into ``out`` once there is room; False if ``stop`` is set first."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _get(source: queue.Queue, stop: threading.Event):
    """The next item of ``source``; None if ``stop`` is set first."""
    while not stop.is_set():
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            pass
    return None


class _Stopped(Exception):
    """The run is stopping (Ctrl-C): a decode worker leaves the video it is reading."""


@dataclass
class _Item:
    """What the decode thread hands over: a filled window, or the end of a video (its reader or
    error); with the Ray engine, a video's last window and its end in one (see
    :func:`stamcli.ray_tasks.read_windows`)."""

    path: str
    window: Optional[Window] = None
    clip: Optional[Clip] = None
    reader: Optional[TimelineReader] = None
    error: Optional[str] = None

    @property
    def ends(self) -> bool:
        """Whether the video's record follows this item (its summary, or its error)."""
        return self.reader is not None or self.error is not None


class TimelinePredictor:
    """Tags every window of each video with a :class:`~stamcli.engine.Predictor`'s model.

    :meth:`predict` yields, per video in input order, its window records (``"type": "window"``)
    and then its video record (``"type": "video"``: the summary, or the error).  The predictor's
    decode workers (``--workers``) each decode one video at a time, up to that many videos at once
    (one thread cannot feed a GPU), a bounded number of windows ahead; windows are handed on in
    input order and scored ``--batch-size`` at a time, across videos, on the predictor's model streams.

    >>> timeline = TimelinePredictor(Predictor(stamcli.load_model("stam_16")), window_s=10, stride_s=5)
    >>> for record in timeline.predict(["match.mp4"]): print(record["start_s"], record["predictions"][0])
    """

    def __init__(self, predictor: Predictor, window_s: Optional[float], stride_s: Optional[float] = None, *,
                 shots: Optional[ShotWindows] = None):
        check_timeline(window_s, stride_s, shots=shots is not None)
        self.predictor, self.window_s, self.stride_s, self.shots = predictor, window_s, stride_s, shots
        self.peak_buffered = 0  #: the most frames any video's reader held at once
        self._tops: dict[str, list[tuple[Window, Optional[dict]]]] = {}  # scored windows of unfinished videos

    def reader(self, path: str, on_frame: Optional[Callable[[int], None]] = None) -> TimelineReader:
        spec = self.predictor.clip_spec  # threads: as Predictor, one codec thread per worker
        return TimelineReader(path, spec.num_frames, spec.img_size, self.window_s, self.stride_s,
                              threads=spec.threads, decoder=spec.decoder, shots=self.shots, on_frame=on_frame)

    def predict(self, paths: Iterable[str]) -> Iterator[dict]:
        """Window records and a video record for each path (see the README for the schema)."""
        predictor = self.predictor
        items: queue.Queue = queue.Queue(maxsize=(predictor.streams + 1) * predictor.options.batch_size)
        stop = threading.Event()
        model_threads = torch.get_num_threads()
        thread = threading.Thread(target=self._decode, args=(list(paths), items, stop), daemon=True,
                                  name="stam-timeline-decode")
        thread.start()
        try:
            with ModelStreams(predictor.streams, model=predictor.model) as streams:
                for batch, probabilities in streams.map(self._score, self._batches(items)):
                    yield from self._records(batch, probabilities)
        finally:
            stop.set()
            if thread.is_alive():
                abort_downloads()  # a run cut short: a running download stops now, not at its last byte
            thread.join()
            torch.set_num_threads(model_threads)  # the default that threads started later inherit

    def _batches(self, items: queue.Queue) -> Iterator[Union[list[_Item], object]]:
        """The decoded items in order, cut after every ``--batch-size`` windows (and at the end).

        A video's end that comes when no window is waiting for a batch (its last window was in the
        batch just cut) goes on at once, in a batch of its own with nothing to score, and
        :data:`~stamcli.parallel.WAITING` while no item comes lets the model streams hand on the
        batches they have scored: a video's record comes as soon as its last window is scored, not
        once the next video's windows fill more batches (a Ctrl-C in between would lose it, and
        ``--resume`` read the whole video again)."""
        pending: list[_Item] = []
        while True:
            try:
                item = items.get(timeout=0.1)
            except queue.Empty:
                yield WAITING
                continue
            if item is _END:
                break
            pending.append(item)
            windows = sum(p.window is not None for p in pending)
            if windows >= self.predictor.options.batch_size or (windows == 0 and item.ends):
                yield pending
                pending = []
        if pending:
            yield pending

    def _decode(self, paths: list[str], items: queue.Queue, stop: threading.Event) -> None:
        """The decode thread: hands on every window of every video, then its end, then ``_END``, in
        input order, while up to ``workers`` videos decode at once (each into a queue of its own)."""
        workers = self.predictor.workers
        ahead = self.predictor.options.batch_size  # windows a video may decode before its turn
        started: deque[queue.Queue] = deque()  # the queues of the videos being decoded, in input order
        halt = threading.Event()  # tells the workers to stop
        todo = iter(paths)
        with ThreadPoolExecutor(workers, thread_name_prefix="stam-timeline-decode",
                                initializer=single_threaded_decode) as pool:
            try:
                while True:
                    while len(started) < workers and (path := next(todo, None)) is not None:
                        started.append(queue.Queue(maxsize=ahead))
                        pool.submit(self._decode_video, path, started[-1], halt, stop)
                    if not started:
                        return
                    video = started.popleft()
                    while (item := _get(video, stop)) is not None:
                        if not _put(items, item, stop):
                            return
                        if item.ends:
                            break
                    else:
                        return
            finally:
                halt.set()  # workers still decoding (the run ended early) stop at their next window
                _put(items, _END, stop)

    def _decode_video(self, path: str, out: queue.Queue, stop: threading.Event, run_stop: threading.Event) -> None:
        """A decode worker: every window of the video at ``path``, then its end item (its reader or
        error). ``stop``: the decode thread is done; ``run_stop``: the run is stopping (Ctrl-C)."""

        def stopping(_frame: int) -> None:  # the shot detection pass reads a whole video: stop it on Ctrl-C
            if run_stop.is_set() or stop.is_set():
                raise _Stopped

        reader = None
        try:
            reader = self.reader(path, on_frame=stopping)
            for window, clip in reader:
                if not _put(out, _Item(path, window, clip), stop):
                    return
            end = _Item(path, reader=reader)
        except _Stopped:
            return
        except Exception as err:  # one bad video never stops the run
            end = _Item(path, error=error_reason(err))
        if reader is not None:
            self.peak_buffered = max(self.peak_buffered, reader.peak_buffered)
        _put(out, end, stop)

    def _score(self, batch: list[_Item]) -> Optional[torch.Tensor]:
        """The probabilities of the batch's windows (None when it has none); runs on a model stream."""
        clips = [item.clip for item in batch if item.window is not None]
        return self.predictor.probabilities(clips) if clips else None

    def _records(self, batch: list[_Item], probabilities: Optional[torch.Tensor]) -> Iterator[dict]:
        """The batch's records, in order: a record per window, a summary (or error) per finished video."""
        probabilities = iter(probabilities if probabilities is not None else ())
        model = self.predictor.model.name
        for item in batch:
            if item.window is not None:
                predictions = self.predictor.top_predictions(next(probabilities))
                top = predictions[0] if predictions else None  # None: no label reached --min-score/thresholds
                self._tops.setdefault(item.path, []).append((item.window, top))
                w = item.window
                shot = {} if self.shots is None else {"shot": w.shot}
                yield make_record(item.path, predictions=predictions, frames=w.end - w.start, model=model,
                                  duration_s=w.end_s - w.start_s, fps=w.fps, type="window", window=w.index,
                                  start_s=w.start_s, end_s=w.end_s, **shot)
            if not item.ends:
                continue
            tops = self._tops.pop(item.path, [])
            if item.error is not None:
                yield error_record(item.path, item.error, model=model, type="video", window=None, start_s=None,
                                   end_s=None)
            else:
                yield self._summary(item.path, item.reader, tops)

    def _summary(self, path: str, reader: TimelineReader, tops: list[tuple[Window, Optional[dict]]]) -> dict:
        """The video record: labels ranked by the seconds where they are the top-1 label (the seconds of
        windows with no label count for none, so the shares may sum to less than 1)."""
        duration = reader.duration_s
        seconds: dict[tuple[str, int], float] = {}
        for (a, b), (_, top) in zip(segments([(w.start_s, w.end_s) for w, _ in tops], duration), tops):
            if top is None:
                continue
            key = (top["label"], top["index"])
            seconds[key] = seconds.get(key, 0.0) + (b - a)
        ranked = sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0][1]))
        predictions = [{"label": label, "index": index, "score": s / duration if duration > 0 else 0.0}
                       for (label, index), s in ranked[: self.predictor.top_k]]
        coverage = [{"label": label, "index": index, "seconds": s} for (label, index), s in ranked]
        shots = {} if reader.shot_count is None else {"shots": reader.shot_count}
        return make_record(path, predictions=predictions, frames=reader.frame_count, model=self.predictor.model.name,
                           duration_s=duration, fps=reader.fps, type="video", window=None, start_s=0.0,
                           end_s=duration, windows=len(tops), **shots, coverage=coverage)
