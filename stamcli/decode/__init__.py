"""Decoding: a video file -> the ``F`` preprocessed frames STAM sees.  Import from here.

Reading (:mod:`.clips`): :func:`read_clip`, :func:`read_views`, :class:`ClipSpec` (both as one
picklable object); :func:`probe` reads a header.  Results (:mod:`.clip`): :class:`Clip`,
:class:`Views`, :class:`VideoInfo`.  Frames and pixels: :func:`sample_indices` (:mod:`.sampling`),
:func:`preprocess_frame` and friends (:mod:`.preprocess`).  Backends: PyAV (:mod:`.pyav`) and
OpenCV (:mod:`.opencv`) behind one interface (:mod:`.backend`); which one reads a video, and the
fallback from PyAV to OpenCV, is :mod:`.decoders` (``auto`` / ``pyav`` / ``opencv``,
:func:`resolve_decoder` reads ``STAM_DECODER``).  Whole videos frame by frame (timelines):
:class:`SparseFrameStream` (PyAV) and :class:`FrameStream` (OpenCV).
"""

import os as _os

# Quieten OpenCV and FFmpeg on stderr unless the user chose otherwise; every problem they would
# report reaches the user as a VideoError.  FFmpeg's level is read when OpenCV first opens a file;
# OpenCV's own when cv2 is first imported, so it is also set here in case cv2 came first.
_QUIET_LOG = "OPENCV_LOG_LEVEL" not in _os.environ
_os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2 as _cv2  # noqa: E402

if _QUIET_LOG:
    try:
        _cv2.utils.logging.setLogLevel(_cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # pragma: no cover - very old OpenCV
        pass

from .clip import Clip, VideoInfo, Views  # noqa: E402
from .clips import ClipSpec, read_clip, read_views  # noqa: E402
from .decoders import DECODERS, decode_with_fallback, resolve_decoder  # noqa: E402
from .opencv import SEEK_MIN_GAP, FrameStream, probe  # noqa: E402
from .preprocess import CROPS, crop_offsets, preprocess_crops, preprocess_frame, resize_size_for  # noqa: E402
from .pyav import SparseFrameStream, Unsupported  # noqa: E402
from .sampling import sample_indices  # noqa: E402

__all__ = ["Clip", "Views", "VideoInfo", "ClipSpec", "read_clip", "read_views", "probe", "DECODERS",
           "resolve_decoder", "decode_with_fallback", "Unsupported", "sample_indices", "CROPS", "crop_offsets",
           "resize_size_for", "preprocess_frame", "preprocess_crops", "SEEK_MIN_GAP", "FrameStream",
           "SparseFrameStream"]
