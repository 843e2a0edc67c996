"""Read a video into the ``F`` preprocessed frames STAM expects.

:func:`read_clip` picks ``F`` frames uniformly over the video (:func:`sample_indices`) and
preprocesses them exactly as the authors' evaluation did: shorter side resized to 256 with an
antialiased bilinear filter (PIL's), centre crop 224, RGB, ``uint8`` (the model divides by 255).

Decoding does only what is needed, by one of two decoders:

* :mod:`stamcli.sparse_decode` (PyAV) first: exact frame counts from one pass over the packets,
  unneeded non-reference frames skipped unseen, seeks to clean key frames.  It gives up
  (:class:`~stamcli.sparse_decode.Unsupported`) on anything it cannot do exactly, and
* OpenCV's FFmpeg backend then reads the file, as below (always, with ``STAM_DECODER=opencv``).
  Frames that are not sampled are skipped with ``grab()`` (demux + decode, no colour
  conversion); only sampled frames are ``retrieve()``-d, and only the ``F`` output frames are
  kept, so memory does not grow with video length.  When the gap to the next wanted frame is
  long, a seek is cheaper than grabbing through it (:data:`SEEK_MIN_GAP`).

On the OpenCV path, frame counts in headers are not trusted blindly: a plan made from the header count is checked
as it runs (every grab succeeds, seeks land where and when they should, the video ends exactly
at the header count).  If anything disagrees, or the header has no plausible count, the real
number of decodable frames is counted with a grab-only pass and the video is read again with
grabs only, so every returned index is a real, decodable frame.

Training augmentation plugs in through two optional callables of :func:`read_clip`: ``sampler``
(which frames, in place of :func:`sample_indices`) and ``crop`` (which region of the upright
frame, in place of "resize shorter side + centre crop").

Test-time views: :func:`read_views` decodes a video once and returns ``clips x crops`` views of
it, ``clips`` temporal offsets of the uniform sampling (:func:`sample_indices` with ``clip``)
and 1 or 3 spatial crops (:func:`preprocess_crops`), cut from the same decoded frames.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

# Quieten OpenCV and FFmpeg on stderr unless the user chose otherwise; every problem they
# would report reaches the user as a VideoError.  FFmpeg's level is read when OpenCV first
# opens a file; OpenCV's own when cv2 is first imported (so we also set it below).
_QUIET_LOG = "OPENCV_LOG_LEVEL" not in os.environ
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .errors import VideoError  # noqa: E402
from .parallel import one_torch_thread  # noqa: E402
from .sparse_decode import SparseDecoder, Unsupported, decoder_choice  # noqa: E402

if _QUIET_LOG:  # cv2 may have been imported (and its logger set up) before this module
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # pragma: no cover - very old OpenCV
        pass

__all__ = ["Clip", "Views", "VideoInfo", "SEEK_MIN_GAP", "CROPS", "sample_indices", "resize_size_for",
           "crop_offsets", "preprocess_frame", "preprocess_crops", "probe", "read_clip", "read_views", "FrameStream",
           "SparseFrameStream"]

#: Seek instead of grabbing when the next wanted frame is at least this many frames ahead.
#: Measured on a 640x360 600-frame clip, 2 CPU cores, OpenCV 5.0 / FFmpeg 8: one grab costs
#: 0.2-1.0 ms, and one seek costs about as much as grabbing 16 (MJPEG, all key frames),
#: 28 (mp4v, GOP 12), 34 (H.264, GOP 25) or 130-180 (H.264, x264's default GOP 250) frames,
#: because OpenCV seeks to a key frame before ``target - 16`` and decodes forward from it.
#: At 150 a seek costs about as much as the frames it skips for the longest common GOP and
#: saves 4-9x for short GOPs; Kinetics-length clips (250-300 frames) never seek for F >= 3.
SEEK_MIN_GAP = 150

_MAX_PLAUSIBLE_FRAMES = 10**8  # ~39 days at 30 fps; a larger header count is garbage
_PREFIX_CHECK = 8  # frames whose timestamps must be regular before we trust seeking
Sampler = Callable[[int, int], "list[int]"]  #: (n, num_frames) -> num_frames indices in [0, n)
Crop = Callable[[int, int], "tuple[int, int, int, int]"]  #: (h, w) -> (top, left, crop_h, crop_w)
CROPS = (1, 3)  #: spatial crops per frame that :func:`preprocess_crops` can cut


@dataclass
class Clip:
    """``F`` preprocessed frames of a video and how they were chosen."""

    path: str
    frames: torch.Tensor  #: uint8, (F, 3, img_size, img_size), RGB, contiguous
    indices: list[int]  #: source frame of each output frame (0-based, decode order)
    frame_count: int  #: decodable frames ``n`` the indices were sampled from
    fps: float  #: nominal frame rate from the header (0.0 when unknown)
    duration_s: float  #: ``frame_count / fps`` (0.0 when fps unknown)
    width: int  #: as displayed (after rotation)
    height: int  #: as displayed (after rotation)
    rotation: int  #: clockwise degrees applied to decoded frames (0, 90, 180, 270)
    decoder: str = "opencv"  #: what read the frames: "pyav" (:mod:`stamcli.sparse_decode`) or "opencv"


@dataclass
class Views(Clip):
    """Several views of one video, cut from one decode (:func:`read_views`).

    ``frames`` is uint8 ``(clips * crops, F, 3, img_size, img_size)``: view ``v`` is temporal
    clip ``v // crops`` cut with spatial crop ``v % crops``.  ``indices`` lists every clip's
    source frames, clip after clip (``clips * F`` entries; :meth:`clip_indices` gives one clip's).
    """

    clips: int = 1
    crops: int = 1

    def clip_indices(self, clip: int) -> list[int]:
        """Source frames of temporal clip ``clip`` (0-based)."""
        count = self.frames.shape[1]
        return self.indices[clip * count : (clip + 1) * count]


@dataclass
class VideoInfo:
    """What the container header says, without decoding (counts may be missing or wrong)."""

    path: str
    frame_count: int | None  #: header count, None when missing or implausible
    fps: float
    width: int  #: as displayed (after rotation)
    height: int
    rotation: int  #: clockwise degrees needed to display decoded frames upright
    codec: str  #: FourCC as text, e.g. "h264", "mp4v", "MJPG"


class _PlanFailed(Exception):
    """The header's frame count or seeking proved unreliable for this video."""


# ---------------------------------------------------------------------------- small pure helpers


def sample_indices(n: int, num_frames: int, clip: int = 0, clips: int = 1) -> list[int]:
    """Uniform sampling: frame ``i`` of ``F`` is ``floor((i + 0.5) * n / F)``, at most ``n - 1``.

    A video shorter than ``F`` frames repeats frames by the same formula.  With ``clips`` = C
    temporal views, clip ``c`` (0-based) is shifted by a fraction of the stride: frame ``i`` is
    ``floor((i + (c + 0.5) / C) * n / F)``, at most ``n - 1``; the C clips interleave into the
    uniform sample of ``C * F`` frames, and ``clips=1`` is the plain sampling.
    """
    if n < 1 or num_frames < 1:
        raise ValueError(f"need n >= 1 and num_frames >= 1, got n={n}, num_frames={num_frames}")
    if not 0 <= clip < clips:
        raise ValueError(f"need 0 <= clip < clips, got clip={clip}, clips={clips}")
    return [min(((2 * (i * clips + clip) + 1) * n) // (2 * clips * num_frames), n - 1) for i in range(num_frames)]


def resize_size_for(img_size: int) -> int:
    """Shorter-side resize used before the centre crop: ``int(img_size / 0.875)`` (224 -> 256)."""
    return (img_size * 8) // 7


def _resized_hw(h: int, w: int, short: int) -> tuple[int, int]:
    """Shorter side to ``short``, longer side scaled alike and truncated (torchvision's rule)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def crop_offsets(height: int, width: int, size: int, crops: int = 1) -> list[tuple[int, int]]:
    """Top-left corners of the ``size x size`` crops of a ``height x width`` frame.

    ``crops=1``: the centre (offsets rounded).  ``crops=3``: start, centre and end of the longer
    side, centred on the shorter one: left/centre/right for a landscape or square frame,
    top/centre/bottom for a portrait one.
    """
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}, got {crops}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    if crops == 1:
        return [(top, left)]
    if height > width:
        return [(0, left), (top, left), (height - size, left)]
    return [(top, 0), (top, left), (top, width - size)]


def preprocess_crops(bgr: np.ndarray, img_size: int = 224, resize_size: int | None = None,
                     crops: int = 1) -> torch.Tensor:
    """One decoded BGR ``(H, W, 3)`` uint8 frame -> RGB ``(crops, 3, img_size, img_size)`` uint8.

    Antialiased bilinear resize of the shorter side to ``resize_size`` (torch's uint8 kernel,
    which reproduces PIL's bilinear filter), then the crops of :func:`crop_offsets` (one resize
    for all of them).
    """
    x = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
    resize_size = resize_size or resize_size_for(img_size)
    h, w = bgr.shape[:2]
    nh, nw = _resized_hw(h, w, resize_size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    views = [x[0, :, top : top + img_size, left : left + img_size] for top, left in crop_offsets(nh, nw, img_size, crops)]
    return torch.stack(views).flip(1)  # BGR -> RGB


def preprocess_frame(bgr: np.ndarray, img_size: int = 224, resize_size: int | None = None,
                     region: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """One decoded BGR ``(H, W, 3)`` uint8 frame -> RGB ``(3, img_size, img_size)`` uint8.

    Antialiased bilinear resize of the shorter side to ``resize_size`` (torch's uint8 kernel,
    which reproduces PIL's bilinear filter), then a centre crop with rounded offsets.  With
    ``region=(top, left, h, w)`` that region is cut instead and resized (same filter) to
    ``img_size x img_size``.
    """
    if region is None:
        return preprocess_crops(bgr, img_size, resize_size)[0]
    x = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
    top, left, ch, cw = region
    x = x[:, :, top : top + ch, left : left + cw]
    if (ch, cw) != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].flip(0)  # BGR -> RGB (a copy)


_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _rotate(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a decoded frame clockwise by ``rotation`` degrees (0/90/180/270)."""
    return cv2.rotate(frame, _ROTATE[rotation]) if rotation in _ROTATE else frame


# ---------------------------------------------------------------------------- opening


def _one_line(path) -> str:
    return os.fsdecode(path).replace("\n", "\\n").replace("\r", "\\r")


def _check_file(path) -> None:
    """Raise VideoError for problems the file system can explain (before OpenCV guesses)."""
    name = _one_line(path)
    if os.path.isdir(path):
        raise VideoError(f"cannot read video {name}: it is a directory, not a file")
    if os.path.exists(path) and not os.path.isfile(path):
        raise VideoError(f"cannot read video {name}: not a regular file")
    try:
        with open(path, "rb") as fh:
            empty = fh.read(1) == b""
    except FileNotFoundError:
        raise VideoError(f"cannot read video {name}: no such file") from None
    except PermissionError:
        raise VideoError(f"cannot read video {name}: permission denied") from None
    except OSError as exc:
        raise VideoError(f"cannot read video {name}: {exc.strerror or exc}") from None
    if empty:
        raise VideoError(f"cannot read video {name}: the file is empty (0 bytes)")


@contextmanager
def _capture(path, threads: int = 0) -> Iterator[cv2.VideoCapture]:
    """An opened FFmpeg-backend capture, released on exit; VideoError if it cannot open."""
    params = [cv2.CAP_PROP_N_THREADS, int(threads)] if threads > 0 else []
    cap = cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG, params)
    if not cap.isOpened() and params:  # a build that rejects the open parameter
        cap = cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise VideoError(f"cannot read video {_one_line(path)}: not a video file, no video "
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
    if meta not in _ROTATE:
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
    return VideoInfo(_one_line(path), int(count) if plausible else None, fps, w, h, rotation,
                     codec if codec.isprintable() else "")


def probe(path) -> VideoInfo:
    """Open ``path`` and report its header (no decoding).  Raises VideoError if unreadable."""
    _check_file(path)
    try:
        with _capture(path) as cap:
            return _header(cap, path)
    except cv2.error as exc:
        raise VideoError(f"cannot read video {_one_line(path)}: OpenCV error: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[-1] if lines else type(exc).__name__


# ---------------------------------------------------------------------------- decoding


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
    return _rotate(bgr, rotation)


def _sampled(sampler: Sampler | None, n: int, num_frames: int) -> list[int]:
    if sampler is None:
        return sample_indices(n, num_frames)
    indices = [int(k) for k in sampler(n, num_frames)]
    if len(indices) != num_frames or not all(0 <= k < n for k in indices):
        raise ValueError(f"sampler gave {indices} for n={n}, num_frames={num_frames}: "
                         f"need {num_frames} indices in [0, {n})")
    return indices


def _clip_sampler(clip: int, clips: int) -> Sampler:
    """The sampler of temporal clip ``clip`` of ``clips`` (:func:`sample_indices`)."""
    return lambda n, num_frames: sample_indices(n, num_frames, clip, clips)


def _region(crop: Crop, h: int, w: int) -> tuple[int, int, int, int]:
    top, left, ch, cw = (int(v) for v in crop(h, w))
    if not (0 <= top and 0 <= left and ch >= 1 and cw >= 1 and top + ch <= h and left + cw <= w):
        raise ValueError(f"crop region {(top, left, ch, cw)} is not inside a {h}x{w} frame")
    return top, left, ch, cw


def _sampled_views(fetch: Callable[[list[int]], Iterator[tuple[int, np.ndarray]]], n: int, num_frames: int,
                   img_size: int, resize_size: int, samplers: tuple = (None,), crops: int = 1,
                   crop: Crop | None = None, regions: dict | None = None) -> tuple[list[int], torch.Tensor]:
    """The views of an ``n``-frame video, whichever decoder reads it.

    Each of ``samplers`` (None: :func:`sample_indices`) picks one clip's frames; ``fetch(wanted)``
    yields ``(index, upright BGR frame)`` for the sorted union of them, each decoded once and cut
    into ``crops`` crops.  Returns every clip's indices, clip after clip, and the views as
    ``(len(samplers) * crops, num_frames, 3, img_size, img_size)`` uint8 (view ``clip * crops + crop``).
    ``regions`` caches ``crop``'s answers by frame size across the reads of one clip."""
    plan = [_sampled(sampler, n, num_frames) for sampler in samplers]
    regions = {} if regions is None else regions
    out = torch.empty((len(plan) * crops, num_frames, 3, img_size, img_size), dtype=torch.uint8)
    for k, bgr in fetch(sorted(set().union(*plan))):
        if crop is not None:
            if bgr.shape[:2] not in regions:
                regions[bgr.shape[:2]] = _region(crop, *bgr.shape[:2])
            views = preprocess_frame(bgr, img_size, resize_size, regions[bgr.shape[:2]])[None]
        else:
            views = preprocess_crops(bgr, img_size, resize_size, crops)
        for c, indices in enumerate(plan):
            for i, j in enumerate(indices):
                if j == k:
                    out[c * crops : (c + 1) * crops, i] = views
    return [k for indices in plan for k in indices], out


def _read_planned(cap, info: VideoInfo, n: int, num_frames: int, img_size: int, resize_size: int,
                  seek_min_gap: float, check_end: bool, **hooks) -> tuple[list[int], torch.Tensor]:
    """:func:`_sampled_views` decoded with OpenCV, planned for ``n`` frames; _PlanFailed if ``n``
    proves wrong.  ``hooks``: ``samplers``, ``crops``, ``crop``, ``regions``."""
    reader = _Reader(cap, info, seek_min_gap)

    def fetch(wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for k in wanted:
            reader.goto(k)
            bgr = _retrieve_upright(cap, info.rotation)
            if bgr is None:
                raise _PlanFailed(f"frame {k} cannot be converted")
            yield k, bgr

    indices, views = _sampled_views(fetch, n, num_frames, img_size, resize_size, **hooks)
    if check_end:
        reader.check_end(n)
    return indices, views


def _read_sparse(path, num_frames: int, img_size: int, resize_size: int, threads: int,
                 **hooks) -> tuple[VideoInfo, list[int], torch.Tensor]:
    """:func:`_sampled_views` decoded with :class:`stamcli.sparse_decode.SparseDecoder` (exact
    frame count, unneeded non-reference frames skipped), and the facts it found; raises
    :class:`~stamcli.sparse_decode.Unsupported`."""
    with SparseDecoder(path, threads) as decoder:

        def fetch(wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
            for k, bgr in decoder.frames(wanted):
                yield k, _rotate(bgr, decoder.rotation)

        indices, views = _sampled_views(fetch, decoder.frame_count, num_frames, img_size, resize_size, **hooks)
    return _sparse_info(path, decoder), indices, views


def _sparse_info(path, decoder: SparseDecoder) -> VideoInfo:
    """What a :class:`SparseDecoder` found, as a header (exact count; rotation once a frame is out)."""
    w, h = (decoder.height, decoder.width) if decoder.rotation in (90, 270) else (decoder.width, decoder.height)
    return VideoInfo(_one_line(path), decoder.frame_count, decoder.fps, w, h, decoder.rotation, codec="")


def _read(path, num_frames: int, img_size: int, resize_size: int, threads: int, seek_min_gap: float,
          **hooks) -> tuple[VideoInfo, int, list[int], torch.Tensor, str]:
    """Open, plan from the header, fall back to counting real frames; see :func:`read_clip`.
    Returns the header, the decodable frame count, :func:`_read_planned`'s answer and the
    decoder that read the frames (``"pyav"``: :func:`_read_sparse`; ``"opencv"``)."""
    _check_file(path)
    name = _one_line(path)
    args = (num_frames, img_size, resize_size)
    hooks["regions"] = {}
    with one_torch_thread():  # preprocessing on one core (see one_torch_thread)
        if decoder_choice() == "auto":
            try:
                info, indices, frames = _read_sparse(path, *args, threads, **hooks)
                return info, info.frame_count, indices, frames, "pyav"
            except Unsupported:
                pass  # OpenCV reads it, as it always did
        try:
            with _capture(path, threads) as cap:
                info = _header(cap, path)
                n = info.frame_count
                if n is not None:
                    try:
                        indices, frames = _read_planned(cap, info, n, *args, seek_min_gap, check_end=True, **hooks)
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
                        indices, frames = _read_planned(cap, info, n, *args, math.inf, check_end=False, **hooks)
                    except _PlanFailed as exc:
                        raise VideoError(f"cannot read video {name}: decoding is not repeatable ({exc})") from None
        except cv2.error as exc:
            raise VideoError(f"cannot read video {name}: OpenCV error: {_first_line(exc)}") from None
    return info, n, indices, frames, "opencv"


def _check_sizes(num_frames: int, img_size: int, resize_size: int) -> None:
    if num_frames < 1 or img_size < 1:
        raise ValueError(f"num_frames and img_size must be >= 1, got {num_frames}, {img_size}")
    if resize_size < img_size:
        raise ValueError(f"resize_size {resize_size} is smaller than img_size {img_size}")


def _facts(path, info: VideoInfo, n: int) -> dict:
    return dict(path=os.fsdecode(path), frame_count=n, fps=info.fps,
                duration_s=n / info.fps if info.fps > 0 else 0.0, width=info.width, height=info.height,
                rotation=info.rotation)


def read_clip(path, num_frames: int, img_size: int = 224, *, resize_size: int | None = None,
              threads: int = 0, seek_min_gap: float = SEEK_MIN_GAP, sampler: Sampler | None = None,
              crop: Crop | None = None) -> Clip:
    """Decode ``num_frames`` uniformly sampled, preprocessed frames of the video at ``path``.

    ``threads``: FFmpeg decoding threads (0: FFmpeg's default).  ``seek_min_gap``: OpenCV seeks
    when the next wanted frame is at least this far ahead (``math.inf``: never seek, 0: always;
    the PyAV path chooses from the key frames it knows).  :attr:`Clip.decoder` says which read it.
    ``sampler(n, num_frames)`` picks the frames instead of :func:`sample_indices` (called again
    with the real ``n`` when the header count proves wrong).  ``crop(height, width)`` gives the
    ``(top, left, h, w)`` region of the upright frame to resize to ``img_size`` instead of the
    resize + centre crop; it is asked once per clip.  Either returning out-of-range values is a
    ``ValueError``.  Raises :class:`VideoError` (one line) when the file cannot be opened or has
    no frames.
    """
    resize_size = resize_size or resize_size_for(img_size)
    _check_sizes(num_frames, img_size, resize_size)
    info, n, indices, frames, decoder = _read(path, num_frames, img_size, resize_size, threads, seek_min_gap,
                                              samplers=(sampler,), crop=crop)
    return Clip(frames=frames[0], indices=indices, decoder=decoder, **_facts(path, info, n))


def read_views(path, num_frames: int, img_size: int = 224, *, clips: int = 1, crops: int = 1,
               resize_size: int | None = None, threads: int = 0,
               seek_min_gap: float = SEEK_MIN_GAP) -> Views:
    """``clips x crops`` test-time views of the video at ``path``, from a single decode.

    Temporal clip ``c`` samples frame ``i`` at ``floor((i + (c + 0.5) / clips) * n / F)``
    (:func:`sample_indices`); the union of all clips' frames is decoded in one pass.  Each frame
    has its shorter side resized to ``resize_size`` and is cut into ``crops`` squares of
    ``img_size`` (:func:`crop_offsets`).  ``resize_size`` defaults to :func:`resize_size_for`
    (256 for 224: the plain centre crop) for one crop and to ``img_size`` for three, so the
    left, centre and right crops together cover the whole frame (the 3-crop test of
    SlowFast, TimeSformer and X3D).  ``clips=1, crops=1`` gives exactly :func:`read_clip`'s
    frames.  Raises :class:`VideoError` as :func:`read_clip` does.
    """
    if clips < 1 or crops not in CROPS:
        raise ValueError(f"need clips >= 1 and crops in {CROPS}, got clips={clips}, crops={crops}")
    resize_size = resize_size or (resize_size_for(img_size) if crops == 1 else img_size)
    _check_sizes(num_frames, img_size, resize_size)
    samplers = tuple(_clip_sampler(c, clips) for c in range(clips))
    info, n, indices, frames, decoder = _read(path, num_frames, img_size, resize_size, threads, seek_min_gap,
                                              samplers=samplers, crops=crops)
    return Views(frames=frames, indices=indices, clips=clips, crops=crops, decoder=decoder,
                 **_facts(path, info, n))


class FrameStream:
    """Every frame of a video once, in decode order, preprocessing only the frames asked for.

    For readers that walk a whole video (timelines) instead of sampling it: the capture is opened
    once (``with FrameStream(path, 32) as stream``), :attr:`info` holds its header, and
    :meth:`frames` grabs each frame in turn and retrieves, rotates and preprocesses it (as
    :func:`read_clip` does) only when ``wanted(index)`` says so.  Nothing is buffered here.
    Raises :class:`VideoError` (one line) for files that cannot be opened or decoded.
    """

    def __init__(self, path, img_size: int = 224, *, resize_size: int | None = None, threads: int = 0):
        self.path, self.img_size, self.threads = path, img_size, threads
        self.resize_size = resize_size or resize_size_for(img_size)
        self.grabs = 0  #: frames grabbed (decoded) so far
        self.retrieved = 0  #: frames retrieved and preprocessed so far
        self._opened = None

    def __enter__(self) -> "FrameStream":
        _check_file(self.path)
        opened = _capture(self.path, self.threads)
        try:
            self.cap = opened.__enter__()
            self._opened = opened
            self.info = _header(self.cap, self.path)
        except cv2.error as exc:
            if self._opened is not None:
                opened.__exit__(None, None, None)
            raise VideoError(f"cannot read video {_one_line(self.path)}: OpenCV error: {_first_line(exc)}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._opened is not None:
            self._opened.__exit__(None, None, None)
            self._opened = None

    def frames(self, wanted: Callable[[int], bool]) -> Iterator[tuple[int, torch.Tensor | None]]:
        """``(index, frame)`` for every decodable frame; ``frame`` is the preprocessed RGB
        ``(3, img_size, img_size)`` uint8 tensor when ``wanted(index)``, else ``None``."""
        name, index = _one_line(self.path), 0
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
            raise VideoError(f"cannot read video {name}: OpenCV error: {_first_line(exc)}") from None


class SparseFrameStream:
    """The chosen frames of a whole video, decoded with PyAV: the fast path of timelines.

    :class:`FrameStream` decodes every frame; this one knows the exact frame count before
    decoding (:class:`~stamcli.sparse_decode.SparseDecoder`'s demux pass), so a reader can plan
    what it needs up front, and it decodes only the frames :meth:`frames` is asked for and the
    frames they are predicted from (unneeded non-reference frames are dropped unseen; clean key
    frames are sought across long gaps).  ``with SparseFrameStream(path, 32) as stream``: then
    :attr:`frame_count` and :attr:`fps` (0.0 when unknown) are known; :attr:`info` has the
    rotation and displayed size once a frame is out.  Frames are the same as
    :class:`FrameStream`'s, bit for bit.  Raises :class:`VideoError` (one line) for files the
    file system cannot read and :class:`~stamcli.sparse_decode.Unsupported` for anything PyAV
    cannot read exactly (:class:`FrameStream`'s turn), also part-way through :meth:`frames`.
    """

    def __init__(self, path, img_size: int = 224, *, resize_size: int | None = None, threads: int = 0):
        self.path, self.img_size = path, img_size
        self.resize_size = resize_size or resize_size_for(img_size)
        self.retrieved = 0  #: frames preprocessed so far
        self._decoder = SparseDecoder(path, threads)

    def __enter__(self) -> "SparseFrameStream":
        _check_file(self.path)
        self._decoder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._decoder.__exit__()

    @property
    def frame_count(self) -> int:
        return self._decoder.frame_count

    @property
    def fps(self) -> float:
        return self._decoder.fps

    @property
    def info(self) -> VideoInfo:
        return _sparse_info(self.path, self._decoder)

    @property
    def decoded(self) -> int:
        """Frames that came out of the decoder (wanted or not) in the last :meth:`frames` call."""
        return self._decoder.frames_decoded

    def frames(self, wanted: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
        """``(index, frame)`` for each of ``wanted`` (distinct indices in ``[0, frame_count)``) in
        increasing order; ``frame`` is the preprocessed RGB ``(3, img_size, img_size)`` uint8 tensor."""
        for k, bgr in self._decoder.frames(wanted):
            self.retrieved += 1
            yield k, preprocess_frame(_rotate(bgr, self._decoder.rotation), self.img_size, self.resize_size)
