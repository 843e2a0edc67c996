"""Events: merging a video's windows into labelled stretches (stamcli.events), a pure function."""

from __future__ import annotations

import random

import pytest

from stamcli.errors import UsageError
from stamcli.events import EventOptions, event_records, merge_events


def win(k: int, a: float, b: float, label: str, score: float = 0.8) -> dict:
    """A window record as TimelinePredictor writes it (only what merging reads)."""
    return {"path": "v.mp4", "type": "window", "window": k, "start_s": a, "end_s": b,
            "predictions": [{"label": label, "index": ord(label[0]), "score": score}, {"label": "z", "index": 0,
                                                                                     "score": 0.01}]}


def seq(labels: str, length: float = 2.0, scores=None) -> list[dict]:
    """Back-to-back windows of ``length`` seconds, one per character of ``labels``."""
    scores = scores or [0.8] * len(labels)
    return [win(k, k * length, (k + 1) * length, c, s) for k, (c, s) in enumerate(zip(labels, scores))]


def spans(events) -> list[tuple[str, float, float, list[int]]]:
    return [(e.label, round(e.start_s, 9), round(e.end_s, 9), e.windows) for e in events]


def test_equal_neighbours_merge_and_scores_are_time_weighted():
    windows = [win(0, 0, 4, "a", 0.9), win(1, 4, 5, "a", 0.4), win(2, 5, 9, "b", 0.7)]
    events = merge_events(windows, 9.0, EventOptions(gap_s=0, min_event_s=0))
    assert spans(events) == [("a", 0, 5, [0, 1]), ("b", 5, 9, [2])]
    assert events[0].score == pytest.approx((0.9 * 4 + 0.4 * 1) / 5)  # weighted by seconds owned, not 0.65
    assert events[1].score == pytest.approx(0.7)


def test_short_gaps_are_bridged_and_long_ones_not():
    windows = seq("aabaa")  # 2 s windows, b is 2 s
    assert spans(merge_events(windows, 10.0, EventOptions(gap_s=2.0))) == [("a", 0, 10, [0, 1, 3, 4])]
    assert spans(merge_events(windows, 10.0, EventOptions(gap_s=1.9))) == [
        ("a", 0, 4, [0, 1]), ("b", 4, 6, [2]), ("a", 6, 10, [3, 4])]
    # a gap of two windows of different labels counts as its whole length
    assert spans(merge_events(seq("abca"), 8.0, EventOptions(gap_s=4.0)))[0] == ("a", 0, 8, [0, 3])
    assert len(merge_events(seq("abca"), 8.0, EventOptions(gap_s=3.9))) == 4


def test_bridged_score_counts_only_the_labels_own_windows():
    windows = seq("aba", scores=[0.9, 0.99, 0.5])
    (event,) = merge_events(windows, 6.0, EventOptions(gap_s=2.0))
    assert event.windows == [0, 2] and event.score == pytest.approx(0.7)


def test_flicker_of_single_windows_is_one_event():
    # a a b a a b a a with 1 s windows: the b flicker never makes an event of its own
    events = merge_events(seq("aabaabaa", 1.0), 8.0)
    assert spans(events) == [("a", 0, 8, [0, 1, 3, 4, 6, 7])]


def test_too_short_events_are_dropped_and_leave_a_hole():
    windows = [win(0, 0, 4, "a"), win(1, 4, 4.5, "c"), win(2, 4.5, 9, "b")]
    events = merge_events(windows, 9.0, EventOptions(gap_s=0.0, min_event_s=1.0))
    assert spans(events) == [("a", 0, 4, [0]), ("b", 4.5, 9, [2])]
    assert spans(merge_events(windows, 9.0, EventOptions(gap_s=0.0, min_event_s=0.5)))[1] == ("c", 4, 4.5, [1])


def test_overlapping_windows_use_the_subtitle_segments():
    # windows 0-2, 1.5-3.5, 3-5, 4.5-6 own 0-1.75, 1.75-3.25, 3.25-4.625, 4.625-6 (the README example)
    windows = [win(0, 0, 2, "a"), win(1, 1.5, 3.5, "a"), win(2, 3, 5, "b"), win(3, 4.5, 6, "b")]
    assert spans(merge_events(windows, 6.0, EventOptions(gap_s=0))) == [("a", 0, 3.25, [0, 1]), ("b", 3.25, 6, [2, 3])]
    # with a stride longer than the window, the gaps are shared out at the midpoint
    gapped = [win(0, 0, 1, "a"), win(1, 3, 4, "b")]
    assert spans(merge_events(gapped, 10.0, EventOptions(gap_s=0))) == [("a", 0, 2, [0]), ("b", 2, 10, [1])]


def test_min_score_unlabels_weak_windows():
    windows = seq("aaa", scores=[0.9, 0.2, 0.9])
    assert spans(merge_events(windows, 6.0, EventOptions(min_score=0.5))) == [("a", 0, 6, [0, 2])]
    assert spans(merge_events(windows, 6.0, EventOptions(min_score=0.5, gap_s=1.0))) == [
        ("a", 0, 2, [0]), ("a", 4, 6, [2])]
    assert merge_events(seq("ab", scores=[0.1, 0.2]), 4.0, EventOptions(min_score=0.5)) == []
    (event,) = merge_events(seq("a", scores=[0.5]), 2.0, EventOptions(min_score=0.5))  # at the threshold counts
    assert event.label == "a"


def test_windows_left_without_a_label_count_for_no_event():
    # what --min-score / --thresholds leave: a window record with no predictions
    windows = seq("aaa")
    windows[1]["predictions"] = []
    assert spans(merge_events(windows, 6.0)) == [("a", 0, 6, [0, 2])]  # bridged: a 2 s gap
    assert spans(merge_events(windows, 6.0, EventOptions(gap_s=1.0))) == [("a", 0, 2, [0]), ("a", 4, 6, [2])]


def test_the_label_covering_more_time_wins_interleaving():
    # a(1 s) b(3 s) a(1 s) b(1 s): b, the longest run, bridges over the second a; the first a stays
    windows = [win(0, 0, 1, "a"), win(1, 1, 4, "b"), win(2, 4, 5, "a"), win(3, 5, 6, "b")]
    assert spans(merge_events(windows, 6.0, EventOptions(gap_s=1.0))) == [("a", 0, 1, [0]), ("b", 1, 6, [1, 3])]
    # taken in time order, the first a would bridge over the longer b instead
    windows = [win(0, 0, 1, "a"), win(1, 1, 2.5, "b"), win(2, 2.5, 3.5, "a"), win(3, 3.5, 6, "b")]
    assert spans(merge_events(windows, 6.0, EventOptions(gap_s=1.5))) == [("a", 0, 1, [0]), ("b", 1, 6, [1, 3])]
    # equal runs: the earlier one bridges first
    assert spans(merge_events(seq("abab", 1.0), 4.0, EventOptions(gap_s=1.0, min_event_s=0))) == [
        ("a", 0, 3, [0, 2]), ("b", 3, 4, [3])]


@pytest.mark.parametrize("seed", range(5))
def test_events_never_overlap_and_hold_their_own_label(seed):
    rng = random.Random(seed)
    t, windows = 0.0, []
    for k in range(60):
        length = rng.choice([0.4, 1.0, 2.5, 6.0])
        windows.append(win(k, t, t + length, rng.choice("aabc"), rng.uniform(0.2, 1.0)))
        t += length
    events = merge_events(windows, t, EventOptions(gap_s=2.0, min_event_s=1.0, min_score=0.3))
    assert events and all(b.start_s >= a.end_s for a, b in zip(events, events[1:]))
    assert all(0 <= e.start_s < e.end_s <= t and e.duration_s >= 1.0 - 1e-9 for e in events)
    by_index = {w["window"]: w for w in windows}
    for e in events:
        assert all(by_index[k]["predictions"][0]["label"] == e.label for k in e.windows)
        assert all(by_index[k]["predictions"][0]["score"] >= 0.3 for k in e.windows)
        assert min(w["predictions"][0]["score"] for w in map(by_index.get, e.windows)) <= e.score + 1e-12
        assert e.score <= max(w["predictions"][0]["score"] for w in map(by_index.get, e.windows)) + 1e-12


def test_event_records_schema():
    (event,) = merge_events(seq("aa"), 4.0)
    (record,) = event_records("v.mp4", [event], model="tiny", fps=25.0)
    assert record == {
        "path": "v.mp4", "status": "ok", "error": None,
        "predictions": [{"label": "a", "index": ord("a"), "score": pytest.approx(0.8)}], "frames": 100,
        "model": "tiny", "duration_s": 4.0, "fps": 25.0, "type": "event", "window": None, "start_s": 0.0,
        "end_s": 4.0, "event": 0, "label": "a", "score": pytest.approx(0.8), "windows": [0, 1]}


@pytest.mark.parametrize("options, message", [
    (EventOptions(gap_s=-1), "--event-gap must be a number of seconds, 0 or more, got -1"),
    (EventOptions(min_event_s=float("nan")), "--min-event must be a number of seconds, 0 or more, got nan"),
    (EventOptions(min_score=1.5), "--min-score must be between 0 and 1, got 1.5"),
])
def test_bad_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        merge_events(seq("a"), 2.0, options)
