"""Batched inference: decode workers -> batches -> model -> records, in input order.

Decoding runs in a thread pool (OpenCV releases the GIL while it decodes and resizes), a bounded
number of videos ahead of the model, so memory stays flat however many videos there are while the
model computes on earlier batches. On the CPU several batches are computed at once, each on its
share of the cores (model streams: :mod:`stamcli.parallel`). Every video gives exactly one record,
an error record for a video that cannot be read, and records come out in the order of the input paths.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, TypeVar

import torch

from .allocator import keep_freed_memory
from .decode import Clip, ClipSpec
from .device import autocast_for
from .errors import StamError
from .jobs import PredictOptions
from .labelmap import LabelMap
from .parallel import ModelStreams, default_streams, default_workers, single_threaded_decode
from .storage import abort_downloads
from .thresholds import Thresholds, score_floors, top_k_above, uncalibrated
from .writers import error_record, make_record

if TYPE_CHECKING:  # not imported at run time: Ray decode tasks import this module and need no timm
    from .model import STAM

log = logging.getLogger(__name__)

R = TypeVar("R")


def error_reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, StamError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Predictor:
    """Tags videos with a loaded STAM model.

    >>> predictor = Predictor(stamcli.load_model("stam_16"), PredictOptions(top_k=3))
    >>> for record in predictor.predict(["a.mp4", "b.mp4"]): print(record["predictions"][0])

    Records name :attr:`classes`: the model's labels, or the tags of ``options.label_map``.
    """

    def __init__(self, model: STAM, options: Optional[PredictOptions] = None, *, keep_clips: bool = False):
        self.options = (options or PredictOptions()).resolve()  # checked once: a resolved copy is kept as it is
        if self.options.engine != "local":
            raise ValueError(f"Predictor runs the model in this process; for engine {self.options.engine!r} use "
                             "make_predictor()")
        self.keep_clips = keep_clips
        self.device, self.precision = torch.device(self.options.device), self.options.precision
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on reused activations (stamcli.allocator)
        self.model = model.to(self.device).eval()
        self.num_frames = self.options.num_frames or model.config.frames
        #: the options' label map checked against the model's labels (None: records name the model's labels)
        self.label_map: Optional[LabelMap] = (None if self.options.label_map is None
                                              else self.options.label_map.bind(model.labels))
        self.classes: list[str] = self.label_map.tags if self.label_map else list(model.labels)  #: what records name
        self.top_k = min(self.options.top_k, len(self.classes))
        self.floors = self._floors()  #: each class's lowest score to be predicted (None: no floor)
        self.workers = self.options.workers or default_workers(self.device)
        self.streams = self.options.streams or default_streams(self.device)
        #: how each video is read (picklable: decode workers in other processes can use it)
        self.clip_spec = ClipSpec(self.num_frames, model.config.img_size, self.options.clips, self.options.crops,
                                  self.options.decoder, threads=1 if self.workers > 1 else 0)

    def _floors(self) -> Optional[torch.Tensor]:
        """Each of :attr:`classes`' lowest score to be predicted (--min-score, --thresholds), or None."""
        thresholds, min_score = self.options.thresholds, self.options.min_score
        if thresholds is None and min_score is None:
            return None
        floors = score_floors(self.classes, min_score, thresholds)
        if thresholds is not None:
            self._check_calibrated_for(thresholds)
            missing = uncalibrated(self.classes, thresholds)
            if missing:
                fallback = f"--min-score {min_score:g}" if min_score is not None else "no threshold: any score"
                shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
                log.warning("%d of %d classes have no calibrated threshold and use %s: %s", len(missing),
                            len(self.classes), fallback, shown)
        return floors

    def _check_calibrated_for(self, thresholds: Thresholds) -> None:
        """Warn when ``thresholds`` were calibrated for another model or label map (their scores differ)."""
        given = self.label_map.source if self.label_map else None
        if thresholds.model and thresholds.model != self.model.name:
            log.warning("the thresholds in %s were calibrated for model %s, not %s", thresholds.source,
                        thresholds.model, self.model.name)
        if given and thresholds.label_map and Path(thresholds.label_map).name != Path(given).name:
            log.warning("the thresholds in %s were calibrated with label map %s, not %s", thresholds.source,
                        thresholds.label_map, given)

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

        A :class:`~stamcli.decode.Views` of ``V`` views runs as ``V`` inputs of the model, and its
        probabilities are the mean of their softmaxes (all clips must have the same ``V``).
        """
        logits = self._run_model(lambda videos: self.model(videos.flatten(0, 1)), clips)
        return logits.float().softmax(dim=-1).view(len(clips), -1, logits.shape[-1]).mean(dim=1).cpu()

    def embeddings(self, clips: list[Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        """Video embeddings ``(len(clips), D)`` and frame embeddings ``(len(clips), F, D)`` from one forward
        pass (:meth:`~stamcli.model.STAM.embed_with_frames`), float32 on the CPU (the mean over views
        for :class:`~stamcli.decode.Views`)."""
        video_embeddings, frame_embeddings = self._run_model(
            lambda videos: self.model.embed_with_frames(videos.flatten(0, 1)), clips)
        count = len(clips)
        return (video_embeddings.float().view(count, -1, *video_embeddings.shape[1:]).mean(dim=1).cpu(),
                frame_embeddings.float().view(count, -1, *frame_embeddings.shape[1:]).mean(dim=1).cpu())

    def class_scores(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Scores of :attr:`classes` from the model's probabilities ``(..., labels)``: the tags' summed
        probabilities with a label map, else the probabilities themselves."""
        return probabilities if self.label_map is None else self.label_map.apply(probabilities)

    def top_predictions(self, probabilities: torch.Tensor) -> list[dict]:
        """The top-k ``{"label", "index", "score"}`` of one clip's probabilities, best first: tags with a
        label map (``index`` is the tag's), and only classes at or above their floor (none left: the
        video is unsure)."""
        ranked = top_k_above(self.class_scores(probabilities), self.top_k, self.floors)
        return [{"label": self.classes[i], "index": i, "score": s} for i, s in ranked]

    def record(self, item: "VideoItem") -> dict:
        """The output record of a scored video: its top-k labels, or the error."""
        views = {"clips": self.options.clips, "crops": self.options.crops} if self.options.views > 1 else {}
        if item.probabilities is None:
            return error_record(item.path, item.error, model=self.model.name, **views)
        predictions = self.top_predictions(item.probabilities)
        return make_record(item.path, predictions=predictions, frames=item.frame_count, model=self.model.name,
                           duration_s=item.duration_s, fps=item.fps, **views)

    # ------------------------------------------------------------------ decode side

    def _decode(self, path: str) -> Clip:
        return self.clip_spec.read(path)

    def predict(self, paths: Iterable[str]) -> Iterator[dict]:
        """One output record per path, in order (schema: docs/formats.md)."""
        for item in self.scores(paths):
            yield self.record(item)

    def scores(self, paths: Iterable[str]) -> Iterator["VideoItem"]:
        """Every class probability of each video, in order. Decoding runs ahead in worker threads.

        With ``keep_clips`` each item also holds its :class:`~stamcli.decode.Clip` (the sampled frames,
        e.g. for a preview); otherwise the frames are dropped once the batch is scored.
        """
        for batch, probabilities in self.compute_batches(paths, self.probabilities):
            probabilities = iter(probabilities if probabilities is not None else ())
            for item in batch:
                if item.error is None:
                    item.probabilities = next(probabilities)
                    if not self.keep_clips:
                        item.clip = None
            yield from batch

    def compute_batches(self, paths: Iterable[str], compute: Callable[[list[Clip]], R]
                        ) -> Iterator[tuple[list["VideoItem"], Optional[R]]]:
        """Each batch of :meth:`batches` with ``compute(clips)`` of its readable clips (None when it has
        none), in order; on the CPU up to :attr:`streams` batches are computed at once."""

        def run(batch: list[VideoItem]) -> Optional[R]:
            clips = [item.clip for item in batch if item.error is None]
            return compute(clips) if clips else None

        with ModelStreams(self.streams, model=self.model) as streams:
            yield from streams.map(run, self.batches(paths))

    def batches(self, paths: Iterable[str]) -> Iterator[list["VideoItem"]]:
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
                if pending:
                    abort_downloads()  # a run cut short: running downloads stop now, not at their last byte
                torch.set_num_threads(model_threads)  # the default that threads started later inherit

    @staticmethod
    def _decoded(path: str, future: Future) -> "VideoItem":
        try:
            clip = future.result()
        except Exception as err:  # one bad video never stops the run
            return VideoItem(path, error=error_reason(err))
        return VideoItem(path, frame_count=clip.frame_count, fps=clip.fps, duration_s=clip.duration_s, clip=clip)


@dataclass
class VideoItem:
    """A video on its way through a :class:`Predictor`: its clip once decoded (:meth:`Predictor.batches`),
    its class probabilities ``(classes,)`` once scored (:meth:`Predictor.scores`), or why it could not be read."""

    path: str
    error: Optional[str] = None  #: why the video could not be read (None: it was)
    frame_count: Optional[int] = None
    fps: Optional[float] = None
    duration_s: Optional[float] = None
    clip: Optional[Clip] = None  #: the decoded frames (kept by :meth:`Predictor.scores` only with ``keep_clips``)
    probabilities: Optional[torch.Tensor] = None  #: set by :meth:`Predictor.scores`


def make_predictor(model: STAM, options: Optional[PredictOptions] = None, *, keep_clips: bool = False) -> Predictor:
    """The predictor of ``options.engine``: a :class:`Predictor` (``local``), or a
    :class:`~stamcli.ray_engine.RayPredictor` (``ray``: the same records, computed on a Ray cluster)."""
    options = (options or PredictOptions()).resolve()
    if options.engine == "ray":
        from .ray_engine import RayPredictor  # Ray is an optional extra

        return RayPredictor(model, options)
    return Predictor(model, options, keep_clips=keep_clips)


def predict(
    paths: Iterable[str],
    model: STAM,
    options: Optional[PredictOptions] = None,
) -> list[dict]:
    """Tag ``paths`` with ``model``; a list of records (schema: docs/formats.md)."""
    return list(make_predictor(model, options).predict(paths))
