"""A whole ``stam predict`` run: inputs -> (shard, resume) -> Predictor -> writer, with progress.

Kept apart from the CLI so that Python users get the same behaviour as the command:
``run_tagging(TaggingJob(paths=["videos/"], output="tags.csv"))``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from .distributed import Distributed
from .engine import Predictor, PredictOptions, Throughput
from .errors import UsageError
from .inputs import DEFAULT_EXTENSIONS, collect_videos, parse_shard, shard
from .preview import PreviewWriter
from .ray_engine import RayOptions, RayPredictor, RayTimelinePredictor, check_options
from .subtitles import SUBTITLE_FORMATS, open_timeline_writer, output_format, subtitle_paths
from .timeline import TIMELINE_COLUMNS, TimelinePredictor, check_timeline
from .video import Clip
from .writers import open_writer, read_records
from .zoo import model_for_frames

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stam_16"


@dataclass(kw_only=True)
class VideoJob:
    """What every per-video command (``predict``, ``embed``) is asked: which videos, which model, how to run it."""

    paths: Sequence[str]
    model: Optional[str] = None  # zoo name or checkpoint file; None: chosen by --frames (stam_16)
    recursive: bool = True
    extensions: Sequence[str] = DEFAULT_EXTENSIONS
    resume: bool = False
    shard: Optional[str] = None  # "I/N"
    labels: Optional[str] = None
    arch: Optional[str] = None
    weights_dir: Optional[str] = None
    mirror: Optional[str] = None
    offline: Optional[bool] = None
    trust_checkpoint: bool = False
    options: PredictOptions = field(default_factory=PredictOptions)
    ray: Optional[RayOptions] = None  # --engine ray (stamcli.ray_engine); None: the local engine

    def videos(self) -> list[str]:
        """The input videos, in order, and only this machine's ``--shard`` of them."""
        videos = collect_videos(self.paths, recursive=self.recursive, extensions=tuple(self.extensions))
        return shard(videos, parse_shard(self.shard)) if self.shard else videos

    def load_model(self, progress: bool = True):
        """The model (``--model``, else the zoo model for ``--frames``), downloaded if missing."""
        from . import load_model

        return load_model(
            model_name_for(self), weights_dir=self.weights_dir, labels=self.labels, arch=self.arch,
            trust_checkpoint=self.trust_checkpoint, offline=self.offline, mirror=self.mirror, progress=progress,
        )


@dataclass(kw_only=True)
class TaggingJob(VideoJob):
    """Everything ``stam predict`` was asked to do."""

    output: Optional[str] = None  # None: a table on stdout
    format: Optional[str] = None  # None: from the output's extension
    preview: Optional[str] = None  # folder for a contact sheet per ok video (stamcli.preview)
    window: Optional[float] = None  # timeline: seconds per window (None: one record per video)
    stride: Optional[float] = None  # timeline: seconds between window starts (None: the window)


@dataclass
class TaggingSummary:
    ok: int
    failed: int
    skipped: int  # already done (--resume)
    elapsed_s: float
    videos_per_s: float
    output: Optional[str]
    interrupted: bool = False


def model_name_for(job: VideoJob) -> str:
    """``--model`` when given, else the zoo model trained for ``--frames`` (stam_16 by default)."""
    if job.model:
        return job.model
    if job.options.frames:
        return model_for_frames(job.options.frames).name
    return DEFAULT_MODEL


def _part_path(output: str, rank: int, world: int) -> str:
    path = Path(output)
    return str(path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}"))


def _plan(job: TaggingJob, dist: Distributed) -> tuple[list[str], Optional[str]]:
    """The videos this process tags and the file it writes (a part file under torchrun)."""
    if job.shard and dist.active:
        raise UsageError("--shard cannot be combined with torchrun: each rank already takes its own shard")
    videos = job.videos()
    if dist.active:
        if not job.output:
            raise UsageError("under torchrun, --output is required (rank 0 merges the ranks' results into it)")
        videos = shard(videos, (dist.rank, dist.world))
        return videos, _part_path(job.output, dist.rank, dist.world)
    return videos, job.output


def _done_paths(job: TaggingJob, fmt: Optional[str]) -> set[str]:
    if not (job.resume and job.output and Path(job.output).exists()):
        return set()
    return {r["path"] for r in read_records(job.output, fmt) if r.get("status") == "ok" and r.get("type") != "window"}


def _merge_parts(job: TaggingJob, fmt: str, top_k: int, dist: Distributed) -> None:
    """Rank 0: the kept records of the output (--resume) followed by every rank's part, in rank order."""
    parts = [Path(_part_path(job.output, rank, dist.world)) for rank in range(dist.world)]
    columns = TIMELINE_COLUMNS if job.window is not None else ()
    with open_writer(job.output, fmt, top_k=top_k, resume=job.resume, columns=columns) as writer:
        for part in parts:
            for record in read_records(part, fmt):
                writer.write(record)
    for part in parts:
        part.unlink(missing_ok=True)


def _tagged(
    predictor: Predictor, timeline: Optional[TimelinePredictor], paths: list[str]
) -> Iterator[tuple[dict, Optional[Clip]]]:
    """``(record, clip)`` in output order: each whole-video record with its clip (kept for a preview),
    or a timeline record with ``None``."""
    if timeline is not None:
        for record in timeline.predict(paths):
            yield record, None
        return
    for item in predictor.scores(paths):
        yield predictor.record(item), item.clip


def run_tagging(
    job: TaggingJob,
    *,
    on_start: Optional[Callable[[int], None]] = None,
    on_record: Optional[Callable[[dict], None]] = None,
    console=None,
) -> TaggingSummary:
    """Run ``job``; ``on_start(total)`` and ``on_record(record)`` drive a progress display
    (``total`` counts videos; with ``--window`` ``on_record`` also gets each window record)."""
    dist = Distributed.from_env()
    if job.ray is not None:
        if dist.active:
            raise UsageError("--engine ray cannot run under torchrun: Ray spreads the videos over its own workers")
        check_options(job.options, preview=job.preview is not None)
    else:
        job.options.device = dist.device_for(job.options.device)
        job.options.check()  # bad options fail before a model is loaded or downloaded
    check_timeline(job.window, job.stride)
    if job.window is not None and job.preview is not None:
        raise UsageError("--preview cannot be combined with --window: a contact sheet shows one clip per video")
    if job.window is not None and job.options.views > 1:
        raise UsageError("--clips/--crops cannot be combined with --window: each window is one clip")
    fmt = output_format(job.output, job.format)
    if fmt in SUBTITLE_FORMATS and dist.active:
        raise UsageError(f"--format {fmt} cannot run under torchrun; run it in one process (or use --shard)")
    videos, target = _plan(job, dist)
    if fmt in SUBTITLE_FORMATS:
        subtitle_paths(videos, target, fmt)  # clashing destinations fail before the model loads
    model = job.load_model(progress=dist.rank == 0)
    if job.ray is None:
        predictor = Predictor(model, job.options, keep_clips=job.preview is not None)
        timeline = None if job.window is None else TimelinePredictor(predictor, job.window, job.stride)
    else:
        predictor = RayPredictor(model, job.options, job.ray)
        timeline = None if job.window is None else RayTimelinePredictor(predictor, job.window, job.stride)
    previews = PreviewWriter(job.preview) if job.preview is not None else None
    stats = Throughput()
    interrupted = False
    # Under torchrun a rank's part starts empty; the existing output's records are kept by the merge.
    resume_target = job.resume and not dist.active
    if job.window is not None or fmt in SUBTITLE_FORMATS:
        writer = open_timeline_writer(target, fmt, videos, top_k=predictor.top_k, resume=resume_target,
                                      console=console, timeline=job.window is not None)
    else:
        writer = open_writer(target, fmt, top_k=predictor.top_k, resume=resume_target, console=console)
    with writer, nullcontext() if previews is None else previews:
        done = _done_paths(job, fmt) if dist.active else writer.done_paths
        todo = [video for video in videos if video not in done]
        if on_start:
            on_start(len(todo))
        try:
            for record, clip in _tagged(predictor, timeline, todo):
                writer.write(record)
                if previews is not None and clip is not None:
                    previews.write(clip, record)
                if on_record:
                    on_record(record)
                if record.get("type") != "window":  # counts are per video
                    stats.add(record)
        except KeyboardInterrupt:
            interrupted = True
    if dist.active and not interrupted:
        dist.barrier()
        if dist.rank == 0:
            _merge_parts(job, fmt, predictor.top_k, dist)
        dist.barrier()
    return TaggingSummary(
        ok=stats.ok, failed=stats.failed, skipped=len(videos) - len(todo), elapsed_s=stats.elapsed,
        videos_per_s=stats.videos_per_s, output=job.output, interrupted=interrupted,
    )
