"""What decoding gives: a clip's preprocessed frames (:class:`Clip`, :class:`Views`) and a header
(:class:`VideoInfo`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Clip", "Views", "VideoInfo"]


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
    decoder: str = "opencv"  #: the backend that read the frames: "pyav" or "opencv"


@dataclass
class Views(Clip):
    """Several views of one video, cut from one decode (:func:`stamcli.decode.read_views`).

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
