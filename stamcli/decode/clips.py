"""Read a video into the ``F`` preprocessed frames STAM expects: :func:`read_clip`, :func:`read_views`
and :class:`ClipSpec` (the same, as one picklable object).

:func:`read_clip` picks ``F`` frames uniformly over the video
(:func:`~stamcli.decode.sampling.sample_indices`) and preprocesses them as the authors' evaluation
did (:mod:`~stamcli.decode.preprocess`).  Decoding does only what is needed, by the backends the
``decoder`` allows (:mod:`~stamcli.decode.decoders`): PyAV first (exact frame counts, unneeded
non-reference frames skipped unseen), OpenCV where PyAV gives up (header counts checked as it reads).

Training augmentation plugs in through two optional callables of :func:`read_clip`: ``sampler``
(which frames, in place of ``sample_indices``) and ``crop`` (which region of the upright frame, in
place of "resize shorter side + centre crop").

Test-time views: :func:`read_views` decodes a video once and returns ``clips x crops`` views of
it, ``clips`` temporal offsets of the uniform sampling and 1 or 3 spatial crops
(:func:`~stamcli.decode.preprocess.preprocess_crops`), cut from the same decoded frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

from ..parallel import one_torch_thread
from ..storage import read_input
from .backend import Decoded, Request
from .clip import Clip, Views
from .decoders import check_decoder, decode_with_fallback
from .files import check_file
from .opencv import SEEK_MIN_GAP
from .preprocess import CROPS, Crop, checked_crop, resize_size_for
from .sampling import Sampler, clip_sampler

__all__ = ["read_clip", "read_views", "ClipSpec"]


def _check_sizes(num_frames: int, img_size: int, resize_size: int) -> None:
    if num_frames < 1 or img_size < 1:
        raise ValueError(f"num_frames and img_size must be >= 1, got {num_frames}, {img_size}")
    if resize_size < img_size:
        raise ValueError(f"resize_size {resize_size} is smaller than img_size {img_size}")


def _read(path, request: Request, decoder: str) -> Decoded:
    """``request``'s views of the video at ``path``, by the backends ``decoder`` allows."""
    check_file(path)
    with one_torch_thread():  # preprocessing on one core (see one_torch_thread)
        (decoded,) = decode_with_fallback(decoder, path, lambda backend: [backend.read(path, request)])
    return decoded


def _facts(path, decoded: Decoded) -> dict:
    info, n = decoded.info, decoded.frame_count
    return dict(path=os.fsdecode(path), indices=decoded.indices, decoder=decoded.decoder, frame_count=n,
                fps=info.fps, duration_s=n / info.fps if info.fps > 0 else 0.0, width=info.width,
                height=info.height, rotation=info.rotation)


def read_clip(path, num_frames: int, img_size: int = 224, *, resize_size: int | None = None,
              threads: int = 0, seek_min_gap: float = SEEK_MIN_GAP, sampler: Sampler | None = None,
              crop: Crop | None = None, decoder: str = "auto") -> Clip:
    """Decode ``num_frames`` uniformly sampled, preprocessed frames of the video at ``path``.

    ``threads``: FFmpeg decoding threads (0: FFmpeg's default).  ``seek_min_gap``: OpenCV seeks
    when the next wanted frame is at least this far ahead (``math.inf``: never seek, 0: always;
    PyAV chooses from the key frames it knows).  ``decoder``: ``auto``, ``pyav`` or ``opencv``
    (:mod:`~stamcli.decode.decoders`); :attr:`Clip.decoder` says which backend read it.
    ``sampler(n, num_frames)`` picks the frames instead of
    :func:`~stamcli.decode.sampling.sample_indices` (called again with the real ``n`` when the
    header count proves wrong).  ``crop(height, width)`` gives the ``(top, left, h, w)`` region
    of the upright frame to resize to ``img_size`` instead of the resize + centre crop; it is
    asked once per clip.  Either returning out-of-range values is a ``ValueError``.  Raises
    :class:`~stamcli.errors.VideoError` (one line) when the file cannot be opened or has no frames.
    """
    resize_size = resize_size or resize_size_for(img_size)
    _check_sizes(num_frames, img_size, resize_size)
    request = Request(num_frames, img_size, resize_size, samplers=(sampler,),
                      crop=None if crop is None else checked_crop(crop), threads=threads, seek_min_gap=seek_min_gap)
    decoded = _read(path, request, decoder)
    return Clip(frames=decoded.views[0], **_facts(path, decoded))


def read_views(path, num_frames: int, img_size: int = 224, *, clips: int = 1, crops: int = 1,
               resize_size: int | None = None, threads: int = 0, seek_min_gap: float = SEEK_MIN_GAP,
               decoder: str = "auto") -> Views:
    """``clips x crops`` test-time views of the video at ``path``, from a single decode.

    Temporal clip ``c`` samples frame ``i`` at ``floor((i + (c + 0.5) / clips) * n / F)``
    (:func:`~stamcli.decode.sampling.sample_indices`); the union of all clips' frames is decoded
    in one pass.  Each frame has its shorter side resized to ``resize_size`` and is cut into
    ``crops`` squares of ``img_size`` (:func:`~stamcli.decode.preprocess.crop_offsets`).
    ``resize_size`` defaults to :func:`~stamcli.decode.preprocess.resize_size_for` (256 for 224:
    the plain centre crop) for one crop and to ``img_size`` for three, so the left, centre and
    right crops together cover the whole frame (the 3-crop test of SlowFast, TimeSformer and
    X3D).  ``clips=1, crops=1`` gives exactly :func:`read_clip`'s frames.  Raises
    :class:`~stamcli.errors.VideoError` as :func:`read_clip` does.
    """
    if clips < 1 or crops not in CROPS:
        raise ValueError(f"need clips >= 1 and crops in {CROPS}, got clips={clips}, crops={crops}")
    resize_size = resize_size or (resize_size_for(img_size) if crops == 1 else img_size)
    _check_sizes(num_frames, img_size, resize_size)
    request = Request(num_frames, img_size, resize_size, samplers=tuple(clip_sampler(c, clips) for c in range(clips)),
                      crops=crops, threads=threads, seek_min_gap=seek_min_gap)
    decoded = _read(path, request, decoder)
    return Views(frames=decoded.views, clips=clips, crops=crops, **_facts(path, decoded))


@dataclass(frozen=True)
class ClipSpec:
    """How to read one video for the model, as one small picklable object.

    ``clips * crops == 1``: :func:`read_clip`'s :class:`Clip`; more views: :func:`read_views`'s
    :class:`Views`.  ``decoder``: ``auto``, ``pyav`` or ``opencv`` (resolve ``None`` /
    ``STAM_DECODER`` first with :func:`~stamcli.decode.decoders.resolve_decoder`).  ``threads``:
    FFmpeg decoding threads (0: FFmpeg's default; 1 where several videos decode at once).
    Everything it needs travels with it, so another process (a Ray task, a DataLoader worker) can
    call :meth:`read`.  :meth:`read` also takes a URL (``s3://``, ``gs://``, ``az://``,
    ``http(s)://``): the video is read from a temporary local copy (:func:`stamcli.storage.read_input`).

    >>> spec = ClipSpec(num_frames=16, img_size=224, clips=2, crops=3)
    >>> views = spec.read("match.mp4")  # frames (6, 16, 3, 224, 224)
    """

    num_frames: int
    img_size: int = 224
    clips: int = 1
    crops: int = 1
    decoder: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.img_size < 1 or self.clips < 1 or self.crops not in CROPS:
            raise ValueError(f"need num_frames, img_size, clips >= 1 and crops in {CROPS}, got {self}")
        object.__setattr__(self, "decoder", check_decoder(self.decoder))

    @property
    def views(self) -> int:
        """Views per video: ``clips * crops``."""
        return self.clips * self.crops

    def read(self, path) -> Union[Clip, Views]:
        """The video at ``path`` (a file or a URL) read as this spec says; :class:`~stamcli.errors.VideoError`
        (one line) when it cannot be read (a :class:`~stamcli.errors.StamError` when a URL cannot be fetched).
        The clip's ``path`` is ``path``, also for a URL."""
        return read_input(path, self._read_local)

    def _read_local(self, path) -> Union[Clip, Views]:
        if self.views == 1:
            return read_clip(path, self.num_frames, self.img_size, threads=self.threads, decoder=self.decoder)
        return read_views(path, self.num_frames, self.img_size, clips=self.clips, crops=self.crops,
                          threads=self.threads, decoder=self.decoder)
