"""Batched inference: decode workers -> batches -> model -> records, in input order.

Decoding runs in a thread pool (OpenCV releases the GIL while it decodes and resizes), a bounded
number of videos ahead of the model, so memory stays flat however many videos there are while the
model computes on earlier batches. On the CPU several batches are computed at once, each on its
share of the cores (model streams: :mod:`stamcli.parallel`). Every video gives exactly one record,
an error record for a video that cannot be read, and records come out in the order of the input paths.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, TypeVar

import torch

from .allocator import keep_freed_memory
from .errors import StamError, UsageError
from .parallel import ModelStreams, default_streams, default_workers, single_threaded_decode
from .sparse_decode import decoder_choice
from .video import CROPS, Clip, read_clip, read_views
from .writers import error_record, make_record

if TYPE_CHECKING:  # not imported at run time: Ray decode tasks import this module and need no timm
    from .model import STAM

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
R = TypeVar("R")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ``cuda`` without one is an error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"invalid device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StamError(f"device {spec!r} asked for, but no CUDA GPU is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StamError(f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a CUDA GPU that supports it (else fp16), fp32 on the CPU."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UsageError(f"invalid precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise StamError("fp16 needs a CUDA device; on the CPU use fp32 or bf16")
    return precision


def autocast_for(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


@dataclass
class PredictOptions:
    """How :class:`Predictor` runs. ``frames=None`` uses the frame count the model was trained for.

    ``clips`` x ``crops`` test-time views per video (:func:`stamcli.video.read_views`): the model
    sees every view and the softmax is averaged over them.
    """

    frames: Optional[int] = None
    top_k: int = 5
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    workers: Optional[int] = None
    streams: Optional[int] = None
    clips: int = 1
    crops: int = 1

    @property
    def views(self) -> int:
        """Views per video the model runs on."""
        return self.clips * self.crops

    def check(self) -> tuple[torch.device, str]:
        """Validate the options; the device and the precision they resolve to."""
        for name, value in (("--batch-size", self.batch_size), ("--top-k", self.top_k),
                            ("--frames", self.frames), ("--workers", self.workers), ("--streams", self.streams),
                            ("--clips", self.clips)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.crops not in CROPS:
            raise UsageError(f"--crops must be {' or '.join(map(str, CROPS))}, got {self.crops}")
        decoder_choice()  # a bad STAM_DECODER stops the run here, not at every video
        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device)


def error_reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, StamError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Predictor:
    """Tags videos with a loaded STAM model.

    >>> predictor = Predictor(stamcli.load_model("stam_16"), PredictOptions(top_k=3))
    >>> for record in predictor.predict(["a.mp4", "b.mp4"]): print(record["predictions"][0])
    """

    def __init__(self, model: STAM, options: Optional[PredictOptions] = None, *, keep_clips: bool = False):
        self.options = options or PredictOptions()
        self.keep_clips = keep_clips
        self.device, self.precision = self.options.check()
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on reused activations (stamcli.allocator)
        self.model = model.to(self.device).eval()
        self.frames = self.options.frames or model.config.frames
        self.top_k = min(self.options.top_k, model.config.num_classes)
        self.workers = self.options.workers or default_workers(self.device)
        self.streams = self.options.streams or default_streams(self.device)

    # ------------------------------------------------------------------ model side

    def _to_device(self, clips: list[Clip]) -> torch.Tensor:
        """``(videos, views, F, 3, S, S)`` floats in [0, 1]; a plain clip is one view."""
        batch = torch.stack([clip.frames.reshape(-1, *clip.frames.shape[-4:]) for clip in clips])
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch.float().div_(255.0)

    def _run_model(self, forward, clips: list[Clip]):
        """``forward(videos)`` on the batch of ``clips`` at the chosen precision; out of GPU memory -> one line."""
        try:
            with torch.inference_mode(), autocast_for(self.device, self.precision):
                return forward(self._to_device(clips))
        except torch.cuda.OutOfMemoryError:
            views = f" x {self.options.views} views" if self.options.views > 1 else ""
            raise StamError(
                f"out of GPU memory with --batch-size {self.options.batch_size}{views}; use a smaller batch"
            ) from None

    def probabilities(self, clips: list[Clip]) -> torch.Tensor:
        """Softmax probabilities ``(len(clips), classes)`` in float32 on the CPU.

        A :class:`~stamcli.video.Views` of ``V`` views runs as ``V`` inputs of the model, and its
        probabilities are the mean of their softmaxes (all clips must have the same ``V``).
        """
        logits = self._run_model(lambda videos: self.model(videos.flatten(0, 1)), clips)
        return logits.float().softmax(dim=-1).view(len(clips), -1, logits.shape[-1]).mean(dim=1).cpu()

    def embeddings(self, clips: list[Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        """Video embeddings ``(len(clips), D)`` and frame embeddings ``(len(clips), F, D)`` from one forward
        pass (:meth:`~stamcli.model.STAM.embed_with_frames`), float32 on the CPU (the mean over views
        for :class:`~stamcli.video.Views`)."""
        video, frames = self._run_model(lambda videos: self.model.embed_with_frames(videos.flatten(0, 1)), clips)
        count = len(clips)
        return (video.float().view(count, -1, *video.shape[1:]).mean(dim=1).cpu(),
                frames.float().view(count, -1, *frames.shape[1:]).mean(dim=1).cpu())

    def top_predictions(self, probabilities: torch.Tensor) -> list[dict]:
        """The top-k ``{"label", "index", "score"}`` of one clip's probabilities, best first."""
        scores, indexes = probabilities.topk(self.top_k)
        labels = self.model.labels
        return [{"label": labels[i], "index": i, "score": s} for s, i in zip(scores.tolist(), indexes.tolist())]

    def record(self, item: "ScoredVideo") -> dict:
        """The output record of a scored video: its top-k labels, or the error."""
        views = {"clips": self.options.clips, "crops": self.options.crops} if self.options.views > 1 else {}
        if item.probabilities is None:
            return error_record(item.path, item.error, model=self.model.name, **views)
        predictions = self.top_predictions(item.probabilities)
        return make_record(item.path, predictions=predictions, frames=item.frame_count, model=self.model.name,
                           duration_s=item.duration_s, fps=item.fps, **views)

    # ------------------------------------------------------------------ decode side

    def _decode(self, path: str) -> Clip:
        threads = 1 if self.workers > 1 else 0
        if self.options.views == 1:
            return read_clip(path, self.frames, self.model.config.img_size, threads=threads)
        return read_views(path, self.frames, self.model.config.img_size, clips=self.options.clips,
                          crops=self.options.crops, threads=threads)

    def predict(self, paths: Iterable[str]) -> Iterator[dict]:
        """One output record per path, in order (see the README for the schema)."""
        for item in self.scores(paths):
            yield self.record(item)

    def scores(self, paths: Iterable[str]) -> Iterator["ScoredVideo"]:
        """Every class probability of each video, in order. Decoding runs ahead in worker threads.

        With ``keep_clips`` each item also holds its :class:`~stamcli.video.Clip` (the sampled frames,
        e.g. for a preview); otherwise the frames are dropped once the batch is scored.
        """
        for batch, probabilities in self.computed(paths, self.probabilities):
            probabilities = iter(probabilities if probabilities is not None else ())
            for item in batch:
                if item.error is None:
                    item.probabilities = next(probabilities)
                    if not self.keep_clips:
                        item.clip = None
            yield from batch

    def computed(self, paths: Iterable[str], compute: Callable[[list[Clip]], R]
                 ) -> Iterator[tuple[list["ScoredVideo"], Optional[R]]]:
        """Each batch of :meth:`batches` with ``compute(clips)`` of its readable clips (None when it has
        none), in order; on the CPU up to :attr:`streams` batches are computed at once."""

        def run(batch: list[ScoredVideo]) -> Optional[R]:
            clips = [item.clip for item in batch if item.error is None]
            return compute(clips) if clips else None

        with ModelStreams(self.streams, model=self.model) as streams:
            yield from streams.map(run, self.batches(paths))

    def batches(self, paths: Iterable[str]) -> Iterator[list["ScoredVideo"]]:
        """The videos decoded, in order, ``batch_size`` at a time: each item holds its clip or its error.

        Decoding runs a bounded number of videos ahead in worker threads while the caller computes.
        """
        window = self.options.batch_size * (self.streams + 1) + self.workers
        pending: deque[tuple[str, Future]] = deque()
        path_iter = iter(paths)
        model_threads = torch.get_num_threads()
        with ThreadPoolExecutor(
            self.workers, thread_name_prefix="stam-decode", initializer=single_threaded_decode
        ) as pool:
            try:
                while True:
                    while len(pending) < window and (path := next(path_iter, None)) is not None:
                        pending.append((path, pool.submit(self._decode, path)))
                    if not pending:
                        return
                    chunk = [pending.popleft() for _ in range(min(self.options.batch_size, len(pending)))]
                    yield [self._decoded(path, future) for path, future in chunk]
            finally:
                for _, future in pending:
                    future.cancel()
                torch.set_num_threads(model_threads)  # the default that threads started later inherit

    @staticmethod
    def _decoded(path: str, future: Future) -> "ScoredVideo":
        try:
            clip = future.result()
        except Exception as err:  # one bad video never stops the run
            return ScoredVideo(path, None, error_reason(err))
        return ScoredVideo(path, None, None, clip.frame_count, clip.fps, clip.duration_s, clip)


@dataclass
class ScoredVideo:
    """A video on its way through a :class:`Predictor`: its clip once decoded (:meth:`Predictor.batches`),
    its class probabilities ``(classes,)`` once scored (:meth:`Predictor.scores`), or why it could not be read."""

    path: str
    probabilities: Optional[torch.Tensor]
    error: Optional[str]
    frame_count: Optional[int] = None
    fps: Optional[float] = None
    duration_s: Optional[float] = None
    clip: Optional[Clip] = None  #: the decoded frames (kept by :meth:`Predictor.scores` only with ``keep_clips``)


def predict(
    paths: Iterable[str],
    model: STAM,
    options: Optional[PredictOptions] = None,
) -> list[dict]:
    """Tag ``paths`` with ``model``; a list of records (see the README for the schema)."""
    return list(Predictor(model, options).predict(paths))


class Throughput:
    """Counts for the end-of-run summary."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ok = 0
        self.failed = 0

    def add(self, record: dict) -> None:
        if record["status"] == "ok":
            self.ok += 1
        else:
            self.failed += 1

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def videos_per_s(self) -> float:
        return (self.ok + self.failed) / self.elapsed if self.elapsed > 0 else 0.0
