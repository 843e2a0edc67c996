"""Events: a video's windows merged into "label X from 12:31 to 12:39" (``stam predict --events``).

:func:`merge_events` is a pure function over one video's window records, in four steps:

1. **Ownership.**  Each window owns the part of the video given by
   :func:`stamcli.timeline.segments`, the same segments the subtitles show, so overlapping
   windows never count an instant twice and shots own exactly their own span.  A window's label
   is its top-1 label, or none when ``min_score`` is given and its top-1 score is below it.
2. **Runs.**  Neighbouring segments with the same label join into a run.
3. **Bridging.**  Two runs of the same label with at most ``gap_s`` seconds between them become
   one event, which also covers what lay between them (other labels' runs, unlabelled time):
   a flicker ``A A B A A`` with a short ``B`` is one ``A`` event, and ``B`` no event of its own.
   Runs are taken longest first, each bridging as far as it can to either side, so where two
   labels interleave the one that covers more time wins; equal lengths go to the earlier run.
   Events therefore never overlap.
4. **Dropping.**  Events shorter than ``min_event_s`` are dropped (their time stays uncovered).

An event's ``score`` is the mean of its own windows' top-1 scores weighted by the seconds each
owns (the bridged time in between does not count), and ``windows`` lists those windows' numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

from .errors import UsageError
from .jobs import DEFAULT_EVENT_GAP_S, DEFAULT_MIN_EVENT_S
from .timeline import segments
from .writers import make_record

__all__ = ["EventOptions", "Event", "merge_events", "event_records", "with_events", "DEFAULT_EVENT_GAP_S",
           "DEFAULT_MIN_EVENT_S"]

_EPS = 1e-9  # seconds: times computed from frame counts compare equal within this


@dataclass(frozen=True)
class EventOptions:
    """``--event-gap``, ``--min-event``, and ``min_score``: a floor on a window's top-1 score (None:
    every top-1 label counts). ``stam predict --min-score`` needs none here: it already leaves
    windows below it without predictions, and those have no label."""

    gap_s: float = DEFAULT_EVENT_GAP_S
    min_event_s: float = DEFAULT_MIN_EVENT_S
    min_score: Optional[float] = None

    def check(self) -> None:
        for name, value in (("--event-gap", self.gap_s), ("--min-event", self.min_event_s)):
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be a number of seconds, 0 or more, got {value:g}")
        if self.min_score is not None and not (math.isfinite(self.min_score) and 0 <= self.min_score <= 1):
            raise UsageError(f"--min-score must be between 0 and 1, got {self.min_score:g}")


@dataclass(eq=False)  # runs are told apart by identity
class Event:
    """``label`` from ``start_s`` to ``end_s``; ``windows``: the windows of that label it is made of."""

    label: str
    index: Optional[int]  #: the label's class index (None where the records lack it, e.g. read from CSV)
    start_s: float
    end_s: float
    score: float
    windows: list[int] = field(default_factory=list)
    owned_s: float = 0.0  #: seconds its own windows own (the score's weights add up to this)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _label_of(window: dict, min_score: Optional[float]) -> Optional[tuple[str, Optional[int], float]]:
    preds = window.get("predictions") or []
    if not preds:
        return None
    top = preds[0]
    if min_score is not None and (top.get("score") is None or top["score"] < min_score):
        return None
    return top["label"], top.get("index"), float(top.get("score") or 0.0)


def _runs(windows: Sequence[dict], duration_s: float, min_score: Optional[float]) -> list[Optional[Event]]:
    """Steps 1 and 2: the runs of equal labels in order, ``None`` for unlabelled stretches."""
    runs: list[Optional[Event]] = []
    spans = [(w["start_s"], w["end_s"]) for w in windows]
    for (a, b), window in zip(segments(spans, duration_s), windows):
        label = _label_of(window, min_score)
        if b - a <= _EPS:  # a window that owns no time (e.g. inside a longer one) adds nothing
            continue
        if label is None:
            runs.append(None)
            continue
        name, index, score = label
        last = runs[-1] if runs else None
        if last is not None and last.label == name and abs(last.end_s - a) <= _EPS:
            last.end_s = b
        else:
            last = Event(name, index, a, b, 0.0)
            runs.append(last)
        last.windows.append(window["window"])
        last.score += score * (b - a)  # a weighted sum until the end
        last.owned_s += b - a
    return runs


def merge_events(windows: Sequence[dict], duration_s: float, options: EventOptions = EventOptions()) -> list[Event]:
    """The events of one video from its window records in order (see the module docstring)."""
    options.check()
    runs = [r for r in _runs(windows, duration_s, options.min_score) if r is not None]
    alive = list(runs)  # in time order; bridged runs leave it
    for run in sorted(runs, key=lambda r: -(r.end_s - r.start_s)):  # stable: ties stay in time order
        if run not in alive:
            continue
        while True:  # to the right
            k = alive.index(run)
            partner = next((r for r in alive[k + 1:] if r.label == run.label), None)
            if partner is None or partner.start_s - run.end_s > options.gap_s + _EPS:
                break
            _absorb(run, partner, alive[k + 1: alive.index(partner) + 1], alive)
        while True:  # to the left
            k = alive.index(run)
            partner = next((r for r in reversed(alive[:k]) if r.label == run.label), None)
            if partner is None or run.start_s - partner.end_s > options.gap_s + _EPS:
                break
            _absorb(run, partner, alive[alive.index(partner): k], alive)
    events = []
    for event in alive:
        if event.duration_s + _EPS < options.min_event_s:
            continue
        event.score = event.score / event.owned_s if event.owned_s > 0 else 0.0
        events.append(event)
    return events


def _absorb(run: Event, partner: Event, between: list[Event], alive: list[Event]) -> None:
    """``run`` takes over ``partner`` (same label) and everything between them, which leave ``alive``."""
    run.start_s, run.end_s = min(run.start_s, partner.start_s), max(run.end_s, partner.end_s)
    run.windows = sorted(run.windows + partner.windows)
    run.score += partner.score
    run.owned_s += partner.owned_s
    for r in between:
        if r is not run:
            alive.remove(r)


def event_records(path: str, events: Sequence[Event], *, model: str, fps: Optional[float]) -> list[dict]:
    """Records of ``type: "event"`` (numbered from 0 in the video): ``label``, ``start_s``,
    ``end_s``, ``score``, ``windows``, and the label and score as the one prediction."""
    return [make_record(path, predictions=[{"label": e.label, "index": e.index, "score": e.score}],
                        frames=None if not fps else round(e.duration_s * fps), model=model,
                        duration_s=e.duration_s, fps=fps, type="event", window=None, start_s=e.start_s,
                        end_s=e.end_s, event=k, label=e.label, score=e.score, windows=list(e.windows))
            for k, e in enumerate(events)]


def with_events(records: Iterable[dict], options: EventOptions = EventOptions()) -> Iterator[dict]:
    """A timeline's records (:meth:`stamcli.timeline.TimelinePredictor.predict`) with each video's
    event records added just before its ``ok`` video record, which gains ``"events"`` (their
    number).  Window records pass on at once; only their top-1 labels are kept until the video ends."""
    options.check()
    windows: dict[str, list[dict]] = {}
    for record in records:
        if record.get("type") == "window":
            top = {key: record[key] for key in ("window", "start_s", "end_s")}
            windows.setdefault(record["path"], []).append(top | {"predictions": record["predictions"][:1]})
            yield record
            continue
        own = windows.pop(record["path"], [])
        if record.get("type") == "video" and record.get("status") == "ok":
            events = merge_events(own, record.get("duration_s") or 0.0, options)
            yield from event_records(record["path"], events, model=record.get("model", ""), fps=record.get("fps"))
            record = {**record, "events": len(events)}
        yield record
