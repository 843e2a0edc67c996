"""Abstention: ``--min-score``, per-class thresholds calibrated to a target precision, and the
predictions they leave.

**Calibration** (:func:`calibrate_thresholds`, ``stam evaluate --calibrate``). For a class ``c``
with scores ``s_i`` on labelled data, a threshold ``t`` predicts ``c`` for every video with
``s_i >= t``; its precision is the share of those videos whose true class is ``c``. The class's
threshold is the **lowest score of a true example of c at which that precision is at least P**,
measured over at least ``m = min_examples`` videos::

    t_c = min { s_i : label_i = c,  #{j : s_j >= s_i} >= m  and  precision(t = s_i) >= P }

which is the threshold with the most recall among those that reach ``P`` on the data (a threshold
between two true examples' scores only admits more false positives). Ties count as predicted
(``>=``). A class gets no threshold when it has fewer than ``m`` true examples, or when no such
threshold reaches ``P`` (precision over the few top-scoring videos alone is noise); the file lists
it with the reason. Precision on new data scatters around ``P``: the more examples, the closer.

**Applying** (:func:`score_floors`, :func:`top_k_above`). A class is predicted only when its score is
at least ``--min-score`` and at least its calibrated threshold; classes without a threshold need
only ``--min-score`` (none: any score, as without ``--thresholds``). The top-k are taken from the
classes that pass, so a video may get fewer than k predictions, or none (it is "unsure").
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import StamError, UsageError
from .jobs import DEFAULT_MIN_EXAMPLES, DEFAULT_TARGET_PRECISION

__all__ = ["ClassThreshold", "Thresholds", "calibrate_thresholds", "precision_recall_at", "score_floors",
           "top_k_above", "uncalibrated", "check_min_score", "check_calibration", "DEFAULT_MIN_EXAMPLES",
           "DEFAULT_TARGET_PRECISION"]

log = logging.getLogger(__name__)

_HEADER = ("# Per-class score thresholds written by `stam evaluate --calibrate`: a class is predicted when its\n"
           "# score is at least its threshold. Apply them with `stam predict --thresholds FILE`.\n")


@dataclass(frozen=True)
class ClassThreshold:
    """One class's calibrated threshold and what it is based on (measured on the calibration data)."""

    threshold: Optional[float]  #: None: the class has no threshold (see ``reason``)
    examples: int  #: true examples of the class in the data
    precision: Optional[float] = None  #: precision at the threshold
    recall: Optional[float] = None  #: recall at the threshold
    reason: Optional[str] = None  #: why there is no threshold


@dataclass
class Thresholds:
    """Per-class thresholds (:func:`calibrate_thresholds`), saved and read as YAML."""

    classes: dict[str, ClassThreshold]  #: in the model's (or the label map's) class order
    target_precision: float
    min_examples: int = DEFAULT_MIN_EXAMPLES
    model: str = ""
    label_map: Optional[str] = None  #: the label map the classes are tags of
    data: Optional[str] = None  #: the calibration data
    source: str = field(default="", compare=False)  #: the file it was read from

    @property
    def calibrated(self) -> dict[str, float]:
        """Class -> threshold, for the classes that have one."""
        return {name: c.threshold for name, c in self.classes.items() if c.threshold is not None}

    def write(self, path: str | Path) -> Path:
        """Save as YAML (atomically): the run's facts, then one entry per class."""
        import yaml

        from .fileutils import write_atomic

        classes = {}
        for name, entry in self.classes.items():
            classes[name] = {key: value for key, value in asdict(entry).items()
                             if value is not None or key == "threshold"}
        document = {"model": self.model, "label_map": self.label_map, "data": self.data,
                    "target_precision": float(self.target_precision), "min_examples": int(self.min_examples),
                    "classes": classes}
        text = _HEADER + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)
        return write_atomic(path, text.encode("utf-8"), "thresholds ")

    @classmethod
    def read(cls, path: str | Path) -> "Thresholds":
        """A thresholds file written by :meth:`write`; one-line :class:`StamError` when it is not one."""
        import yaml

        path = Path(path)
        try:
            document = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
        except OSError as err:
            raise StamError(f"cannot read thresholds {path}: {err.strerror or err}") from None
        except (UnicodeDecodeError, yaml.YAMLError):
            raise StamError(f"{path} is not a thresholds YAML file "
                            "(write one with stam evaluate --calibrate)") from None
        if not isinstance(document, dict) or not isinstance(document.get("classes"), dict):
            raise StamError(f"{path} is not a thresholds file: no 'classes' mapping "
                            "(write one with stam evaluate --calibrate)")
        classes = {}
        for name, entry in document["classes"].items():
            classes[str(name)] = _class_entry(path, name, entry)
        target = document.get("target_precision")
        if not _is_number(target):
            raise StamError(f"{path}: target_precision must be a number")
        min_examples = document.get("min_examples", 0)
        if not isinstance(min_examples, int) or isinstance(min_examples, bool):
            raise StamError(f"{path}: min_examples must be a whole number")
        label_map, data = document.get("label_map"), document.get("data")
        return cls(classes, float(target), min_examples, str(document.get("model") or ""),
                   None if label_map is None else str(label_map), None if data is None else str(data), source=str(path))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _class_entry(path: Path, name, entry) -> ClassThreshold:
    if not isinstance(entry, dict) or "threshold" not in entry:
        raise StamError(f"{path}: class {name!r} needs a 'threshold' (a number, or null)")
    threshold = entry["threshold"]
    if threshold is not None and not _is_number(threshold):
        raise StamError(f"{path}: the threshold of class {name!r} is {threshold!r}, not a number")
    numbers = {key: entry.get(key) for key in ("precision", "recall")}
    for key, value in numbers.items():
        if value is not None and not _is_number(value):
            raise StamError(f"{path}: the {key} of class {name!r} is {value!r}, not a number")
    examples = entry.get("examples", 0)
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
        raise StamError(f"{path}: the examples of class {name!r} is {examples!r}, not a count")
    return ClassThreshold(None if threshold is None else float(threshold), examples,
                          *(None if v is None else float(v) for v in numbers.values()),
                          reason=None if entry.get("reason") is None else str(entry["reason"]))


# ---------------------------------------------------------------------------- calibration


def _as_numpy(scores, targets, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    s = scores.detach().float().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores, np.float64)
    t = targets.detach().cpu().numpy() if hasattr(targets, "detach") else np.asarray(targets)
    s, t = np.asarray(s, np.float64), np.asarray(t).reshape(-1)
    if s.ndim != 2 or s.shape[1] != len(classes) or s.shape[0] != t.shape[0]:
        raise ValueError(f"scores {s.shape} do not match {t.shape[0]} targets and {len(classes)} classes")
    if t.size and (t.min() < 0 or t.max() >= len(classes)):
        raise ValueError(f"targets must be class indexes in 0..{len(classes) - 1}")
    return s, t.astype(np.int64)


def check_calibration(target_precision: float, min_examples: int) -> None:
    """UsageError unless ``--target-precision`` is in (0, 1] and ``--min-examples`` at least 1."""
    if not (math.isfinite(target_precision) and 0 < target_precision <= 1):
        raise UsageError(f"--target-precision must be in (0, 1], got {target_precision:g}")
    if min_examples < 1:
        raise UsageError(f"--min-examples must be at least 1, got {min_examples}")


def calibrate_thresholds(
    scores,
    targets,
    classes: Sequence[str],
    target_precision: float,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    **facts,
) -> Thresholds:
    """Per-class thresholds that reach ``target_precision`` on this data (see the module docstring).

    ``scores`` (N, C): each video's class scores; ``targets`` (N,): its true class index;
    ``classes`` the C class names. ``facts`` (``model``, ``label_map``, ``data``) are kept in the
    result for the file. Classes left without a threshold are logged as a warning.
    """
    check_calibration(target_precision, min_examples)
    s, t = _as_numpy(scores, targets, classes)
    result = {}
    for c, name in enumerate(classes):
        result[str(name)] = _calibrate_class(s[:, c], t == c, target_precision, min_examples)
    thresholds = Thresholds(result, float(target_precision), int(min_examples), **facts)
    missing = {name: entry.reason for name, entry in result.items() if entry.threshold is None}
    if missing:
        shown = "; ".join(f"{name}: {reason}" for name, reason in list(missing.items())[:8])
        more = f"; and {len(missing) - 8} more" if len(missing) > 8 else ""
        log.warning("%d of %d classes have no threshold (%s%s)", len(missing), len(result), shown, more)
    return thresholds


def _calibrate_class(scores: np.ndarray, positive: np.ndarray, target: float, min_examples: int) -> ClassThreshold:
    examples = int(positive.sum())
    if examples < min_examples:
        return ClassThreshold(None, examples, reason=f"too few examples ({examples} < {min_examples})")
    candidates = np.unique(scores[positive])  # ascending
    all_sorted, pos_sorted = np.sort(scores), np.sort(scores[positive])
    predicted = len(scores) - np.searchsorted(all_sorted, candidates, side="left")  # videos with score >= t
    hits = examples - np.searchsorted(pos_sorted, candidates, side="left")  # true ones among them
    precision = hits / predicted
    measured = predicted >= min_examples  # precision on a handful of top videos is noise
    reached = np.flatnonzero(measured & (precision >= target - 1e-12))
    if reached.size == 0:
        return ClassThreshold(None, examples, reason=f"precision {target:g} is never reached over {min_examples} or "
                                                     f"more videos (at most {precision[measured].max():.3f})")
    i = int(reached[0])  # the lowest such score: the most recall
    return ClassThreshold(float(candidates[i]), examples, float(precision[i]), float(hits[i] / examples))


def precision_recall_at(thresholds: Thresholds, scores, targets, classes: Sequence[str],
                        min_score: Optional[float] = None) -> dict:
    """How the thresholds do on labelled data: per calibrated class, the videos it is predicted for
    (score at or above its threshold and ``min_score``), their precision and the class's recall, each
    class on its own (independent of top-k); their means; and ``unsure``, the videos with no class
    passing (:func:`score_floors`). Precision is None for a class predicted for no video."""
    s, t = _as_numpy(scores, targets, classes)
    floors = score_floors(classes, min_score, thresholds).numpy().astype(np.float64)
    passing = s >= floors[None, :]
    per_class = []
    for c, name in enumerate(classes):
        if str(name) not in thresholds.calibrated:
            continue
        positive = t == c
        predicted, hits, examples = int(passing[:, c].sum()), int((passing[:, c] & positive).sum()), int(positive.sum())
        per_class.append({"label": str(name), "threshold": float(floors[c]), "examples": examples,
                          "predicted": predicted, "precision": hits / predicted if predicted else None,
                          "recall": hits / examples if examples else None})

    def mean(key: str) -> Optional[float]:
        values = [entry[key] for entry in per_class if entry[key] is not None]
        return float(np.mean(values)) if values else None

    return {"target_precision": thresholds.target_precision, "classes": len(per_class),
            "mean_precision": mean("precision"), "mean_recall": mean("recall"),
            "unsure": int((~passing.any(axis=1)).sum()), "per_class": per_class}


# ---------------------------------------------------------------------------- applying


def check_min_score(min_score: Optional[float]) -> None:
    """UsageError unless ``--min-score`` is a score in [0, 1]."""
    if min_score is not None and not (math.isfinite(min_score) and 0 <= min_score <= 1):
        raise UsageError(f"--min-score must be a score between 0 and 1, got {min_score:g}")


def score_floors(classes: Sequence[str], min_score: Optional[float] = None,
                 thresholds: Optional[Thresholds] = None) -> torch.Tensor:
    """The lowest score each of ``classes`` needs to be predicted, ``(C,)``: the larger of
    ``min_score`` and its calibrated threshold (``min_score``, or 0, for a class without one).

    A :class:`StamError` when ``thresholds`` name classes that are not among ``classes`` (thresholds
    calibrated for another model or label map).
    """
    check_min_score(min_score)
    base = float(min_score or 0.0)
    floors = torch.full((len(classes),), base, dtype=torch.float64)
    if thresholds is None:
        return floors
    index = {str(name): i for i, name in enumerate(classes)}
    foreign = [name for name in thresholds.classes if name not in index]
    if foreign:
        hint = (f" (they are tags of label map {thresholds.label_map}: pass --label-map {thresholds.label_map})"
                if thresholds.label_map else "")
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        where = f" in {thresholds.source}" if thresholds.source else ""
        raise StamError(f"the thresholds{where} are for classes the model does not output: {shown}{hint}")
    for name, value in thresholds.calibrated.items():
        floors[index[name]] = max(base, value)
    return floors


def uncalibrated(classes: Sequence[str], thresholds: Thresholds) -> list[str]:
    """The ``classes`` that have no threshold in ``thresholds`` (they fall back on ``--min-score``)."""
    calibrated = thresholds.calibrated
    return [str(name) for name in classes if str(name) not in calibrated]


def top_k_above(scores: torch.Tensor, k: int, floors: Optional[torch.Tensor] = None) -> list[tuple[int, float]]:
    """``(index, score)`` of the ``k`` best classes whose score is at least its floor, best first
    (all classes when ``floors`` is None)."""
    k = min(k, scores.shape[-1])
    if floors is None:
        values, indexes = scores.topk(k)
        return list(zip(indexes.tolist(), values.tolist()))
    kept = scores.double() >= floors
    masked = torch.where(kept, scores.double(), torch.tensor(-math.inf, dtype=torch.float64))
    _, indexes = masked.topk(k)
    return [(i, float(scores[i])) for i in indexes.tolist() if kept[i]]
