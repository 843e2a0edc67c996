"""The interface both decoding backends implement, and what they share.

A backend (:class:`~stamcli.decode.pyav.PyAVBackend`, :class:`~stamcli.decode.opencv.OpenCVBackend`)
reads the frames a :class:`Request` asks for from one video and returns them preprocessed
(:class:`Decoded`).  Backends differ only in how they find and decode the frames; choosing frames
(:mod:`~stamcli.decode.sampling`) and preprocessing (:mod:`~stamcli.decode.preprocess`) are done
here, once, by :func:`sampled_views`, so every backend gives the same views of the same frames.
Which backend reads a video, and the fallback from PyAV to OpenCV, is
:func:`stamcli.decode.decoders.decode_with_fallback`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

import numpy as np
import torch

from .clip import VideoInfo
from .preprocess import Crop, preprocess_crops, preprocess_frame
from .sampling import Sampler, sampled

__all__ = ["Request", "Decoded", "Backend", "sampled_views"]

#: ``fetch(wanted)``: ``(index, upright BGR frame)`` for each of the sorted, distinct ``wanted`` indices
Fetch = Callable[[list[int]], Iterator[tuple[int, np.ndarray]]]


@dataclass(frozen=True)
class Request:
    """What to read from one video: ``len(samplers)`` clips of ``num_frames`` frames, each frame
    resized (shorter side to ``resize_size``) and cut into ``crops`` squares of ``img_size``.

    ``samplers``: one per temporal clip (None: :func:`~stamcli.decode.sampling.sample_indices`).
    ``crop``: instead of the resize and the crops, the region of the upright frame to resize to
    ``img_size`` (one view per clip; see :func:`~stamcli.decode.preprocess.checked_crop`).
    ``threads``: FFmpeg decoding threads (0: FFmpeg's default).  ``seek_min_gap``: OpenCV's
    grab-or-seek threshold (None: :data:`~stamcli.decode.opencv.SEEK_MIN_GAP`).
    """

    num_frames: int
    img_size: int
    resize_size: int
    samplers: tuple[Optional[Sampler], ...] = (None,)
    crops: int = 1
    crop: Optional[Crop] = None
    threads: int = 0
    seek_min_gap: Optional[float] = None


@dataclass
class Decoded:
    """A backend's answer: the header facts it found, the number of decodable frames the indices
    were sampled from, every clip's indices (clip after clip), the views
    ``(clips * crops, num_frames, 3, img_size, img_size)`` uint8 and the backend's name."""

    info: VideoInfo
    frame_count: int
    indices: list[int]
    views: torch.Tensor
    decoder: str


class Backend(Protocol):
    """A way of decoding videos (in the spirit of PySceneDetect's ``VideoStream`` backends)."""

    name: str  #: "pyav" or "opencv": what :attr:`Clip.decoder <stamcli.decode.Clip.decoder>` reports

    def read(self, path, request: Request) -> Decoded:
        """The views ``request`` asks for.  Raises :class:`~stamcli.errors.VideoError` (one line)
        for a video the backend cannot read; PyAV raises
        :class:`~stamcli.decode.pyav.Unsupported` where OpenCV may still read it."""
        ...


def sampled_views(fetch: Fetch, n: int, request: Request) -> tuple[list[int], torch.Tensor]:
    """The views of an ``n``-frame video, whichever backend reads it.

    Each of ``request.samplers`` picks one clip's frames; ``fetch(wanted)`` yields ``(index,
    upright BGR frame)`` for the sorted union of them, each decoded once and cut into the
    request's views.  Returns every clip's indices, clip after clip, and the views as
    ``(len(samplers) * crops, num_frames, 3, img_size, img_size)`` uint8 (view ``clip * crops + crop``).
    """
    num_frames, img_size, crops = request.num_frames, request.img_size, request.crops
    plan = [sampled(sampler, n, num_frames) for sampler in request.samplers]
    out = torch.empty((len(plan) * crops, num_frames, 3, img_size, img_size), dtype=torch.uint8)
    for k, bgr in fetch(sorted(set().union(*plan))):
        if request.crop is not None:
            views = preprocess_frame(bgr, img_size, request.resize_size, request.crop(*bgr.shape[:2]))[None]
        else:
            views = preprocess_crops(bgr, img_size, request.resize_size, crops)
        for c, indices in enumerate(plan):
            for i, j in enumerate(indices):
                if j == k:
                    out[c * crops : (c + 1) * crops, i] = views
    return [k for indices in plan for k in indices], out
