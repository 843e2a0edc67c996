"""``stam evaluate``: accuracy of a model on labelled clips, with the details that explain it.

With a label map (``PredictOptions.label_map``) DATA's labels are the map's tags and the model is
measured on the tags' summed probabilities, with no training. ``calibrate`` writes per-class (per-tag)
thresholds that reach ``target_precision`` on DATA; ``PredictOptions.thresholds`` reports precision
and recall at thresholds calibrated before (:mod:`stamcli.thresholds`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..engine import make_predictor
from ..errors import StamError
from ..jobs import DEFAULT_MIN_EXAMPLES, DEFAULT_TARGET_PRECISION, EvaluationJob, PredictOptions
from ..model import STAM
from ..thresholds import calibrate_thresholds, check_calibration, precision_recall_at
from .data import Example, read_examples, validate
from .metrics import evaluate_predictions, write_report

log = logging.getLogger(__name__)


def run_evaluation(job: EvaluationJob) -> dict:
    """``stam evaluate``: the options checked before the model is loaded (or downloaded), then
    :func:`evaluate`. ``job`` is left as it was."""
    options = job.options.resolve()
    target_precision, min_examples = job.calibration()
    return evaluate(job.data, job.load_model(), options, output=job.output, skip_bad=job.skip_bad,
                    calibrate=job.calibrate, target_precision=target_precision, min_examples=min_examples)


def evaluate(
    data: str | Path,
    model: STAM,
    options: Optional[PredictOptions] = None,
    *,
    output: Optional[str | Path] = None,
    skip_bad: bool = False,
    calibrate: Optional[str | Path] = None,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> dict:
    """Top-1/top-5, per-class accuracy, confusion matrix and misclassified videos of ``model`` on
    ``data`` (a CSV or a folder of class folders, as for fine-tuning). With ``output``, the report
    JSON and its confusion CSV/PNG and misclassified CSV are written there. With ``calibrate``, the
    per-class thresholds reaching ``target_precision`` are written to that YAML file."""
    # File-level checks only: the prediction pass decodes each video once and reports the
    # unreadable ones under "failed" rather than decoding everything twice.
    examples = validate(read_examples(data), skip_bad=skip_bad, decode=False)
    return evaluate_examples(examples, model, options, output=output, source=str(data), calibrate=calibrate,
                             target_precision=target_precision, min_examples=min_examples)


def evaluate_examples(
    examples: Sequence[Example],
    model: STAM,
    options: Optional[PredictOptions] = None,
    *,
    output: Optional[str | Path] = None,
    source: str = "the data",
    calibrate: Optional[str | Path] = None,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> dict:
    """The report of :func:`evaluate` for examples already read (``source`` names them in messages)."""
    if calibrate is not None:
        check_calibration(target_precision, min_examples)
    predictor = make_predictor(model, options)  # this process, or Ray actors (options.engine)
    classes = predictor.classes  # the model's labels, or the label map's tags
    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted({e.label for e in examples if e.label not in index})
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        known = (f"the model does not know: {shown} (the model's labels" if predictor.label_map is None else
                 f"label map {predictor.label_map.source} has no tag for: {shown} (its tags")
        raise StamError(f"labels in {source} that {known}: "
                        f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
    scores, targets, paths, failed = [], [], [], []
    for example, item in zip(examples, predictor.scores([e.path for e in examples])):
        if item.probabilities is None:
            failed.append({"path": item.path, "error": item.error})
            continue
        scores.append(predictor.class_scores(item.probabilities).numpy())
        targets.append(index[example.label])
        paths.append(example.path)
    if not scores:
        raise StamError(f"no video in {source} could be read")
    scores = np.stack(scores)
    report = evaluate_predictions(scores, targets, classes, paths)
    report["model"] = model.name
    report["data"] = source
    report["failed"] = failed
    if predictor.options.views > 1:  # test-time views, as in predict's records
        report["clips"], report["crops"] = predictor.options.clips, predictor.options.crops
    if predictor.label_map is not None:
        report["label_map"] = predictor.label_map.source
    thresholds = predictor.options.thresholds
    if thresholds is not None:
        report["at_thresholds"] = precision_recall_at(thresholds, scores, targets, classes,
                                                       predictor.options.min_score)
        report["at_thresholds"]["file"] = thresholds.source
    if calibrate is not None:
        calibrated = calibrate_thresholds(scores, targets, classes, target_precision, min_examples, model=model.name,
                                          label_map=report.get("label_map"), data=source)
        calibrated.write(calibrate)
        report["calibration"] = {"file": str(calibrate), "target_precision": target_precision,
                                 "calibrated": len(calibrated.calibrated), "classes": len(classes)}
    if output:
        write_report(report, Path(output))
    return report
