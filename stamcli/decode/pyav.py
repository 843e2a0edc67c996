"""The PyAV backend: decodes only the packets the wanted frames need, or gives up (:class:`Unsupported`).

OpenCV must decode every frame between a key frame and a wanted frame.  Many of those frames are
*non-reference* frames (most B-frames of an H.264 or HEVC stream): no other frame is predicted
from them, so when they are not wanted themselves the decoder can drop them unseen (FFmpeg's
``skip_frame = NONREF``, switched per packet).  The wanted frames come out bit for bit the same.
What this saves against OpenCV is measured by ``python -m benchmarks --only decode``.

How it works:

1. One demux pass (no decoding) lists every video packet's timestamps.  Frame ``k`` is the packet
   with the ``k``-th smallest presentation timestamp, so the frame count is exact and variable
   frame rates need no special case (OpenCV's path must trust or check the header's count).
2. The packets are decoded forward from the start, each with ``skip_frame`` set to drop it if it
   is neither wanted nor a reference.  When a key frame lies between the decoder and the next
   wanted frame, and no later packet is shown before it (a clean cut: closed GOP), the decoder
   seeks straight to it.

Anything unexpected (no timestamps, duplicate timestamps, a wanted frame that never comes out,
a seek that lands elsewhere, an FFmpeg error, a file over :data:`MAX_BYTES`) raises
:class:`Unsupported`; :func:`stamcli.decode.decoders.decode_with_fallback` then has OpenCV read
the file (decoder ``auto``) or reports it (decoder ``pyav``).
"""

from __future__ import annotations

import math
import os
from array import array
from bisect import bisect_right
from typing import Iterator

import numpy as np
import torch

from .backend import Decoded, Request, sampled_views
from .clip import VideoInfo
from .files import check_file, one_line
from .preprocess import preprocess_frame, resize_size_for, rotate

try:  # PyAV is a dependency, but a platform without its wheels still has the OpenCV backend
    import av
    from av.video.reformatter import VideoReformatter
except ImportError:  # pragma: no cover - exercised only where PyAV is missing
    av = VideoReformatter = None

__all__ = ["MAX_BYTES", "SEEK_MIN_SKIP", "Unsupported", "available", "SparseDecoder", "PyAVBackend", "PYAV",
           "SparseFrameStream"]

#: Larger files go to OpenCV: the demux pass reads the whole file, while OpenCV's few seeks read
#: far less of a multi-gigabyte one.
MAX_BYTES = 1 << 30

#: Seek to a clean key frame only if it skips at least this many packets; shorter jumps decode
#: through.  A seek flushes the decoder and moves the read position; the value is a choice, not a
#: measurement (a 10 s clip with x264's default GOP of 250 frames has one key frame: nothing to seek to).
SEEK_MIN_SKIP = 8


class Unsupported(Exception):
    """PyAV cannot give this video's frames exactly as planned (OpenCV may still read it)."""


def available() -> bool:
    """PyAV is importable and new enough (frames report their display rotation)."""
    return av is not None and hasattr(av.VideoFrame, "rotation")


class SparseDecoder:
    """One video's packet table and a decoder that walks it (a context manager).

    After :meth:`__enter__`: :attr:`frame_count` (exact), :attr:`fps` (the stream's average rate,
    as OpenCV reports it; 0.0 when unknown), :attr:`width` and :attr:`height` (coded size).
    :meth:`frames` yields the wanted frames; :attr:`rotation` (clockwise degrees to show a frame
    upright: 0, 90, 180 or 270; other angles count as 0) is known once the first frame is out.
    What the last :meth:`frames` call did: :attr:`packets_read` (packets given to the decoder,
    skipped ones included), :attr:`frames_decoded` (frames that came out of it) and :attr:`seeks`.
    """

    def __init__(self, path, threads: int = 0):
        self.path, self.threads = os.fspath(path), int(threads)
        self.container = None
        self.rotation = 0
        # One colour converter for every frame: ``frame.to_ndarray(format=...)`` would set up
        # FFmpeg's converter anew for each frame.
        self._to_bgr = VideoReformatter() if VideoReformatter is not None else None
        self.packets_read = self.frames_decoded = self.seeks = 0

    # ------------------------------------------------------------------------------ opening

    def __enter__(self) -> "SparseDecoder":
        if not available():
            raise Unsupported("PyAV is not installed (or older than 14)")
        if os.path.getsize(self.path) > MAX_BYTES:
            raise Unsupported(f"file larger than {MAX_BYTES} bytes")
        try:
            self.container = av.open(self.path)
            self._index()
        except Exception as exc:  # FFmpeg's errors, and anything else PyAV trips on: OpenCV's turn
            self.__exit__()
            raise exc if isinstance(exc, Unsupported) else Unsupported(f"{type(exc).__name__}: {exc}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def _video_stream(self):
        streams = self.container.streams.video
        if not streams:
            raise Unsupported("no video stream")
        return streams[0]

    def _index(self) -> None:
        """The demux pass: every packet's pts in decode order, key frames, and the display order."""
        stream = self._video_stream()
        pts, keys = array("q"), []
        for packet in self.container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            if packet.pts is None:
                raise Unsupported("a packet without a timestamp")
            if getattr(packet, "is_discard", False):  # before an edit list's start: never shown
                raise Unsupported("discarded packets (an edit list)")
            if packet.is_keyframe:
                keys.append(len(pts))
            pts.append(packet.pts)
        if not pts:
            raise Unsupported("no video packets")
        self.pts = np.frombuffer(pts, dtype=np.int64)  #: presentation timestamps in decode order
        self._by_pts = np.argsort(self.pts, kind="stable")  # decode positions in display order
        self.order = self.pts[self._by_pts]  #: the timestamps in display order: frame k shows order[k]
        if np.any(self.order[1:] == self.order[:-1]):
            raise Unsupported("two packets with the same timestamp")
        # a clean key frame: no packet after it in decode order is shown before it
        suffix_min = np.minimum.accumulate(self.pts[::-1])[::-1]
        self.clean_keys = [i for i in keys if suffix_min[i] == self.pts[i]]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        self.fps = fps if math.isfinite(fps) and 0 < fps < 10_000 else 0.0
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        stream.codec_context.thread_type = "NONE" if self.threads == 1 else "AUTO"  # before the codec opens
        stream.codec_context.thread_count = max(0, self.threads)

    @property
    def frame_count(self) -> int:
        return len(self.order)

    def _position(self, pts) -> int | None:
        """Decode position of the packet with timestamp ``pts`` (None: no such packet)."""
        k = int(np.searchsorted(self.order, pts)) if pts is not None else len(self.order)
        return int(self._by_pts[k]) if k < len(self.order) and self.order[k] == pts else None

    # ------------------------------------------------------------------------------ decoding

    def _start(self, stream, target: int, current: int | None) -> Iterator | None:
        """Packets from the last clean key frame at or before decode position ``target`` if that
        skips enough of them (or if nothing was decoded yet), else ``None`` (go on from ``current``)."""
        k = bisect_right(self.clean_keys, target) - 1
        key = self.clean_keys[k] if k >= 0 else None
        if current is not None and (key is None or key - current < SEEK_MIN_SKIP):
            return None
        key = 0 if key is None else key  # nothing clean before the target: decode from the start
        # Seek by the key frame's own timestamp; demuxers may land a key frame or more earlier
        # (MP4 indexes decode timestamps), so packets before ``key`` are read but not decoded.
        self.container.seek(int(self.pts[key]), stream=stream, backward=True)
        self.seeks += key > 0
        packets = self.container.demux(stream)
        for packet in packets:
            if not packet.size:
                continue
            at = self._position(packet.pts)
            if at is None or at > key:
                raise Unsupported("a seek landed after the key frame")
            if at == key:
                return self._chain(packet, packets)
        raise Unsupported("a seek found no packets")

    @staticmethod
    def _chain(first, packets) -> Iterator:
        yield first
        yield from packets

    def frames(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, bgr)`` for each index of ``wanted`` (any order, no duplicates), the frames
        BGR ``uint8`` as decoded (not rotated: see :attr:`rotation`), in display order."""
        stream = self._video_stream()
        context = stream.codec_context
        remaining = {int(self.order[k]): k for k in wanted}
        targets = sorted(remaining)
        packets, current = None, None
        self.packets_read = self.frames_decoded = self.seeks = 0
        try:
            for target_pts in targets:
                if target_pts not in remaining:
                    continue  # already out while decoding towards an earlier target
                restart = self._start(stream, self._position(target_pts), current)
                if restart is not None:
                    packets = restart
                while target_pts in remaining:
                    packet = next(packets, None)
                    if packet is None:  # end of the stream: drain the decoder's delayed frames
                        decoded = context.decode(None)
                    elif not packet.size:
                        continue
                    else:
                        at = self._position(packet.pts)
                        if at is None:
                            raise Unsupported("a packet that the demux pass did not see")
                        current = at + 1
                        context.skip_frame = "DEFAULT" if packet.pts in remaining else "NONREF"
                        self.packets_read += 1
                        decoded = context.decode(packet)
                    for frame in decoded:
                        self.frames_decoded += 1
                        if frame.pts is None:
                            raise Unsupported("a decoded frame without a timestamp")
                        k = remaining.pop(frame.pts, None)
                        if k is not None:
                            rotation = (-int(frame.rotation)) % 360  # PyAV's is counter-clockwise
                            self.rotation = rotation if rotation in (90, 180, 270) else 0  # as OpenCV's path
                            yield k, self._to_bgr.reformat(frame, format="bgr24").to_ndarray()
                    if packet is None and target_pts in remaining:
                        raise Unsupported(f"frame {remaining[target_pts]} never came out of the decoder")
        except av.FFmpegError as exc:
            raise Unsupported(f"{type(exc).__name__}: {exc}") from None
        finally:
            context.skip_frame = "DEFAULT"


def _info(path, decoder: SparseDecoder) -> VideoInfo:
    """What a :class:`SparseDecoder` found, as a header (exact count; rotation once a frame is out)."""
    w, h = (decoder.height, decoder.width) if decoder.rotation in (90, 270) else (decoder.width, decoder.height)
    return VideoInfo(one_line(path), decoder.frame_count, decoder.fps, w, h, decoder.rotation, codec="")


class PyAVBackend:
    """:class:`~stamcli.decode.backend.Backend` by PyAV (:class:`SparseDecoder`); raises
    :class:`Unsupported` for anything it cannot read exactly."""

    name = "pyav"

    def read(self, path, request: Request) -> Decoded:
        with SparseDecoder(path, request.threads) as decoder:

            def fetch(wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
                for k, bgr in decoder.frames(wanted):
                    yield k, rotate(bgr, decoder.rotation)

            indices, views = sampled_views(fetch, decoder.frame_count, request)
        info = _info(path, decoder)
        return Decoded(info, info.frame_count, indices, views, self.name)


PYAV = PyAVBackend()


class SparseFrameStream:
    """The chosen frames of a whole video, decoded with PyAV: the fast path of timelines.

    :class:`~stamcli.decode.opencv.FrameStream` decodes every frame; this one knows the exact frame
    count before decoding (:class:`SparseDecoder`'s demux pass), so a reader can plan what it needs
    up front, and it decodes only the frames :meth:`frames` is asked for and the frames they are
    predicted from (unneeded non-reference frames are dropped unseen; clean key frames are sought
    across long gaps).  ``with SparseFrameStream(path, 32) as stream``: then :attr:`frame_count`
    and :attr:`fps` (0.0 when unknown) are known; :attr:`info` has the rotation and displayed size
    once a frame is out.  Frames are the same as ``FrameStream``'s, bit for bit.  Raises
    :class:`~stamcli.errors.VideoError` (one line) for files the file system cannot read and
    :class:`Unsupported` for anything PyAV cannot read exactly, also part-way through :meth:`frames`.
    """

    def __init__(self, path, img_size: int = 224, *, resize_size: int | None = None, threads: int = 0):
        self.path, self.img_size = path, img_size
        self.resize_size = resize_size or resize_size_for(img_size)
        self.retrieved = 0  #: frames preprocessed so far
        self._decoder = SparseDecoder(path, threads)

    def __enter__(self) -> "SparseFrameStream":
        check_file(self.path)
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
        return _info(self.path, self._decoder)

    @property
    def decoded(self) -> int:
        """Frames that came out of the decoder (wanted or not) in the last :meth:`frames` call."""
        return self._decoder.frames_decoded

    def frames(self, wanted: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
        """``(index, frame)`` for each of ``wanted`` (distinct indices in ``[0, frame_count)``) in
        increasing order; ``frame`` is the preprocessed RGB ``(3, img_size, img_size)`` uint8 tensor."""
        for k, bgr in self._decoder.frames(wanted):
            self.retrieved += 1
            yield k, preprocess_frame(rotate(bgr, self._decoder.rotation), self.img_size, self.resize_size)

    def every_frame(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, upright BGR uint8 frame)`` for every frame in order (shot detection reads them
        all); :meth:`preprocess` turns one into what :meth:`frames` yields."""
        for k, bgr in self._decoder.frames(range(self.frame_count)):
            yield k, rotate(bgr, self._decoder.rotation)

    def preprocess(self, bgr: np.ndarray) -> torch.Tensor:
        """An :meth:`every_frame` frame as :meth:`frames` yields it (counted in :attr:`retrieved`)."""
        self.retrieved += 1
        return preprocess_frame(bgr, self.img_size, self.resize_size)
