"""``stam evaluate``: accuracy of a model on labelled clips, with the details that explain it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..engine import make_predictor
from ..errors import StamError
from ..jobs import EvaluationJob, PredictOptions
from ..model import STAM
from .data import Example, read_examples, validate
from .metrics import evaluate_predictions, write_report

log = logging.getLogger(__name__)


def run_evaluation(job: EvaluationJob) -> dict:
    """``stam evaluate``: the options checked before the model is loaded (or downloaded), then
    :func:`evaluate`. ``job`` is left as it was."""
    options = job.options.resolve()
    return evaluate(job.data, job.load_model(), options, output=job.output, skip_bad=job.skip_bad)


def evaluate(
    data: str | Path,
    model: STAM,
    options: Optional[PredictOptions] = None,
    *,
    output: Optional[str | Path] = None,
    skip_bad: bool = False,
) -> dict:
    """Top-1/top-5, per-class accuracy, confusion matrix and misclassified videos of ``model`` on
    ``data`` (a CSV or a folder of class folders, as for fine-tuning). With ``output``, the report
    JSON and its confusion CSV/PNG and misclassified CSV are written there."""
    # File-level checks only: the prediction pass decodes each video once and reports the
    # unreadable ones under "failed" rather than decoding everything twice.
    examples = validate(read_examples(data), skip_bad=skip_bad, decode=False)
    return evaluate_examples(examples, model, options, output=output, source=str(data))


def evaluate_examples(
    examples: Sequence[Example],
    model: STAM,
    options: Optional[PredictOptions] = None,
    *,
    output: Optional[str | Path] = None,
    source: str = "the data",
) -> dict:
    """The report of :func:`evaluate` for examples already read (``source`` names them in messages)."""
    index = {label: i for i, label in enumerate(model.labels)}
    unknown = sorted({e.label for e in examples if e.label not in index})
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise StamError(f"labels in {source} that the model does not know: {shown} (the model's labels: "
                        f"{', '.join(model.labels[:10])}{', ...' if len(model.labels) > 10 else ''})")
    predictor = make_predictor(model, options)  # this process, or Ray actors (options.engine)
    probs, targets, paths, failed = [], [], [], []
    for example, item in zip(examples, predictor.scores([e.path for e in examples])):
        if item.probabilities is None:
            failed.append({"path": item.path, "error": item.error})
            continue
        probs.append(item.probabilities.numpy())
        targets.append(index[example.label])
        paths.append(example.path)
    if not probs:
        raise StamError(f"no video in {source} could be read")
    report = evaluate_predictions(np.stack(probs), targets, list(model.labels), paths)
    report["model"] = model.name
    report["data"] = source
    report["failed"] = failed
    if predictor.options.views > 1:  # test-time views, as in predict's records
        report["clips"], report["crops"] = predictor.options.clips, predictor.options.crops
    if output:
        write_report(report, Path(output))
    return report
