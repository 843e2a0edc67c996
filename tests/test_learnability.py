"""A fast run of the learnability study (benchmarks/learnability.py --quick), on CPU: with the
defaults a new temporal encoder learns the order of frames from 120 clips, a classifier blind to
order does not, and training the whole model does not collapse."""

from __future__ import annotations

import json

import pytest

from benchmarks import learnability
from stamcli.train.modelling import NEW_MODEL_TEMPORAL


@pytest.fixture(scope="module")
def quick():
    return learnability.run(learnability.QUICK, log=lambda line: None)


def test_the_defaults_learn_temporal_order_and_an_order_blind_baseline_does_not(quick):
    mean, default = quick["heads"]
    assert mean["kind"] == "mean" and default["head"] == learnability.DEFAULT_HEAD.title
    assert (default["layers"], default["norm"], default["input_norm"]) == tuple(NEW_MODEL_TEMPORAL.values())
    # held-out clips: 6 per class, 48 on the paired classes. The seeds tried reach 100%.
    assert default["top1"] >= 0.9 and default["paired_top1"] >= 0.9, default
    # the mean of the frame embeddings is the same for both classes of a pair: at best chance
    # within a pair (the seeds tried: 0.33-0.41 on the pairs)
    assert mean["paired_top1"] <= 0.6, mean
    [run] = quick["defaults"]  # `stam finetune --freeze-backbone` end to end, then `stam evaluate`
    assert run["lrs"] == {"backbone": None, "temporal": 1e-3, "head": 1e-3}
    assert run["top1"] >= 0.9 and run["paired_top1"] >= 0.9, run


def test_whole_model_training_with_the_defaults_does_not_collapse(quick):
    [run] = quick["whole_model"]
    assert run["lrs"] == {"backbone": 1e-4, "temporal": 1e-3, "head": 1e-3}  # the backbone comes from a checkpoint
    # 10 classes (chance 0.1) after 3 epochs: the seeds tried reach 0.35-0.5 with 5-6 classes predicted
    assert run["distinct_predictions"] >= 3 and run["top1"] >= 0.2, run


def test_the_tables_and_merged_seeds(quick, tmp_path, capsys):
    table = learnability.markdown(quick)
    assert f"| 120 | {learnability.DEFAULT_HEAD.title} | 0.001 | {100 * quick['heads'][1]['top1']:.0f} |" in table
    assert "learning rates: backbone frozen, temporal 0.001, head 0.001" in table
    other = json.loads(json.dumps(quick))
    other["profile"]["seeds"] = [7]
    for row in other["heads"] + other["defaults"] + other["whole_model"]:
        row["seed"], row["top1"] = 7, 0.5
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, results in zip(paths, (quick, other)):
        path.write_text(json.dumps(results))
    learnability.main(["--from-json", *map(str, paths)])
    printed = capsys.readouterr().out
    assert "seeds 0, 7 (each" in printed
    both = learnability._spread([quick["heads"][1]["top1"], 0.5])  # median (min-max) of the two seeds
    assert f"| 120 | {learnability.DEFAULT_HEAD.title} | 0.001 | {both} |" in printed
