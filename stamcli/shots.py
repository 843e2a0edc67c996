"""Shot boundaries: where a video cuts from one camera shot to the next, found with PySceneDetect.

``stam predict --window shots`` tags each shot instead of fixed windows.  Finding the shots reads
every frame: :func:`detect_shots` decodes the video front to back (PyAV first, OpenCV where PyAV
gives up, as for timelines), shrinks each frame to :attr:`ShotOptions.width` pixels wide and
hands it to a PySceneDetect detector, which reports the first frame of each new shot.

The default detector and threshold were chosen by measurement on generated videos (hard cuts
between different colours, between textures of the same mean colour, inside fast pans, between
dark low-contrast scenes, 2 s shots, cross-dissolves and fades through black, a whip pan and
flashes inside shots; each at three x264 qualities; see ``benchmarks/README.md``):
PySceneDetect's ``AdaptiveDetector`` (threshold 3, :data:`ADAPTIVE_MIN_CONTENT_VAL`) found
every hard cut on its frame, no gradual transition gave more than one cut, and its only false
cut was a key frame's jump in a heavily compressed dark scene; as well on frames 128 pixels wide
(:data:`DETECTION_WIDTH`) as on 256.

Flashes: a photographer's flash (or a cut away and back within :data:`FLASH_S`) makes every
detector report a cut.  :class:`ShotDetector` checks each reported cut against the frames after
it and drops it when the picture comes back (:data:`FLASH_RATIO`).

Very short shots: a cut closer than :attr:`ShotOptions.min_shot_s` (0.5 s) to the cut before
it is not reported (PySceneDetect's ``min_scene_len``), so a shot shorter than that joins the
shot after it; a last shot shorter than that joins the shot before it
(:func:`shots_from_cuts`).  Every shot of a video longer than ``min_shot_s`` is therefore at
least that long.

Times are ``frame / fps`` with the header's nominal frame rate, as for fixed windows.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from .decode import FrameStream, SparseFrameStream, Unsupported, decode_with_fallback
from .decode.files import one_line
from .errors import StamError, UsageError, VideoError

__all__ = ["FrameSpan", "Shot", "ShotOptions", "ShotList", "DETECTORS", "DETECTION_WIDTH", "ShotDetector", "shots_from_cuts",
           "detect_shots", "every_frame_stream", "shrink", "shot_spans"]


@dataclass(frozen=True)
class FrameSpan:
    """Frames ``[start, end)`` of a video, the ``index``-th of its kind; times are ``frame / fps``."""

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


@dataclass(frozen=True)
class Shot(FrameSpan):
    """Frames ``[start, end)`` of a video: its ``index``-th shot."""


def _content(threshold: float, min_frames: int, **kwargs):
    from scenedetect import ContentDetector

    return ContentDetector(threshold=threshold, min_scene_len=min_frames, **kwargs)


def _adaptive(threshold: float, min_frames: int, **kwargs):
    from scenedetect import AdaptiveDetector

    kwargs.setdefault("min_content_val", ADAPTIVE_MIN_CONTENT_VAL)
    return AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=min_frames, **kwargs)


def _histogram(threshold: float, min_frames: int, **kwargs):
    from scenedetect import HistogramDetector

    return HistogramDetector(threshold=threshold, min_scene_len=min_frames, **kwargs)


def _hash(threshold: float, min_frames: int, **kwargs):
    from scenedetect import HashDetector

    return HashDetector(threshold=threshold, min_scene_len=min_frames, **kwargs)


def _threshold(threshold: float, min_frames: int, **kwargs):
    from scenedetect import ThresholdDetector

    return ThresholdDetector(threshold=threshold, min_scene_len=min_frames, **kwargs)


#: PySceneDetect's detectors by name: ``(factory(threshold, min_frames, **kwargs), default threshold)``.
#: The defaults are PySceneDetect's own (``adaptive``, the one chosen, with
#: :data:`ADAPTIVE_MIN_CONTENT_VAL`; see the module docstring).
DETECTORS: dict[str, tuple[Callable, float]] = {
    "adaptive": (_adaptive, 3.0),
    "content": (_content, 27.0),
    "histogram": (_histogram, 0.05),
    "hash": (_hash, 0.395),
    "threshold": (_threshold, 12.0),
}

#: Frames are shrunk to this width for detection: as accurate as PySceneDetect's 256 on the generated
#: test videos at half the detector's cost, where 64 missed a cut (``python -m benchmarks.shots accuracy``;
#: benchmarks/README.md); TransNetV2 works at 48x27.
DETECTION_WIDTH = 128

#: The AdaptiveDetector's ``min_content_val`` (PySceneDetect's default: 15): the least change
#: between two frames that can be a cut.  At 15 a cut between two dark, low-contrast scenes of
#: the same mean colour was missed; 10 found it with no more false cuts (benchmarks/README.md).
ADAPTIVE_MIN_CONTENT_VAL = 10.0


@dataclass(frozen=True)
class ShotOptions:
    """How shots are found: PySceneDetect's ``detector`` at ``threshold`` (None: its default in
    :data:`DETECTORS`), no two cuts closer than ``min_shot_s``, on frames ``width`` pixels wide;
    ``detector_args``: more keyword arguments for the detector, as ``(name, value)`` pairs."""

    detector: str = "adaptive"
    threshold: Optional[float] = None
    min_shot_s: float = 0.5
    width: int = DETECTION_WIDTH
    detector_args: tuple[tuple[str, object], ...] = ()

    def check(self) -> None:
        if self.detector not in DETECTORS:
            raise UsageError(f"unknown shot detector '{self.detector}': choose one of {', '.join(DETECTORS)}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise UsageError(f"the shot detector's threshold must be a number greater than 0, got {self.threshold:g}")
        if not (math.isfinite(self.min_shot_s) and self.min_shot_s >= 0):
            raise UsageError(f"the shortest shot must be 0 or more seconds, got {self.min_shot_s:g}")
        if self.width < 16:
            raise UsageError(f"shot detection needs frames at least 16 pixels wide, got {self.width}")

    def min_frames(self, fps: float) -> int:
        """:attr:`min_shot_s` in whole frames (at least 1)."""
        return max(1, round(self.min_shot_s * fps))


def _scenedetect():
    try:
        import scenedetect
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise StamError("shot detection needs PySceneDetect: pip install scenedetect-headless") from None
    return scenedetect


#: A reported cut is a flash (a photographer's flash, a strobe, a few frames cut in) and no cut
#: when, within this many seconds after it, a frame looks like the frame before the cut again:
#: its distance to that frame is under ``FLASH_RATIO`` times the jump at the cut.
FLASH_S = 0.2
FLASH_RATIO = 0.5


def picture_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two HSV images over the pixels and channels (0-255): the
    ``content_val`` of PySceneDetect's ContentDetector with its default weights."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


class ShotDetector:
    """Cuts in a stream of frames: :meth:`push` each decoded BGR frame in order, then :meth:`shots`.

    Frames wider than :attr:`ShotOptions.width` are shrunk to it first (aspect kept).  Each cut the
    PySceneDetect detector reports is checked against the frames after it (:data:`FLASH_S`):
    flashes go to :attr:`flashes` instead of :meth:`shots`.  Only the last few shrunk frames are
    kept, so memory does not grow with the video.
    """

    def __init__(self, fps: float, options: ShotOptions = ShotOptions()):
        options.check()
        if not fps > 0:
            raise VideoError("shot detection needs the video's frame rate, and its header has none")
        self.fps, self.options = float(fps), options
        self._timecode = _scenedetect().FrameTimecode
        factory, default = DETECTORS[options.detector]
        threshold = default if options.threshold is None else options.threshold
        self._detector = factory(threshold, options.min_frames(fps), **dict(options.detector_args))
        self.frames = 0  #: frames pushed so far
        self.flashes: list[int] = []  #: cuts the detector reported that were flashes
        self._cuts: list[int] = []
        self._pending: list[int] = []  # reported cuts waiting for the frames after them
        self._after = max(1, round(FLASH_S * fps))
        self._keep = max(1, self._detector.event_buffer_length) + self._after + 2
        self._recent: dict[int, np.ndarray] = {}  # frame number -> its shrunk HSV picture
        self.handed = 0  #: shots :meth:`finished` returned so far
        self._checked = 0  # cuts :meth:`finished` has looked at
        self._start = 0  # first frame of the shot after the last one handed on

    def push(self, bgr: np.ndarray) -> None:
        """The next frame (BGR ``uint8``, any size)."""
        import cv2

        small = shrink(bgr, self.options.width)
        self._recent[self.frames] = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        self._recent.pop(self.frames - self._keep, None)
        cuts = self._detector.process_frame(self._timecode(self.frames, self.fps), small)
        self._pending.extend(cut.frame_num for cut in cuts)
        self.frames += 1
        self._settle()

    def _settle(self, final: bool = False) -> None:
        """Decide the pending cuts whose frames after them are in (all of them when ``final``)."""
        for cut in [c for c in self._pending if final or c + self._after < self.frames]:
            self._pending.remove(cut)
            (self.flashes if self._is_flash(cut) else self._cuts).append(cut)

    def _is_flash(self, cut: int) -> bool:
        before, at = self._recent.get(cut - 1), self._recent.get(cut)
        if before is None or at is None:
            return False
        jump = picture_distance(before, at)
        later = (self._recent.get(cut + k) for k in range(1, self._after + 1))
        return any(picture_distance(before, p) < FLASH_RATIO * jump for p in later if p is not None)

    def finished(self) -> list[Shot]:
        """The shots that have ended and not been returned yet: those whose end no later frame
        can move.  Their cut is decided (no flash) and at least ``min_shot_s`` lies after it, so
        it stays a cut whatever follows (the rule of :func:`shots_from_cuts`); :meth:`shots`
        returns them first, in the same order (``shots()[:handed]``)."""
        min_frames = self.options.min_frames(self.fps)
        out = []
        while self._checked < len(self._cuts) and self._cuts[self._checked] + min_frames <= self.frames:
            cut = self._cuts[self._checked]
            self._checked += 1
            if cut - self._start >= min_frames:
                out.append(Shot(self.handed, self._start, cut, self.fps))
                self.handed += 1
                self._start = cut
        return out

    def shots(self) -> list[Shot]:
        """The shots of the frames pushed so far (call once, after the last frame)."""
        if self.frames:
            last = self._timecode(self.frames - 1, self.fps)
            self._pending.extend(cut.frame_num for cut in self._detector.post_process(last))
        self._settle(final=True)
        return shots_from_cuts(self._cuts, self.frames, self.fps, self.options.min_frames(self.fps))


def shrink(bgr: np.ndarray, width: int) -> np.ndarray:
    """``bgr`` at most ``width`` pixels wide (area interpolation, aspect kept, at least 1 pixel high)."""
    import cv2

    h, w = bgr.shape[:2]
    if w <= width:
        return bgr
    return cv2.resize(bgr, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def shots_from_cuts(cuts: Iterable[int], n: int, fps: float, min_frames: int = 1) -> list[Shot]:
    """The shots of an ``n``-frame video cut before each frame of ``cuts``.  A cut that would make
    a shot shorter than ``min_frames`` is left out (the later one of two close cuts, and one
    closer than that to the end); so are cuts at 0, at ``n`` and beyond, and repeats."""
    kept = [0]
    for cut in sorted({int(c) for c in cuts}):
        if cut - kept[-1] >= min_frames and n - cut >= min_frames:
            kept.append(cut)
    bounds = [*kept, n]
    return [Shot(k, a, b, fps) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))] if n > 0 else []


@dataclass
class ShotList:
    """What :func:`detect_shots` found: the shots, the decodable ``frame_count``, the ``fps`` and
    the ``decoder`` that read the frames (``"pyav"`` or ``"opencv"``)."""

    shots: list[Shot]
    frame_count: int
    fps: float
    decoder: str

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


def detect_shots(path, options: ShotOptions = ShotOptions(), *, decoder: str = "auto", threads: int = 0,
                 on_frame: Optional[Callable[[int], None]] = None) -> ShotList:
    """The shots of the video at ``path``, reading every frame once with the backends ``decoder``
    allows (:func:`~stamcli.decode.decode_with_fallback`: PyAV first, frame ``k`` the ``k``-th in
    presentation order as timelines number them; OpenCV from the start if PyAV gives up).
    ``on_frame(k)`` is called after each frame (progress; raising stops the detection).  Raises
    :class:`~stamcli.errors.VideoError` for videos that cannot be read.  ``stam predict --window
    shots`` finds the shots in the pass that also reads the windows' frames
    (:class:`stamcli.timeline.TimelineReader`); this is the detection alone."""
    options.check()
    return next(iter(decode_with_fallback(decoder, path, lambda backend: [_detect(path, backend, options, threads,
                                                                                on_frame)])))


@contextmanager
def every_frame_stream(backend, path, img_size: int = 224, threads: int = 0) -> Iterator:
    """``(stream, fps)``: ``path`` opened by ``backend`` to walk every frame (``stream.every_frame()``,
    ``stream.preprocess(bgr)`` to ``img_size``): a :class:`~stamcli.decode.SparseFrameStream` for
    PyAV, a :class:`~stamcli.decode.FrameStream` for OpenCV.  A video without a frame rate cannot
    place shots in seconds: :class:`~stamcli.decode.Unsupported` (PyAV, so that OpenCV may try) or
    a one-line :class:`~stamcli.errors.VideoError`."""
    pyav = backend.name == "pyav"
    with (SparseFrameStream if pyav else FrameStream)(path, img_size, threads=threads) as stream:
        fps = stream.fps if pyav else stream.info.fps
        if fps <= 0:
            if pyav:
                raise Unsupported("no frame rate")  # OpenCV's path explains it
            raise VideoError(f"cannot read video {stream.info.path}: its header has no frame rate, needed to place "
                             "shots in seconds")
        yield stream, fps


def _detect(path, backend, options: ShotOptions, threads: int, on_frame) -> ShotList:
    with every_frame_stream(backend, path, threads=threads) as (stream, fps):
        detector = ShotDetector(fps, options)
        for k, bgr in stream.every_frame():
            detector.push(bgr)
            if on_frame is not None:
                on_frame(k)
    if detector.frames == 0:
        raise VideoError(f"cannot read video {one_line(path)}: no decodable video frames")
    return ShotList(detector.shots(), detector.frames, fps, backend.name)


def shot_spans(shots: Sequence[Shot]) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of each shot."""
    return [(s.start_s, s.end_s) for s in shots]
