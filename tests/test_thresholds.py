"""Abstention (stamcli.thresholds): calibrating per-class thresholds to a target precision, their
YAML files, precision/recall at them, and the predictions --min-score and thresholds leave.
Pure numpy/torch on the CPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import yaml

from stamcli.errors import StamError, UsageError
from stamcli.thresholds import (
    ClassThreshold, Thresholds, calibrate_thresholds, check_min_score, precision_recall_at, score_floors, top_k_above,
    uncalibrated,
)

# Generated scores with known distributions: for class c, a true example's score ~ Beta(a, 1) (high),
# any other video's ~ Beta(1, b) (low); classes are equally likely. The last class is noise: its
# score ~ Beta(1, 4) whatever the video, so no threshold reaches a useful precision.
SHAPES = [(4, 4), (6, 3), (3, 8), (8, 2)]
NAMES = ["c0", "c1", "c2", "c3", "noise"]


def _sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, len(NAMES), n)
    scores = np.empty((n, len(NAMES)))
    for c, (a, b) in enumerate(SHAPES):
        scores[:, c] = np.where(targets == c, rng.beta(a, 1, n), rng.beta(1, b, n))
    scores[:, -1] = rng.beta(1, 4, n)
    return scores, targets


def _true_threshold(a: float, b: float, target: float, prior: float = 1 / len(NAMES)) -> float:
    """The threshold where the population's precision is ``target``: pi S+(t) / (pi S+(t) + (1-pi) S-(t))
    with S+(t) = 1 - t^a and S-(t) = (1 - t)^b, found by bisection (precision rises with t)."""
    low, high = 0.0, 1.0 - 1e-12
    for _ in range(100):
        t = (low + high) / 2
        hit, miss = prior * (1 - t ** a), (1 - prior) * (1 - t) ** b
        low, high = (low, t) if hit / (hit + miss) >= target else (t, high)
    return high


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_fit_on_one_sample_meet_the_target_precision_on_held_out_data(seed, caplog):
    scores, targets = _sample(20000, seed)
    with caplog.at_level(logging.WARNING, logger="stamcli.thresholds"):
        thresholds = calibrate_thresholds(scores, targets, NAMES, 0.9)
    assert "1 of 5 classes have no threshold (noise: precision 0.9 is never reached" in caplog.text
    assert thresholds.classes["noise"].threshold is None
    held_scores, held_targets = _sample(20000, 100 + seed)
    for c, (a, b) in enumerate(SHAPES):
        entry = thresholds.classes[NAMES[c]]
        assert entry.examples == int((targets == c).sum())
        assert entry.precision >= 0.9 and 0.3 < entry.recall < 1
        assert entry.threshold == pytest.approx(_true_threshold(a, b, 0.9), abs=0.03)
        predicted = held_scores[:, c] >= entry.threshold
        assert (held_targets[predicted] == c).mean() >= 0.86  # 0.9 less sampling noise (worst seen: 0.88)
        assert (held_targets[held_scores[:, c] >= 0.0] == c).mean() < 0.25  # without it: the base rate
    report = precision_recall_at(thresholds, held_scores, held_targets, NAMES)
    assert report["classes"] == 4 and [e["label"] for e in report["per_class"]] == NAMES[:4]
    assert all(e["precision"] >= 0.86 for e in report["per_class"])
    assert report["mean_precision"] == pytest.approx(0.9, abs=0.02)


def test_the_threshold_is_the_lowest_true_score_reaching_the_precision():
    # scores of one class, best first, with whether the video is of that class
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    truth = [1, 1, 0, 1, 1, 0, 1, 0, 0, 1]
    s = np.stack([np.array(scores), 1 - np.array(scores)], axis=1)
    t = np.array([0 if y else 1 for y in truth])
    # precision at each true example's score: 1, 1, 3/4, 4/5, 5/7, 6/10
    at = lambda p, m=1: calibrate_thresholds(s, t, ["a", "b"], p, min_examples=m).classes["a"]  # noqa: E731
    assert at(0.8) == ClassThreshold(0.6, 6, 4 / 5, 4 / 6)
    assert at(0.75) == ClassThreshold(0.6, 6, 4 / 5, 4 / 6)
    assert at(0.7) == ClassThreshold(0.4, 6, 5 / 7, 5 / 6)
    assert at(0.6) == ClassThreshold(0.1, 6, 6 / 10, 1.0)
    assert at(1.0) == ClassThreshold(0.9, 6, 1.0, 2 / 6)
    assert at(1.0, m=3).threshold is None  # precision 1 only over the top 2 videos
    assert at(1.0, m=3).reason == "precision 1 is never reached over 3 or more videos (at most 0.800)"
    assert at(0.8, m=7) == ClassThreshold(None, 6, reason="too few examples (6 < 7)")
    # a tie with a false example counts as predicted
    tied = s.copy()
    tied[2, 0] = 0.9
    assert calibrate_thresholds(tied, t, ["a", "b"], 1.0, min_examples=1).classes["a"].threshold == 0.95


def test_a_class_with_too_few_examples_gets_no_threshold_and_a_warning(caplog):
    scores, targets = _sample(2000, 3)
    targets[targets == 2] = 0  # c2 has no true example left
    with caplog.at_level(logging.WARNING, logger="stamcli.thresholds"):
        thresholds = calibrate_thresholds(scores, targets, NAMES, 0.9, min_examples=10)
    assert thresholds.classes["c2"] == ClassThreshold(None, 0, reason="too few examples (0 < 10)")
    assert "2 of 5 classes have no threshold (c2: too few examples (0 < 10); noise: precision 0.9" in caplog.text
    assert uncalibrated(NAMES, thresholds) == ["c2", "noise"]


def test_bad_targets_and_options_are_refused():
    scores, targets = _sample(100, 0)
    with pytest.raises(UsageError, match=r"--target-precision must be in \(0, 1\], got 1.5"):
        calibrate_thresholds(scores, targets, NAMES, 1.5)
    with pytest.raises(ValueError, match="targets must be class indexes"):
        calibrate_thresholds(scores, targets + 5, NAMES, 0.9)
    with pytest.raises(ValueError, match="do not match"):
        calibrate_thresholds(scores[:, :3], targets, NAMES, 0.9)


def test_thresholds_files_round_trip_and_say_what_they_were_calibrated_on(tmp_path):
    scores, targets = _sample(3000, 4)
    thresholds = calibrate_thresholds(torch.from_numpy(scores).float(), torch.from_numpy(targets), NAMES, 0.85,
                                      min_examples=20, model="stam_16", label_map="kinetics400-coarse",
                                      data="val.csv")
    path = thresholds.write(tmp_path / "out" / "thresholds.yaml")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Per-class score thresholds written by `stam evaluate --calibrate`")
    raw = yaml.safe_load(text)
    assert list(raw) == ["model", "label_map", "data", "target_precision", "min_examples", "classes"]
    assert (raw["model"], raw["label_map"], raw["data"], raw["target_precision"], raw["min_examples"]) == (
        "stam_16", "kinetics400-coarse", "val.csv", 0.85, 20)
    assert list(raw["classes"]) == NAMES
    assert list(raw["classes"]["c0"]) == ["threshold", "examples", "precision", "recall"]
    assert raw["classes"]["noise"]["threshold"] is None and "never reached" in raw["classes"]["noise"]["reason"]
    back = Thresholds.read(path)
    assert back == thresholds and back.source == str(path)
    assert back.calibrated == {n: e.threshold for n, e in thresholds.classes.items() if n != "noise"}


@pytest.mark.parametrize("text, expected", [
    (b"\xff\xfe\x00binary", "is not a thresholds YAML file"),
    ("classes: [a, b\n", "is not a thresholds YAML file"),
    ("model: x\n", "no 'classes' mapping"),
    ("target_precision: 0.9\nclasses:\n  a: {examples: 3}\n", "class 'a' needs a 'threshold'"),
    ("target_precision: 0.9\nclasses:\n  a: {threshold: high}\n", "the threshold of class 'a' is 'high', not a number"),
    ("target_precision: 0.9\nclasses:\n  a: {threshold: 0.5, examples: -1}\n", "the examples of class 'a' is -1"),
    ("classes:\n  a: {threshold: 0.5}\n", "target_precision must be a number"),
])
def test_bad_thresholds_files_give_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "t.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(StamError) as err:
        Thresholds.read(path)
    assert expected in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StamError, match="cannot read thresholds"):
        Thresholds.read(tmp_path / "missing.yaml")


def _thresholds(**values) -> Thresholds:
    return Thresholds({name: ClassThreshold(value, 50) for name, value in values.items()}, 0.9,
                      label_map="map.yaml", source="t.yaml")


def test_floors_are_the_larger_of_min_score_and_the_threshold_with_min_score_as_the_fallback():
    thresholds = _thresholds(a=0.6, b=0.1, c=None)
    assert score_floors(["a", "b", "c", "d"]).tolist() == [0, 0, 0, 0]
    assert score_floors(["a", "b", "c", "d"], 0.2).tolist() == [0.2] * 4
    assert score_floors(["a", "b", "c", "d"], None, thresholds).tolist() == [0.6, 0.1, 0, 0]
    assert score_floors(["a", "b", "c", "d"], 0.2, thresholds).tolist() == [0.6, 0.2, 0.2, 0.2]
    with pytest.raises(StamError, match=r"the thresholds in t.yaml are for classes the model does not output: a, b, "
                                        r"c \(they are tags of label map map.yaml: pass --label-map map.yaml\)"):
        score_floors(["archery", "baking"], None, thresholds)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UsageError, match="--min-score must be a score between 0 and 1"):
            check_min_score(bad)


def test_top_k_keeps_only_classes_at_or_above_their_floor():
    scores = torch.tensor([0.05, 0.5, 0.2, 0.15, 0.1])
    assert top_k_above(scores, 3) == [(1, 0.5), (2, pytest.approx(0.2)), (3, pytest.approx(0.15))]
    floors = torch.tensor([0.0, 0.6, 0.2, 0.1, 0.1], dtype=torch.float64)
    # class 1 is below its own floor; class 0 passes but is not among the top 3 of those that pass
    assert [i for i, _ in top_k_above(scores, 3, floors)] == [2, 3, 4]
    assert [i for i, _ in top_k_above(scores, 9, floors)] == [2, 3, 4, 0]
    assert top_k_above(scores, 5, torch.full((5,), 0.9, dtype=torch.float64)) == []
    exact = torch.tensor([0.25, 0.75])
    assert top_k_above(exact, 2, torch.tensor([0.25, 0.8], dtype=torch.float64)) == [(0, 0.25)]  # >=, not >


def test_precision_recall_at_counts_each_class_and_the_unsure_videos():
    scores = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.25], [0.55, 0.45]])
    targets = np.array([0, 1, 1, 0, 0])
    report = precision_recall_at(_thresholds(a=0.5, b=0.5), scores, targets, ["a", "b"])
    assert report["per_class"] == [
        {"label": "a", "threshold": 0.5, "examples": 3, "predicted": 3, "precision": 2 / 3, "recall": 2 / 3},
        {"label": "b", "threshold": 0.5, "examples": 2, "predicted": 1, "precision": 1.0, "recall": 0.5},
    ]
    assert report["unsure"] == 1 and report["mean_precision"] == pytest.approx(5 / 6)
    raised = precision_recall_at(_thresholds(a=0.5, b=0.5), scores, targets, ["a", "b"], min_score=0.8)
    assert [e["predicted"] for e in raised["per_class"]] == [1, 0] and raised["per_class"][1]["precision"] is None
    assert raised["unsure"] == 4
