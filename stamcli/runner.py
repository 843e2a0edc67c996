"""The run loop of ``stam predict`` and ``stam embed``: results from a source go to a sink, with
progress, Ctrl-C, counts and a summary.

Two parts plug into :func:`run_loop`:

* a **source** (:class:`ResultSource`) turns the list of videos still to do into
  :class:`VideoResult` batches: a :class:`~stamcli.engine.Predictor` in this process, or with
  ``--engine ray`` a :class:`~stamcli.ray_engine.RayPredictor` on a Ray cluster, behind
  :class:`stamcli.tagging.PredictorSource` and :class:`stamcli.embedding.EmbeddingSource`; any
  other engine that yields the same results plugs in the same way.
* a **sink** (:class:`ResultSink`) writes each batch as it arrives: the result writers and
  previews of ``predict`` (:class:`stamcli.tagging.RecordSink`), the embedding arrays and index of
  ``embed`` (:class:`stamcli.embedding.EmbeddingSink`). It is a context manager: the loop closes it
  whatever happens, so Ctrl-C leaves valid files and ``--resume`` continues from them.

The loop counts the videos (``ok``/``failed``; timeline window and event records are shown as
progress but not counted), calls ``on_start(total)`` and ``on_record(record)`` for a progress display, turns
Ctrl-C (:class:`KeyboardInterrupt`) into ``interrupted=True`` in the :class:`RunSummary` and stops
the source (its decode threads) before it closes the sink.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from .writers import PART_TYPES

__all__ = ["VideoResult", "ResultSource", "ResultSink", "RunSummary", "run_loop"]


@dataclass
class VideoResult:
    """One output of a source for the video ``index`` of the list it was given.

    ``record`` has the schema of :mod:`stamcli.writers` (``path``, ``status``, ``error``, ...). A
    timeline source gives several results per video: its ``"type": "window"`` records, its
    ``"type": "event"`` records (``--events``), then its ``"type": "video"`` record. What else a
    result carries depends on the command: the decoded ``clip`` (predict with ``--preview``), the
    ``embedding`` ``(D,)`` and ``frame_embeddings`` ``(F, D)`` of an ``ok`` video (embed).
    """

    index: int
    record: dict
    clip: Any = None
    embedding: Any = None
    frame_embeddings: Any = None


class ResultSource(Protocol):
    """Produces the results of a list of videos."""

    def results(self, videos: Sequence[str]) -> Iterable[Sequence[VideoResult]]:
        """Batches of results, every video of ``videos`` exactly once (an error record for one that
        cannot be read). Each batch is written as a whole, so a batch is also the unit that
        survives Ctrl-C. The local sources keep the order of ``videos``."""
        ...


class ResultSink(Protocol):
    """Writes the results of a run as they arrive; closed (``__exit__``) when the run ends, also on
    Ctrl-C or an error."""

    def write(self, results: Sequence[VideoResult]) -> None: ...

    def __enter__(self) -> "ResultSink": ...

    def __exit__(self, *exc) -> Optional[bool]: ...


@dataclass
class RunSummary:
    """What a run did: videos ``ok`` and ``failed`` in this run, ``skipped`` (already done, ``--resume``).
    ``unsure`` (predict): the ``ok`` videos left with no prediction by ``--min-score`` / ``--thresholds``,
    counted by its sink (:class:`stamcli.tagging.RecordSink`)."""

    ok: int
    failed: int
    skipped: int
    elapsed_s: float
    videos_per_s: float
    output: Optional[str]
    interrupted: bool = False
    unsure: int = 0


class _Counts:
    """Videos done and failed, and the time since the start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ok = 0
        self.failed = 0

    def add(self, record: dict) -> None:
        if record.get("type") in PART_TYPES:  # counts are per video (windows and events are parts of one)
            return
        if record["status"] == "ok":
            self.ok += 1
        else:
            self.failed += 1

    def summary(self, **fields) -> dict:
        elapsed = time.perf_counter() - self.started
        rate = (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0
        return dict(ok=self.ok, failed=self.failed, elapsed_s=elapsed, videos_per_s=rate, **fields)


def run_loop(
    source: ResultSource,
    videos: Sequence[str],
    sink: ResultSink,
    *,
    skipped: int = 0,
    output: Optional[str] = None,
    on_start: Optional[Callable[[int], None]] = None,
    on_record: Optional[Callable[[dict], None]] = None,
) -> RunSummary:
    """Write the results of ``videos`` from ``source`` to ``sink``; the summary of the run.

    ``on_start(len(videos))`` is called first, ``on_record(record)`` after each result is written.
    Ctrl-C ends the run with ``interrupted=True``; the sink is closed in every case.
    """
    counts = _Counts()
    interrupted = False
    if on_start:
        on_start(len(videos))
    try:
        with sink:
            batches = iter(source.results(videos))
            try:
                for batch in batches:
                    sink.write(batch)
                    for result in batch:
                        if on_record:
                            on_record(result.record)
                        counts.add(result.record)
            finally:
                close = getattr(batches, "close", None)
                if close is not None:  # stop the source (its decode threads) before the sink closes
                    close()
    except KeyboardInterrupt:
        interrupted = True
    return RunSummary(**counts.summary(skipped=skipped, output=output, interrupted=interrupted))
