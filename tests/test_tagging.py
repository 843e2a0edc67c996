"""stamcli.tagging: planning a run (shards, torchrun ranks, part files), what --resume skips, the
merge of the ranks' parts, the result source and sink; the usage errors under torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_model
from synthetic import write_index_video, write_text
from stamcli.cli import app
from stamcli.distributed import Distributed
from stamcli.engine import PredictOptions, Predictor
from stamcli.errors import UsageError
from stamcli.jobs import TaggingJob
from stamcli.runner import VideoResult
from stamcli.tagging import (PredictorSource, RecordSink, _done_paths, _merge_parts, _part_path, _plan,
                             run_tagging)
from stamcli.timeline import TimelinePredictor
from stamcli.writers import make_record, open_writer, read_records

runner = CliRunner()
ONE = Distributed()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("tagging")
    return [str(write_index_video(root / f"v{i}.mp4", 20 + 5 * i, 48, 64, fps=25)) for i in range(5)]


def _record(path: str, status: str = "ok", **extra) -> dict:
    if status == "ok":
        return make_record(path, predictions=[{"label": "a", "index": 0, "score": 0.5}], frames=4, model="m", **extra)
    return make_record(path, status="error", error="broken", model="m", **extra)


def test_part_files_sit_beside_the_output_one_per_rank():
    assert _part_path("out/tags.csv", 1, 4) == str(Path("out/tags.rank1-of-4.csv"))
    assert _part_path("tags.jsonl", 0, 2) == "tags.rank0-of-2.jsonl"


def test_plan_shards_alone_or_per_rank_and_refuses_what_torchrun_cannot_do(videos, tmp_path):
    out = str(tmp_path / "tags.csv")
    assert _plan(TaggingJob(paths=videos, output=out), ONE) == (videos, out)
    assert _plan(TaggingJob(paths=videos, shard="1/2"), ONE) == (videos[1::2], None)
    for rank in range(2):
        got = _plan(TaggingJob(paths=videos, output=out), Distributed(rank, 2, rank))
        assert got == (videos[rank::2], str(tmp_path / f"tags.rank{rank}-of-2.csv"))
    with pytest.raises(UsageError, match="--shard cannot be combined with torchrun"):
        _plan(TaggingJob(paths=videos, output=out, shard="0/2"), Distributed(0, 2, 0))
    with pytest.raises(UsageError, match="under torchrun, --output is required"):
        _plan(TaggingJob(paths=videos), Distributed(1, 2, 1))


def test_done_paths_are_the_ok_video_records_of_the_output_on_resume(tmp_path):
    out = tmp_path / "tags.jsonl"
    with open_writer(out, "jsonl", top_k=1) as writer:
        writer.write(_record("a.mp4"))
        writer.write(_record("b.mp4", "error"))
        writer.write(_record("c.mp4", type="window", window=0))  # a window of an unfinished video
        writer.write(_record("d.mp4", type="video"))
    job = TaggingJob(paths=["x"], output=str(out), resume=True)
    assert _done_paths(job, "jsonl") == {"a.mp4", "d.mp4"}
    assert _done_paths(TaggingJob(paths=["x"], output=str(out)), "jsonl") == set()  # no --resume
    assert _done_paths(TaggingJob(paths=["x"], output=str(tmp_path / "none.jsonl"), resume=True), "jsonl") == set()


def test_merge_keeps_the_resumed_records_then_every_part_in_rank_order(tmp_path):
    out = tmp_path / "tags.csv"
    with open_writer(out, "csv", top_k=1) as writer:
        writer.write(_record("earlier.mp4"))
        writer.write(_record("failed-before.mp4", "error"))
    dist = Distributed(0, 3, 0)
    parts = {0: ["r0a.mp4", "r0b.mp4"], 1: [], 2: ["r2a.mp4"]}
    for rank, paths in parts.items():
        with open_writer(_part_path(str(out), rank, 3), "csv", top_k=1) as writer:
            for path in paths:
                writer.write(_record(path))
    job = TaggingJob(paths=["x"], output=str(out), resume=True)
    _merge_parts(job, "csv", 1, dist)
    assert [r["path"] for r in read_records(out)] == ["earlier.mp4", "r0a.mp4", "r0b.mp4", "r2a.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.csv"]
    # without --resume the output is only the parts
    for rank in range(3):
        with open_writer(_part_path(str(out), rank, 3), "csv", top_k=1) as writer:
            writer.write(_record(f"new{rank}.mp4"))
    _merge_parts(TaggingJob(paths=["x"], output=str(out)), "csv", 1, dist)
    assert [r["path"] for r in read_records(out)] == ["new0.mp4", "new1.mp4", "new2.mp4"]


def test_predictor_source_numbers_results_by_video_also_with_windows(videos, tmp_path):
    predictor = Predictor(make_tiny_model(), PredictOptions(device="cpu", top_k=2, batch_size=2, workers=1))
    bad = str(write_text(tmp_path / "bad.mp4"))
    inputs = [videos[0], bad, videos[1]]
    plain = [result for batch in PredictorSource(predictor).results(inputs) for result in batch]
    assert [(r.index, r.record["path"], r.record["status"]) for r in plain] == [
        (0, videos[0], "ok"), (1, bad, "error"), (2, videos[1], "ok")]
    timeline = TimelinePredictor(predictor, 0.4)
    results = [result for batch in PredictorSource(predictor, timeline).results(inputs) for result in batch]
    kinds = [(r.index, r.record["path"], r.record.get("type")) for r in results]
    # each video's windows then its own record, all under the video's index
    assert kinds[-1] == (2, videos[1], "video")
    for index, path in enumerate(inputs):
        mine = [kind for i, p, kind in kinds if p == path]
        assert [i for i, p, _ in kinds if p == path] == [index] * len(mine)
        assert mine[-1] == "video" and set(mine[:-1]) <= {"window"}
        assert (len(mine) > 1) == (path != bad)
    assert [i for i, _, _ in kinds] == sorted(i for i, _, _ in kinds)


def test_record_sink_writes_records_and_sheets_only_for_clips(tmp_path, monkeypatch):
    written_sheets = []

    class Sheets:
        def write(self, clip, record):
            written_sheets.append((clip, record["path"]))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            written_sheets.append("closed")

    out = tmp_path / "t.jsonl"
    with RecordSink(open_writer(out, "jsonl", top_k=1), Sheets()) as sink:
        sink.write([VideoResult(0, _record("a.mp4"), clip="clip-a"), VideoResult(1, _record("b.mp4", "error"))])
    assert [r["path"] for r in read_records(out)] == ["a.mp4", "b.mp4"]
    assert written_sheets == [("clip-a", "a.mp4"), "closed"]


def test_torchrun_usage_errors_come_before_the_model_is_loaded(videos, tmp_path, monkeypatch):
    # what torchrun gives each rank; no process group is joined before these checks
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    missing_model = str(tmp_path / "never-loaded.safetensors")  # loading it would be exit 1
    cases = [
        (["--shard", "0/2", "-o", tmp_path / "t.csv"], "--shard cannot be combined with torchrun"),
        ([], "under torchrun, --output is required"),
        (["--format", "srt"], "--format srt cannot run under torchrun"),
        (["--format", "vtt", "-o", tmp_path / "subs"], "--format vtt cannot run under torchrun"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["predict", *videos, "--model", missing_model, "--device", "cpu",
                                     *map(str, args)])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no part file
    with pytest.raises(UsageError, match="--output is required"):
        run_tagging(TaggingJob(paths=videos, model=missing_model, options=PredictOptions(device="cpu")))


def test_run_tagging_with_a_shard_and_resume_tags_only_what_is_left(videos, tmp_path):
    out = tmp_path / "t.jsonl"
    model_file = tmp_path / "tiny.safetensors"
    from stamcli import save_checkpoint

    save_checkpoint(make_tiny_model(), model_file)
    job = TaggingJob(paths=videos, model=str(model_file), output=str(out), shard="0/2",
                     options=PredictOptions(device="cpu", workers=1))
    first = run_tagging(TaggingJob(**{**job.__dict__, "paths": videos[:1]}))
    assert (first.ok, first.failed, first.skipped) == (1, 0, 0)
    seen = []
    summary = run_tagging(TaggingJob(**{**job.__dict__, "resume": True}), on_record=lambda r: seen.append(r["path"]))
    assert (summary.ok, summary.skipped) == (2, 1)  # shard 0/2 is videos 0, 2, 4; video 0 was done
    assert seen == [videos[2], videos[4]]
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == videos[0::2]
