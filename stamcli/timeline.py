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
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import torch

from .decode import Clip, FrameStream, SparseFrameStream, Unsupported, VideoInfo, decode_with_fallback, sample_indices
from .decode.backend import Backend
from .engine import Predictor, error_reason
from .errors import UsageError, VideoError
from .parallel import ModelStreams, single_threaded_decode
from .storage import abort_downloads, local_input
from .writers import error_record, make_record

__all__ = ["Window", "window_lengths", "plan_windows", "window_indices", "TimelineReader", "TimelinePredictor",
           "segments", "check_timeline", "TIMELINE_COLUMNS"]

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


def window_indices(window: Window, num_frames: int) -> list[int]:
    """The ``num_frames`` source frames sampled in ``window``: :func:`sample_indices` inside it."""
    return [window.start + i for i in sample_indices(window.end - window.start, num_frames)]


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
    the video's length).
    """

    def __init__(self, path, num_frames: int, img_size: int, window_s: float, stride_s: Optional[float] = None, *,
                 threads: int = 0, decoder: str = "auto"):
        check_timeline(window_s, stride_s)
        self.path, self.num_frames, self.img_size = path, num_frames, img_size
        self.window_s, self.stride_s, self.threads = window_s, stride_s, threads
        self.choice = decoder  # the backends allowed: "auto", "pyav" or "opencv"
        self.frame_count: Optional[int] = None
        self.fps = 0.0
        self.peak_buffered = 0
        self.grabs = 0  # frames decoded
        self.retrieved = 0  # frames converted and preprocessed (those some window samples)
        self.decoder: Optional[str] = None  # what decoded it: "pyav" or "opencv" (as Clip.decoder)

    @property
    def duration_s(self) -> float:
        return (self.frame_count or 0) / self.fps if self.fps > 0 else 0.0

    def __iter__(self) -> Iterator[tuple[Window, Clip]]:
        with local_input(self.path) as local:  # a URL is read from a temporary local copy
            yield from decode_with_fallback(self.choice, local, lambda backend: self._windows(backend, local))

    def _windows(self, backend: Backend, local) -> Iterator[tuple[Window, Clip]]:
        """Every window of the file ``local``, read by ``backend``: PyAV knows the exact frame count before
        decoding and plans every window up front; OpenCV walks the video and checks the header's count."""
        return self._planned(local) if backend.name == "pyav" else self._streamed(local)

    def _window_clip(self, window: Window, indices: list[int], buffer: dict, need: Counter, sampled,
                     info: VideoInfo) -> Clip:
        """The window's clip from the buffered frames; frames no open window samples any more are dropped."""
        frames = torch.stack([buffer[j] for j in indices])
        for j in sampled:
            need[j] -= 1
            if need[j] <= 0:
                need.pop(j, None)
                buffer.pop(j, None)
        return Clip(path=os.fsdecode(self.path), frames=frames, indices=indices, frame_count=window.end - window.start,
                    fps=info.fps, duration_s=window.end_s - window.start_s, width=info.width, height=info.height,
                    rotation=info.rotation, decoder=self.decoder)

    def _planned(self, local) -> Iterator[tuple[Window, Clip]]:
        """PyAV (:class:`SparseFrameStream`): the exact frame count first, so every window is planned
        up front and only their sampled frames (and what those are predicted from) are decoded.
        A window is handed on as soon as its last sampled frame is out (windows stay in order)."""
        with SparseFrameStream(local, self.img_size, threads=self.threads) as stream:
            if stream.fps <= 0:
                raise Unsupported("no frame rate")  # OpenCV's path explains it
            self.decoder, self.fps, self.frame_count = "pyav", stream.fps, stream.frame_count
            windows = plan_windows(stream.frame_count, stream.fps, self.window_s, self.stride_s)
            plans = [window_indices(w, self.num_frames) for w in windows]
            need = Counter(j for indices in plans for j in set(indices))
            buffer: dict[int, torch.Tensor] = {}
            ready = 0  # windows handed on
            for k, frame in stream.frames(sorted(need)):
                self.grabs, self.retrieved = stream.decoded, stream.retrieved
                buffer[k] = frame
                self.peak_buffered = max(self.peak_buffered, len(buffer))
                while ready < len(windows) and max(plans[ready]) <= k:
                    window, indices = windows[ready], plans[ready]
                    ready += 1
                    yield window, self._window_clip(window, indices, buffer, need, set(indices), stream.info)

    def _streamed(self, local) -> Iterator[tuple[Window, Clip]]:
        """OpenCV (:class:`FrameStream`): every frame decoded in turn, windows opened as the stream
        reaches them and planned from the header's count, which the stream's end then checks."""
        self.frame_count, self.peak_buffered, self.grabs, self.retrieved = None, 0, 0, 0  # PyAV may have begun
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
    ``--batch-size`` at a time, across videos, on the predictor's model streams.

    >>> timeline = TimelinePredictor(Predictor(stamcli.load_model("stam_16")), window_s=10, stride_s=5)
    >>> for record in timeline.predict(["match.mp4"]): print(record["start_s"], record["predictions"][0])
    """

    def __init__(self, predictor: Predictor, window_s: float, stride_s: Optional[float] = None):
        check_timeline(window_s, stride_s)
        self.predictor, self.window_s, self.stride_s = predictor, window_s, stride_s
        self.peak_buffered = 0  #: the most frames any video's reader held at once
        self._tops: dict[str, list[tuple[Window, Optional[dict]]]] = {}  # scored windows of unfinished videos

    def reader(self, path: str) -> TimelineReader:
        spec = self.predictor.clip_spec
        return TimelineReader(path, spec.num_frames, spec.img_size, self.window_s, self.stride_s, decoder=spec.decoder)

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

    def _batches(self, items: queue.Queue) -> Iterator[list[_Item]]:
        """The decoded items in order, cut after every ``--batch-size`` windows (and at the end)."""
        pending: list[_Item] = []
        while (item := items.get()) is not _END:
            pending.append(item)
            if sum(p.window is not None for p in pending) >= self.predictor.options.batch_size:
                yield pending
                pending = []
        if pending:
            yield pending

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

        single_threaded_decode()
        try:
            for path in paths:
                reader = self.reader(path)
                try:
                    for window, clip in reader:
                        if not put(_Item(path, window, clip)):
                            return
                    end = _Item(path, reader=reader)
                except Exception as err:  # one bad video never stops the run
                    end = _Item(path, error=error_reason(err))
                self.peak_buffered = max(self.peak_buffered, reader.peak_buffered)
                if not put(end):
                    return
        finally:
            put(_END)

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
        return make_record(path, predictions=predictions, frames=reader.frame_count, model=self.predictor.model.name,
                           duration_s=duration, fps=reader.fps, type="video", window=None, start_s=0.0,
                           end_s=duration, windows=len(tops), coverage=coverage)
