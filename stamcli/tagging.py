"""A whole ``stam predict`` run: inputs -> (shard, resume) -> a result source -> writers, with progress.

Kept apart from the CLI so that Python users get the same behaviour as the command:
``run_tagging(TaggingJob(paths=["videos/"], output="tags.csv"))``. The loop that writes the
results and reports progress is :func:`stamcli.runner.run_loop`; this module supplies its source
(:class:`PredictorSource`: the model in this process or, with ``--engine ray``, in Ray actors
(:mod:`stamcli.ray_engine`), per video or per timeline window) and its sink
(:class:`RecordSink`: the result writer and the contact sheets), and merges the ranks' files under
torchrun.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from .distributed import Distributed
from .engine import Predictor, make_predictor
from .errors import UsageError
from .events import EventOptions, with_events
from .inputs import shard
from .jobs import PredictOptions, TaggingJob
from .markers import require_editors
from .preview import PreviewWriter
from .runner import RunSummary, VideoResult, run_loop
from .storage import is_url
from .subtitles import SIDECAR_FORMATS, open_timeline_writer, output_format, subtitle_paths
from .timeline import ShotWindows, TimelinePredictor, timeline_columns
from .writers import PART_TYPES, ResultWriter, open_writer, read_records

log = logging.getLogger(__name__)


def _part_path(output: str, rank: int, world: int) -> str:
    path = Path(output)
    return str(path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}"))


def _plan(job: TaggingJob, dist: Distributed) -> tuple[list[str], Optional[str]]:
    """The videos this process tags and the file it writes (a part file under torchrun)."""
    if job.shard and dist.active:
        raise UsageError("--shard cannot be combined with torchrun: each rank already takes its own shard")
    if dist.active and job.output and is_url(job.output):
        raise UsageError("under torchrun, --output must be a local file (rank 0 merges the ranks' parts into it)")
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
    return {r["path"] for r in read_records(job.output, fmt)
            if r.get("status") == "ok" and r.get("type") not in PART_TYPES}


def _merge_parts(job: TaggingJob, fmt: str, top_k: int, dist: Distributed, columns: Sequence[str] = ()) -> None:
    """Rank 0: the kept records of the output (--resume) followed by every rank's part, in rank order
    (``columns``: the CSV columns a timeline adds)."""
    parts = [Path(_part_path(job.output, rank, dist.world)) for rank in range(dist.world)]
    with open_writer(job.output, fmt, top_k=top_k, resume=job.resume, columns=columns) as writer:
        for part in parts:
            for record in read_records(part, fmt):
                writer.write(record)
    for part in parts:
        part.unlink(missing_ok=True)


@dataclass(frozen=True)
class TimelinePlan:
    """A checked timeline (``--window``): ``window_s`` seconds per window every ``stride_s``, or
    ``shots`` (``--window shots``); ``events``: ``--events`` (None without it)."""

    window_s: Optional[float]
    stride_s: Optional[float]
    shots: Optional[ShotWindows]
    events: Optional[EventOptions]

    @property
    def columns(self) -> tuple[str, ...]:
        """The CSV columns it adds: ``shot`` with shots, ``event,windows`` with events."""
        return timeline_columns(shots=self.shots is not None, events=self.events is not None)


class PredictorSource:
    """The records of a local :class:`~stamcli.engine.Predictor`: one per video, or with a
    :class:`~stamcli.timeline.TimelinePredictor` each video's window records, then its event
    records (with ``events``, :func:`~stamcli.events.with_events`) and then its video record.
    Each record is its own batch (written as soon as it is known), with the decoded clip when the
    predictor keeps clips (for a preview)."""

    def __init__(self, predictor: Predictor, timeline: Optional[TimelinePredictor] = None,
                 events: Optional[EventOptions] = None):
        self.predictor, self.timeline, self.events = predictor, timeline, events
        self.top_k = predictor.top_k  #: labels per record (the writer's columns)

    def results(self, videos: Sequence[str]) -> Iterator[list[VideoResult]]:
        if self.timeline is not None:
            index = 0
            records = self.timeline.predict(videos)
            for record in records if self.events is None else with_events(records, self.events):
                yield [VideoResult(index, record)]
                if record.get("type") not in PART_TYPES:  # a video's own record ends its results
                    index += 1
            return
        for index, item in enumerate(self.predictor.scores(videos)):
            yield [VideoResult(index, self.predictor.record(item), clip=item.clip)]


class RecordSink:
    """Writes each result's record with ``writer`` and, with ``previews``, the contact sheet of its clip;
    counts the ``unsure`` videos (``ok`` with no prediction left by ``--min-score`` / ``--thresholds``)."""

    def __init__(self, writer: ResultWriter, previews: Optional[PreviewWriter] = None):
        self.writer, self.previews = writer, previews
        self.unsure = 0
        self._stack = ExitStack()

    def write(self, results: Sequence[VideoResult]) -> None:
        for result in results:
            self.writer.write(result.record)
            record = result.record
            self.unsure += (record["status"] == "ok" and not record["predictions"]
                            and record.get("type") not in PART_TYPES)
            if self.previews is not None and result.clip is not None:
                self.previews.write(result.clip, result.record)

    def __enter__(self) -> "RecordSink":
        self._stack.enter_context(self.writer)
        if self.previews is not None:
            self._stack.enter_context(self.previews)
        return self

    def __exit__(self, *exc) -> Optional[bool]:
        return self._stack.__exit__(*exc)


def _checked_options(job: TaggingJob, dist: Distributed) -> tuple[PredictOptions, Optional[str], Optional[TimelinePlan]]:
    """The job's options checked and resolved (a copy), its output format and its timeline (None
    without ``--window``), before any model is loaded."""
    if dist.active and str(job.options.engine).strip().lower() == "ray":
        raise UsageError("--engine ray cannot run under torchrun: Ray spreads the videos over its own workers")
    # under torchrun, auto/cuda means this rank's GPU
    options = replace(job.options, device=dist.device_for(job.options.device)).resolve()
    window_s, shots = job.timeline_options()
    events = job.event_options()
    plan = None if job.window is None else TimelinePlan(window_s, job.stride, shots, events)
    if options.engine == "ray" and job.preview is not None:
        raise UsageError("--preview needs every video's frames on this machine; with --engine ray they stay on "
                         "the cluster (use --engine local)")
    if job.window is not None and job.preview is not None:
        raise UsageError("--preview cannot be combined with --window: a contact sheet shows one clip per video")
    if job.window is not None and options.views > 1:
        raise UsageError("--clips/--crops cannot be combined with --window: each window is one clip")
    fmt = output_format(job.output, job.format)
    if fmt in SIDECAR_FORMATS and dist.active:
        raise UsageError(f"--format {fmt} cannot run under torchrun; run it in one process (or use --shard)")
    require_editors(fmt)  # a missing OpenTimelineIO fails before the model loads
    return options, fmt, plan


def _source(job: TaggingJob, options: PredictOptions, plan: Optional[TimelinePlan], model) -> PredictorSource:
    """What produces the records of ``job``: the model of ``options.engine`` (this process, or Ray
    actors: :func:`~stamcli.engine.make_predictor`), per video or per window (then with events)."""
    predictor = make_predictor(model, options, keep_clips=job.preview is not None)
    if plan is None:
        return PredictorSource(predictor)
    if options.engine == "ray":
        from .ray_engine import RayTimelinePredictor  # Ray is an optional extra

        timeline = RayTimelinePredictor(predictor, plan.window_s, plan.stride_s, shots=plan.shots)
    else:
        timeline = TimelinePredictor(predictor, plan.window_s, plan.stride_s, shots=plan.shots)
    return PredictorSource(predictor, timeline, plan.events)


def run_tagging(
    job: TaggingJob,
    *,
    on_start: Optional[Callable[[int], None]] = None,
    on_record: Optional[Callable[[dict], None]] = None,
    console=None,
) -> RunSummary:
    """Run ``job``; ``on_start(total)`` and ``on_record(record)`` drive a progress display
    (``total`` counts videos; with ``--window`` ``on_record`` also gets each window record).
    ``console``: where the table goes when there is no output file. ``job`` is left as it was."""
    dist = Distributed.from_env()
    options, fmt, plan = _checked_options(job, dist)
    videos, target = _plan(job, dist)
    if dist.active:  # (never with --engine ray, whose device each model actor resolves on its node)
        # Join before the model loads (this rank's GPU becomes the current device); the ranks wait
        # for each other only at the end, however far apart their shards finish (Distributed.barrier).
        dist.init(torch.device(options.device))
    if fmt in SIDECAR_FORMATS:
        subtitle_paths(videos, target, fmt)  # clashing destinations fail before the model loads
    source = _source(job, options, plan, job.load_model(progress=dist.rank == 0))
    previews = PreviewWriter(job.preview) if job.preview is not None else None
    # Under torchrun a rank's part starts empty; the existing output's records are kept by the merge.
    resume_target = job.resume and not dist.active
    done_before = _done_paths(job, fmt) if dist.active else set()
    columns = plan.columns if plan is not None else ()
    if plan is not None or fmt in SIDECAR_FORMATS:
        writer = open_timeline_writer(target, fmt, videos, top_k=source.top_k, resume=resume_target,
                                      console=console, columns=columns, events=plan is not None and
                                      plan.events is not None)
    else:
        writer = open_writer(target, fmt, top_k=source.top_k, resume=resume_target, console=console)
    sink = RecordSink(writer, previews)
    done = done_before if dist.active else writer.done_paths
    todo = [video for video in videos if video not in done]
    summary = run_loop(source, todo, sink, skipped=len(videos) - len(todo),
                       output=job.output, on_start=on_start, on_record=on_record)
    if dist.active and not summary.interrupted:
        dist.barrier()
        if dist.rank == 0:
            _merge_parts(job, fmt, source.top_k, dist, columns=columns)
        dist.barrier()
    return replace(summary, unsure=sink.unsure)
