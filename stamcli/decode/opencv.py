"""The OpenCV backend: decodes any file OpenCV's FFmpeg backend opens, trusting nothing it says.

Frames that are not sampled are skipped with ``grab()`` (demux + decode, no colour conversion);
only sampled frames are ``retrieve()``-d, and only the output frames are kept, so memory does not
grow with video length.  When the gap to the next wanted frame is long, a seek is cheaper than
grabbing through it (:data:`SEEK_MIN_GAP`).

Frame counts in headers are not trusted blindly: a plan made from the header count is checked as
it runs (every grab succeeds, seeks land where and when they should, the video ends exactly at the
header count).  If anything disagrees, or the header has no plausible count, the real number of
decodable frames is counted with a grab-only pass and the video is read again with grabs only, so
every returned index is a real, decodable frame.

:class:`FrameStream` walks a whole video frame after frame instead (timelines).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from ..errors import VideoError
from .backend import Decoded, Request, sampled_views
from .clip import VideoInfo
from .files import check_file, one_line
from .preprocess import preprocess_frame, resize_size_for, rotate

__all__ = ["SEEK_MIN_GAP", "OpenCVBackend", "OPENCV", "probe", "FrameStream"]

#: Seek instead of grabbing when the next wanted frame is at least this many frames ahead: about
#: what one seek costs in grabs with x264's default GOP of 250 (``python -m benchmarks --only decode``).
SEEK_MIN_GAP = 150

_MAX_PLAUSIBLE_FRAMES = 10**8  # ~39 days at 30 fps; a larger header count is garbage
_PREFIX_CHECK = 8  # frames whose timestamps must be regular before we trust seeking


class _PlanFailed(Exception):
    """The header's frame count or seeking proved unreliable for this video."""


# ---------------------------------------------------------------------------- opening


@contextmanager
def _capture(path, threads: int = 0) -> Iterator[cv2.VideoCapture]:
    """An opened FFmpeg-backend capture, released on exit; VideoError if it cannot open."""
    params = [cv2.CAP_PROP_N_THREADS, int(threads)] if threads > 0 else []
    cap = cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG, params)
    if not cap.isOpened() and params:  # a build that rejects the open parameter
        cap = cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise VideoError(f"cannot read video {one_line(path)}: not a video file, no video "
                             "stream, or a format/codec that cannot be decoded")
        yield cap
    finally:
        cap.release()


def _rotation_of(cap: cv2.VideoCapture) -> int:
    """Clockwise degrees *we* must rotate decoded frames by to show them upright.

    OpenCV (>= 4.5) rotates frames itself by default (``CAP_PROP_ORIENTATION_AUTO``) by
    ``CAP_PROP_ORIENTATION_META``.  We switch that off and rotate ourselves, so the rotation is
    applied exactly once whichever way the build behaves.  If auto-rotation cannot be switched
    off, OpenCV is left to do it and we do nothing.
    """
    meta = cap.get(cv2.CAP_PROP_ORIENTATION_META)
    meta = int(round(meta)) % 360 if math.isfinite(meta) else 0
    if meta not in (90, 180, 270):
        return 0
    if cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0) and cap.get(cv2.CAP_PROP_ORIENTATION_AUTO) == 0:
        return meta
    return 0


def _header(cap: cv2.VideoCapture, path) -> VideoInfo:
    """Header facts of an open capture (switches OpenCV's auto-rotation off, see _rotation_of)."""
    rotation = _rotation_of(cap)
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps < 10_000 else 0.0
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    try:
        size = os.path.getsize(path)
    except OSError:
        size = _MAX_PLAUSIBLE_FRAMES
    plausible = math.isfinite(count) and 1 <= count <= min(_MAX_PLAUSIBLE_FRAMES, size)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if rotation in (90, 270):
        w, h = h, w
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)) if math.isfinite(cap.get(cv2.CAP_PROP_FOURCC)) else 0
    codec = "".join(chr((fourcc >> 8 * k) & 0xFF) for k in range(4)).strip("\0 ")
    return VideoInfo(one_line(path), int(count) if plausible else None, fps, w, h, rotation,
                     codec if codec.isprintable() else "")


def _opencv_error(path, exc: cv2.error) -> VideoError:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return VideoError(f"cannot read video {one_line(path)}: OpenCV error: {lines[-1] if lines else type(exc).__name__}")


def probe(path) -> VideoInfo:
    """Open ``path`` and report its header (no decoding).  Raises VideoError if unreadable."""
    check_file(path)
    try:
        with _capture(path) as cap:
            return _header(cap, path)
    except cv2.error as exc:
        raise _opencv_error(path, exc) from None


# ---------------------------------------------------------------------------- sampled frames


def _count_frames(cap: cv2.VideoCapture) -> int:
    """Number of decodable frames from the capture's current position (grab only)."""
    n = 0
    while cap.grab():
        n += 1
    return n


class _Reader:
    """Walks a capture forward to wanted frames by grabbing or (verified) seeking.

    OpenCV seeks by time (frame number / fps), so a seek only reaches frame ``k`` when the
    rate is constant.  Before seeking we therefore grab a few frames (8 at the start, 2 before
    each later seek) and check they tick at 1/fps; after seeking, the frame must report
    ``k``'s position and timestamp.  Failures raise :class:`_PlanFailed`.
    """

    def __init__(self, cap: cv2.VideoCapture, info: VideoInfo, seek_min_gap: float):
        self.cap, self.fps, self.pos = cap, info.fps, 0  # pos: index of the next frame grab() gives
        self.seek_min_gap = seek_min_gap if self.fps > 0 else math.inf
        self.t0 = 0.0  # timestamp (ms) of frame 0
        self.seeks = 0

    def _grab(self) -> float:
        """Grab the next frame; return its timestamp in ms."""
        if not self.cap.grab():
            raise _PlanFailed(f"no frame {self.pos}")
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        if self.pos == 0:
            self.t0 = ms
        self.pos += 1
        return ms

    def _near(self, ms: float, expected: float) -> bool:
        return abs(ms - expected) <= 500.0 / self.fps + 1.5  # half a frame + ms rounding

    def _rate_is_constant(self, k: int) -> bool:
        """Grab a few frames short of ``k``; do they come exactly 1/fps apart?"""
        stop = min(self.pos + (_PREFIX_CHECK if self.pos == 0 else 2), k)
        prev = self.cap.get(cv2.CAP_PROP_POS_MSEC) if self.pos > 0 else None
        while self.pos < stop:
            ms = self._grab()
            if prev is not None and not self._near(ms - prev, 1000.0 / self.fps):
                return False
            prev = ms
        return True

    def _seek_and_grab(self, k: int) -> None:
        """Seek so that frame ``k`` is grabbed, and check it is (position and timestamp)."""
        if not self.cap.set(cv2.CAP_PROP_POS_FRAMES, k) or self.cap.get(cv2.CAP_PROP_POS_FRAMES) != k:
            raise _PlanFailed(f"seek to {k} failed")
        self.pos, self.seeks = k, self.seeks + 1
        if not self._near(self._grab(), self.t0 + k * 1000.0 / self.fps):
            raise _PlanFailed(f"seek to {k} landed elsewhere")

    def goto(self, k: int) -> None:
        """Grab frame ``k`` (>= pos), so that retrieve() returns it."""
        if k - self.pos >= self.seek_min_gap and not self._rate_is_constant(k):
            if self.seeks:  # earlier seeks may have landed on wrong frames
                raise _PlanFailed("variable frame rate")
            self.seek_min_gap = math.inf  # none yet: just never seek in this video
        if k - self.pos >= self.seek_min_gap:
            self._seek_and_grab(k)
            return
        while self.pos <= k:
            self._grab()

    def check_end(self, n: int) -> None:
        """The video must end exactly after frame ``n - 1``."""
        if self.pos < n:
            self.goto(n - 1)
        if self.pos != n or self.cap.grab():
            raise _PlanFailed(f"more than {n} frames")


def _retrieve_upright(cap: cv2.VideoCapture, rotation: int) -> np.ndarray | None:
    """The frame last grabbed, decoded to BGR and rotated upright; None when it cannot be converted."""
    ok, bgr = cap.retrieve()
    if not ok or bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        return None
    return rotate(bgr, rotation)


def _read_planned(cap, info: VideoInfo, n: int, request: Request, seek_min_gap: float,
                  check_end: bool) -> tuple[list[int], torch.Tensor]:
    """:func:`~stamcli.decode.backend.sampled_views` decoded with OpenCV, planned for ``n`` frames;
    _PlanFailed if ``n`` proves wrong."""
    reader = _Reader(cap, info, seek_min_gap)

    def fetch(wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for k in wanted:
            reader.goto(k)
            bgr = _retrieve_upright(cap, info.rotation)
            if bgr is None:
                raise _PlanFailed(f"frame {k} cannot be converted")
            yield k, bgr

    indices, views = sampled_views(fetch, n, request)
    if check_end:
        reader.check_end(n)
    return indices, views


class OpenCVBackend:
    """:class:`~stamcli.decode.backend.Backend` by OpenCV: plan from the header, fall back to
    counting real frames (see the module docstring)."""

    name = "opencv"

    def read(self, path, request: Request) -> Decoded:
        name, threads = one_line(path), request.threads
        seek_min_gap = SEEK_MIN_GAP if request.seek_min_gap is None else request.seek_min_gap
        try:
            with _capture(path, threads) as cap:
                info = _header(cap, path)
                n = info.frame_count
                if n is not None:
                    try:
                        indices, views = _read_planned(cap, info, n, request, seek_min_gap, check_end=True)
                    except _PlanFailed:
                        n = None
            if n is None:  # the header was missing or wrong: count real frames, then read again
                with _capture(path, threads) as cap:
                    _rotation_of(cap)
                    n = _count_frames(cap)
                if n == 0:
                    raise VideoError(f"cannot read video {name}: no decodable video frames")
                with _capture(path, threads) as cap:
                    _rotation_of(cap)
                    try:
                        indices, views = _read_planned(cap, info, n, request, math.inf, check_end=False)
                    except _PlanFailed as exc:
                        raise VideoError(f"cannot read video {name}: decoding is not repeatable ({exc})") from None
        except cv2.error as exc:
            raise _opencv_error(path, exc) from None
        return Decoded(info, n, indices, views, self.name)


OPENCV = OpenCVBackend()


# ---------------------------------------------------------------------------- every frame


class FrameStream:
    """Every frame of a video once, in decode order, preprocessing only the frames asked for.

    For readers that walk a whole video (timelines) instead of sampling it: the capture is opened
    once (``with FrameStream(path, 32) as stream``), :attr:`info` holds its header, and
    :meth:`frames` grabs each frame in turn and retrieves, rotates and preprocesses it (as
    :func:`~stamcli.decode.read_clip` does) only when ``wanted(index)`` says so.  Nothing is
    buffered here.  Raises :class:`VideoError` (one line) for files that cannot be opened or decoded.
    """

    def __init__(self, path, img_size: int = 224, *, resize_size: int | None = None, threads: int = 0):
        self.path, self.img_size, self.threads = path, img_size, threads
        self.resize_size = resize_size or resize_size_for(img_size)
        self.grabs = 0  #: frames grabbed (decoded) so far
        self.retrieved = 0  #: frames retrieved and preprocessed so far
        self._opened = None

    def __enter__(self) -> "FrameStream":
        check_file(self.path)
        opened = _capture(self.path, self.threads)
        try:
            self.cap = opened.__enter__()
            self._opened = opened
            self.info = _header(self.cap, self.path)
        except cv2.error as exc:
            if self._opened is not None:
                opened.__exit__(None, None, None)
            raise _opencv_error(self.path, exc) from None
        return self

    def __exit__(self, *exc) -> None:
        if self._opened is not None:
            self._opened.__exit__(None, None, None)
            self._opened = None

    def frames(self, wanted: Callable[[int], bool]) -> Iterator[tuple[int, torch.Tensor | None]]:
        """``(index, frame)`` for every decodable frame; ``frame`` is the preprocessed RGB
        ``(3, img_size, img_size)`` uint8 tensor when ``wanted(index)``, else ``None``."""
        name, index = one_line(self.path), 0
        try:
            while self.cap.grab():
                self.grabs += 1
                frame = None
                if wanted(index):
                    bgr = _retrieve_upright(self.cap, self.info.rotation)
                    if bgr is None:
                        raise VideoError(f"cannot read video {name}: frame {index} cannot be converted")
                    self.retrieved += 1
                    frame = preprocess_frame(bgr, self.img_size, self.resize_size)
                yield index, frame
                index += 1
        except cv2.error as exc:
            raise _opencv_error(self.path, exc) from None

    def every_frame(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, upright BGR uint8 frame)`` for every decodable frame in order (shot detection
        reads them all); :meth:`preprocess` turns one into what :meth:`frames` yields."""
        name, index = one_line(self.path), 0
        try:
            while self.cap.grab():
                self.grabs += 1
                bgr = _retrieve_upright(self.cap, self.info.rotation)
                if bgr is None:
                    raise VideoError(f"cannot read video {name}: frame {index} cannot be converted")
                yield index, bgr
                index += 1
        except cv2.error as exc:
            raise _opencv_error(self.path, exc) from None

    def preprocess(self, bgr: np.ndarray) -> torch.Tensor:
        """An :meth:`every_frame` frame as :meth:`frames` yields it (counted in :attr:`retrieved`)."""
        self.retrieved += 1
        return preprocess_frame(bgr, self.img_size, self.resize_size)
