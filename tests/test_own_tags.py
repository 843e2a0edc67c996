"""The user's own tags through `stam predict` and `stam evaluate` (--label-map, --min-score,
--calibrate, --thresholds) with the tiny model and generated videos, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import stamcli
from synthetic import write_index_video, write_video
from stamcli.cli import app
from stamcli.engine import Predictor
from stamcli.jobs import PredictOptions
from stamcli.thresholds import calibrate_thresholds

runner = CliRunner()
TAGS = {"sport": ["archery", "cycling", "diving"], "food": ["baking", "eating, with a fork"]}
CPU = ["--device", "cpu", "--batch-size", "1", "--streams", "1"]  # every video alone: bit-identical scores across runs


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Twelve short videos of different random textures."""
    root = tmp_path_factory.mktemp("tag_videos")
    for i in range(12):
        base = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        write_video(root / f"v{i:02d}.mp4", [np.roll(base, 4 * j, axis=1) for j in range(6)])
    return root


@pytest.fixture(scope="module")
def tag_map(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("maps") / "tags.yaml"
    path.write_text(yaml.safe_dump(TAGS, sort_keys=False), encoding="utf-8")
    return path


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _summed(record: dict, groups: dict[str, list[str]]) -> dict[str, float]:
    """Tag scores summed by hand from a record holding every label's probability."""
    probability = {p["label"]: p["score"] for p in record["predictions"]}
    return {tag: sum(probability[label] for label in members) for tag, members in groups.items()}


def test_mapped_scores_equal_the_summed_probabilities_of_a_run_without_the_map(videos, tag_map, tiny_checkpoint,
                                                                              tmp_path):
    plain, tagged, table = tmp_path / "plain.jsonl", tmp_path / "tagged.jsonl", tmp_path / "tagged.csv"
    assert _invoke("predict", videos, "-m", tiny_checkpoint, "-k", 5, "-o", plain, "-q", *CPU).exit_code == 0
    result = _invoke("predict", videos, "-m", tiny_checkpoint, "--label-map", tag_map, "-k", 2, "-o", tagged, "-q",
                     *CPU)
    assert result.exit_code == 0, result.output
    assert _invoke("predict", videos, "-m", tiny_checkpoint, "--label-map", tag_map, "-k", 1, "-o", table, "-q",
                   *CPU).exit_code == 0
    rows = table.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("path,status,error,label_1,score_1,frames")
    for before, after, row in zip(_jsonl(plain), _jsonl(tagged), rows[1:]):
        assert before["path"] == after["path"] and after["status"] == "ok"
        expected = sorted(_summed(before, TAGS).items(), key=lambda kv: -kv[1])
        assert [(p["label"], p["index"]) for p in after["predictions"]] == [
            (tag, list(TAGS).index(tag)) for tag, _ in expected]
        assert [p["score"] for p in after["predictions"]] == pytest.approx([s for _, s in expected], abs=1e-6)
        assert row.split(",")[3:5] == [expected[0][0], repr(after["predictions"][0]["score"])]
    # the Python API gives the same records
    model = stamcli.load_model(str(tiny_checkpoint))
    api = stamcli.predict(sorted(str(p) for p in videos.glob("*.mp4")), model,
                          PredictOptions(top_k=2, label_map=str(tag_map), device="cpu", batch_size=1, streams=1))
    assert [r["predictions"] for r in api] == [r["predictions"] for r in _jsonl(tagged)]


def test_min_score_above_every_score_leaves_every_video_unsure_with_exit_0(videos, tiny_checkpoint, tmp_path):
    plain = tmp_path / "plain.jsonl"
    assert _invoke("predict", videos, "-m", tiny_checkpoint, "-k", 5, "-o", plain, "-q", *CPU).exit_code == 0
    before = _jsonl(plain)
    tops = sorted(r["predictions"][0]["score"] for r in before)
    assert tops[-1] < 0.99
    out = tmp_path / "none.jsonl"
    result = _invoke("predict", videos, "-m", tiny_checkpoint, "--min-score", tops[-1] + 0.01, "-o", out, *CPU)
    assert result.exit_code == 0, result.output
    summary = " ".join(result.output.split())
    assert "tagged 12 (12 unsure: no label reached --min-score/--thresholds), failed 0" in summary
    after = _jsonl(out)
    assert [(r["status"], r["error"], r["predictions"]) for r in after] == [("ok", None, [])] * 12
    # between the scores: exactly the predictions at or above it are kept, in order
    middle = tops[6]
    out = tmp_path / "some.jsonl"
    result = _invoke("predict", videos, "-m", tiny_checkpoint, "--min-score", middle, "-k", 5, "-o", out, *CPU)
    assert result.exit_code == 0 and "(6 unsure" in result.output
    assert [r["predictions"] for r in _jsonl(out)] == [
        [p for p in r["predictions"] if p["score"] >= middle] for r in before]
    # the table on stdout shows an unsure video as ok with no label
    table = _invoke("predict", videos / "v00.mp4", "-m", tiny_checkpoint, "--min-score", 0.99, "-q", *CPU)
    assert table.exit_code == 0 and "v00.mp4 ok" in " ".join(table.output.split())


def test_min_score_and_a_label_map_on_timelines_and_subtitles(tmp_path, tag_map, tiny_checkpoint, monkeypatch):
    # window k (frames 15k...) scores archery 0.05 + 0.2k and baking 0.6 - 0.2k: sport = 0.25 + 0.2k, food = 0.75 - 0.2k
    def probabilities(self, clips):
        rows = []
        for clip in clips:
            k = clip.indices[0] // 15
            rows.append([0.05 + 0.2 * k, 0.6 - 0.2 * k, 0.1, 0.1, 0.15])
        return torch.tensor(rows)

    monkeypatch.setattr(Predictor, "probabilities", probabilities)
    write_index_video(tmp_path / "a.mp4", 60, fps=10)
    out = tmp_path / "t.jsonl"
    result = _invoke("predict", tmp_path / "a.mp4", "-m", tiny_checkpoint, "--label-map", tag_map, "--min-score", 0.6,
                     "--window", 2, "--stride", 1.5, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "tagged 1, failed 0" in " ".join(result.output.split())  # the video has labels: not unsure
    records = _jsonl(out)
    windows, summary = records[:4], records[4]
    assert [[(p["label"], round(p["score"], 6)) for p in w["predictions"]] for w in windows] == [
        [("food", 0.75)], [], [("sport", 0.65)], [("sport", 0.85)]]
    # window seconds (nearest centre): 1.75, 1.5 (no label), 1.375, 1.375
    assert summary["coverage"] == [{"label": "sport", "index": 0, "seconds": pytest.approx(2.75)},
                                   {"label": "food", "index": 1, "seconds": pytest.approx(1.75)}]
    assert [p["score"] for p in summary["predictions"]] == pytest.approx([2.75 / 6, 1.75 / 6])
    srt = tmp_path / "a.srt"
    result = _invoke("predict", tmp_path / "a.mp4", "-m", tiny_checkpoint, "--label-map", tag_map, "--min-score", 0.6,
                     "--window", 2, "--stride", 1.5, "-o", srt, "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert srt.read_text() == ("1\n00:00:00,000 --> 00:00:01,750\nfood (0.75)\n\n"
                               "2\n00:00:03,250 --> 00:00:06,000\nsport (0.75)\n\n")
    # above every window's score: the video is unsure, its subtitles empty
    result = _invoke("predict", tmp_path / "a.mp4", "-m", tiny_checkpoint, "--min-score", 0.99, "--window", 2,
                     "-o", tmp_path / "u.jsonl", "--device", "cpu")
    assert result.exit_code == 0 and "tagged 1 (1 unsure" in " ".join(result.output.split())
    assert all(r["predictions"] == [] and r["status"] == "ok" for r in _jsonl(tmp_path / "u.jsonl"))


def test_bad_label_maps_and_options_are_one_line_errors(videos, tiny_checkpoint, tmp_path):
    typo = tmp_path / "typo.csv"
    typo.write_text("archey,sport\nbaking,food\n")
    binary = tmp_path / "map.yaml"
    binary.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00")
    wide = tmp_path / "wide.csv"
    wide.write_text("archery,sport,extra\n")
    video = videos / "v00.mp4"
    (tmp_path / "data.csv").write_text(f"{video},sport\n", encoding="utf-8")
    not_thresholds = tmp_path / "tags.yaml"
    not_thresholds.write_text(yaml.safe_dump(TAGS), encoding="utf-8")
    other_tags = tmp_path / "other.yaml"
    other_tags.write_text("target_precision: 0.9\nclasses:\n  sport: {threshold: 0.5}\n  music: {threshold: 0.4}\n")
    no_model = tmp_path / "no-model.safetensors"  # these errors come before the model is looked for
    cases = [
        (["predict", video, "-m", no_model, "--thresholds", not_thresholds], 1,
         f"error: {not_thresholds} is not a thresholds file: no 'classes' mapping (write one with stam evaluate "
         "--calibrate)"),
        (["predict", video, "-m", no_model, "--label-map", typo.with_suffix(".yaml"), "--thresholds", other_tags], 1,
         f"error: label map {typo.with_suffix('.yaml')} not found: give a YAML or CSV file, or one of the packaged "
         "maps (kinetics400-coarse)"),
        (["predict", video, "-m", no_model, "--label-map", not_thresholds, "--thresholds", other_tags], 1,
         f"error: the thresholds in {other_tags} are for classes the model does not output: music"),
        (["evaluate", tmp_path / "data.csv", "-m", no_model, "--label-map", binary], 1,
         f"error: label map {binary} is not a text file"),
        (["evaluate", tmp_path / "data.csv", "-m", no_model, "--min-examples", 3], 2,
         "error: --target-precision and --min-examples need --calibrate FILE"),
        (["predict", video, "-m", tiny_checkpoint, "--label-map", typo], 1,
         f"error: label map {typo} names 1 label(s) the model does not have: 'archey' (closest: archery)"),
        (["predict", video, "-m", tmp_path / "no-model.safetensors", "--label-map", binary], 1,
         f"error: label map {binary} is not a text file"),  # before the model is looked for
        (["predict", video, "-m", tiny_checkpoint, "--label-map", wide], 1, "line 1: expected 'label,tag', got 3"),
        (["predict", video, "-m", tiny_checkpoint, "--label-map", "coarse"], 1,
         "error: label map coarse not found: give a YAML or CSV file, or one of the packaged maps "
         "(kinetics400-coarse)"),
        (["predict", video, "-m", tiny_checkpoint, "--label-map", "kinetics400-coarse"], 1,
         "label map kinetics400-coarse names 399 label(s) the model does not have (is the map for another model's "
         "labels?): 'bowling' (closest: baking)"),
        (["predict", video, "-m", tiny_checkpoint, "--min-score", 1.5], 2,
         "error: --min-score must be a score between 0 and 1, got 1.5"),
        (["evaluate", tmp_path / "data.csv", "-m", tiny_checkpoint, "--target-precision", 0.8], 2,
         "error: --target-precision and --min-examples need --calibrate FILE"),
        (["evaluate", tmp_path / "data.csv", "-m", tiny_checkpoint, "--calibrate", tmp_path / "t.yaml",
          "--target-precision", 0], 2, "error: --target-precision must be in (0, 1], got 0"),
        (["evaluate", tmp_path / "data.csv", "-m", tiny_checkpoint, "--label-map", typo], 1, "'archey' (closest"),
    ]
    for args, code, message in cases:
        result = _invoke(*args, "--device", "cpu")
        assert result.exit_code == code, (args, result.output)
        text = " ".join(result.output.split())
        assert message in text and len(result.output.strip().splitlines()) <= 3, result.output  # one wrapped line
        assert "Traceback" not in result.output


def _tag_scores(videos: Path, tag_map: Path, checkpoint: Path, tmp_path: Path) -> list[dict]:
    out = tmp_path / "scores.jsonl"
    assert _invoke("predict", videos, "-m", checkpoint, "--label-map", tag_map, "-k", 2, "-o", out, "-q",
                   *CPU).exit_code == 0
    return [{"path": r["path"], **{p["label"]: p["score"] for p in r["predictions"]}} for r in _jsonl(out)]


def test_evaluate_on_tags_calibrates_thresholds_that_predict_applies(videos, tag_map, tiny_checkpoint, tmp_path):
    scores = _tag_scores(videos, tag_map, tiny_checkpoint, tmp_path)
    # the 7 videos the model finds most "sport" are sport, the rest food: at target precision 1 each tag's
    # threshold is the score of its least confident true video, and every video keeps exactly its own tag
    ranked = sorted(scores, key=lambda s: -s["sport"])
    truth = {s["path"]: "sport" if rank < 7 else "food" for rank, s in enumerate(ranked)}
    data = tmp_path / "data.csv"
    data.write_text("path,label\n" + "".join(f"{path},{tag}\n" for path, tag in truth.items()), encoding="utf-8")
    thresholds, report = tmp_path / "thresholds.yaml", tmp_path / "report.json"
    result = _invoke("evaluate", data, "-m", tiny_checkpoint, "--label-map", tag_map, "--calibrate", thresholds,
                     "--target-precision", 1.0, "--min-examples", 2, "-o", report, *CPU)
    assert result.exit_code == 0, result.output
    assert f"thresholds for 2 of 2 classes at precision 1: {thresholds}" in " ".join(result.output.split())
    written = yaml.safe_load(thresholds.read_text(encoding="utf-8"))
    assert (written["model"], written["label_map"], written["data"], written["target_precision"]) == (
        "tiny.safetensors", str(tag_map), str(data), 1.0)
    assert written["classes"] == {
        "sport": {"threshold": ranked[6]["sport"], "examples": 7, "precision": 1.0, "recall": 1.0},
        "food": {"threshold": ranked[7]["food"], "examples": 5, "precision": 1.0, "recall": 1.0},
    }
    # the library on the same scores writes the same thresholds
    targets = [0 if truth[s["path"]] == "sport" else 1 for s in scores]
    same = calibrate_thresholds([[s["sport"], s["food"]] for s in scores], targets, list(TAGS), 1.0, 2)
    assert {name: c.threshold for name, c in same.classes.items()} == {"sport": ranked[6]["sport"],
                                                                       "food": ranked[7]["food"]}
    # top-1 over the tags, measured with no training
    expected_top1 = np.mean([(s["sport"] > s["food"]) == (truth[s["path"]] == "sport") for s in scores])
    saved = json.loads(report.read_text())
    assert saved["label_map"] == str(tag_map) and saved["top1"] == pytest.approx(expected_top1)
    assert [c["label"] for c in saved["per_class"]] == ["sport", "food"]
    assert saved["calibration"] == {"file": str(thresholds), "target_precision": 1.0, "calibrated": 2, "classes": 2}

    out = tmp_path / "applied.jsonl"
    result = _invoke("predict", videos, "-m", tiny_checkpoint, "--label-map", tag_map, "--thresholds", thresholds,
                     "-k", 2, "-o", out, "-q", *CPU)
    assert result.exit_code == 0, result.output
    assert {r["path"]: [p["label"] for p in r["predictions"]] for r in _jsonl(out)} == {
        path: [tag] for path, tag in truth.items()}

    # evaluate reports precision and recall at those thresholds
    result = _invoke("evaluate", data, "-m", tiny_checkpoint, "--label-map", tag_map, "--thresholds", thresholds,
                     "-o", report, *CPU)
    assert result.exit_code == 0, result.output
    at = json.loads(report.read_text())["at_thresholds"]
    assert [(c["label"], c["predicted"], c["precision"], c["recall"]) for c in at["per_class"]] == [
        ("sport", 7, 1.0, 1.0), ("food", 5, 1.0, 1.0)]
    assert at["unsure"] == 0 and at["file"] == str(thresholds)
    assert "mean precision 100.0%, mean recall 100.0%, 0 of 12 videos unsure" in " ".join(result.output.split())

    # thresholds of tags need the label map; DATA labelled with the model's labels does not fit the tags
    result = _invoke("predict", videos / "v00.mp4", "-m", tiny_checkpoint, "--thresholds", thresholds, "-q", *CPU)
    assert result.exit_code == 1
    assert (f"are for classes the model does not output: sport, food (they are tags of label map {tag_map}: pass "
            f"--label-map {tag_map})") in " ".join(result.output.split())
    data.write_text(f"{videos / 'v00.mp4'},archery\n", encoding="utf-8")
    result = _invoke("evaluate", data, "-m", tiny_checkpoint, "--label-map", tag_map, *CPU)
    assert result.exit_code == 1
    assert f"label map {tag_map} has no tag for: archery (its tags: sport, food)" in " ".join(result.output.split())


def test_classes_without_a_threshold_fall_back_on_min_score_with_a_warning(videos, tiny_checkpoint, tmp_path,
                                                                           caplog):
    from stamcli.thresholds import ClassThreshold, Thresholds

    model = stamcli.load_model(str(tiny_checkpoint))
    path = Thresholds({"archery": ClassThreshold(0.0, 20), "baking": ClassThreshold(None, 3, reason="too few")},
                      0.9, model="stam_16").write(tmp_path / "t.yaml")
    paths = [str(videos / "v00.mp4"), str(videos / "v01.mp4")]
    everything = stamcli.predict(paths, model, PredictOptions(top_k=5, device="cpu"))
    with caplog.at_level("WARNING", logger="stamcli.engine"):
        kept = stamcli.predict(paths, model, PredictOptions(top_k=5, device="cpu", thresholds=str(path), min_score=1.0))
    assert "4 of 5 classes have no calibrated threshold and use --min-score 1: baking, cycling, diving, eating" in \
        caplog.text
    assert f"the thresholds in {path} were calibrated for model stam_16, not tiny.safetensors" in caplog.text
    # archery: threshold 0 but --min-score 1 is the floor for every class
    assert [r["predictions"] for r in kept] == [[], []]
    kept = stamcli.predict(paths, model, PredictOptions(top_k=5, device="cpu", thresholds=str(path)))
    assert [r["predictions"] for r in kept] == [r["predictions"] for r in everything]  # no floor: kept


def test_the_packaged_coarse_map_on_a_kinetics_model(videos, tmp_path):
    from importlib import resources

    from conftest import SHARED, make_tiny_model

    labels = (SHARED / "data" / "kinetics400_labels.txt").read_text(encoding="utf-8").splitlines()
    checkpoint = stamcli.save_checkpoint(make_tiny_model(num_classes=400, labels=labels), tmp_path / "k400.safetensors")
    coarse = yaml.safe_load((resources.files("stamcli") / "data/label_maps/kinetics400-coarse.yaml").read_text("utf-8"))
    plain, tagged = tmp_path / "plain.jsonl", tmp_path / "tagged.jsonl"
    assert _invoke("predict", videos / "v00.mp4", "-m", checkpoint, "-k", 400, "-o", plain, "-q", *CPU).exit_code == 0
    result = _invoke("predict", videos / "v00.mp4", "-m", checkpoint, "--label-map", "kinetics400-coarse", "-k", 40,
                     "-o", tagged, "-q", *CPU)
    assert result.exit_code == 0, result.output
    (before,), (after,) = _jsonl(plain), _jsonl(tagged)
    expected = _summed(before, coarse)
    assert len(after["predictions"]) == len(coarse) == 32  # -k 40 is cut to the number of tags
    assert {p["label"]: p["score"] for p in after["predictions"]} == pytest.approx(expected, abs=1e-6)
    assert sum(p["score"] for p in after["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_resolve_reads_the_label_map_and_thresholds_into_the_resolved_copy(tag_map, tmp_path):
    from stamcli.labelmap import LabelMap
    from stamcli.thresholds import ClassThreshold, Thresholds

    path = Thresholds({"sport": ClassThreshold(0.4, 12)}, 0.9, label_map=str(tag_map)).write(tmp_path / "t.yaml")
    options = PredictOptions(device="cpu", label_map=str(tag_map), thresholds=str(path), min_score=0.1)
    resolved = options.resolve()
    assert (options.label_map, options.thresholds) == (str(tag_map), str(path))  # the given options are unchanged
    assert isinstance(resolved.label_map, LabelMap) and resolved.label_map.tags == ["sport", "food"]
    assert resolved.label_map.source == str(tag_map) and resolved.label_map.labels is None  # bound by the Predictor
    assert resolved.thresholds.calibrated == {"sport": 0.4} and resolved.thresholds.source == str(path)
    assert resolved.min_score == 0.1 and resolved.resolve() is resolved
