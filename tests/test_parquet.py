"""Parquet results: the same records as JSONL, a fixed schema, row groups, Ctrl-C, hard kills and --resume,
and a DuckDB query over the file."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import CHILD_ENV, QuietHandler, http_server, interrupt_when
from synthetic import write_index_video
from stamcli.cli import app
from stamcli.errors import StamError, UsageError
from stamcli.parquet import ParquetWriter, journal_path, read_parquet_records, schema
from stamcli.writers import error_record, make_record, open_writer, read_records

runner = CliRunner()


def _predictions(*pairs):
    return [{"label": label, "index": index, "score": score} for label, index, score in pairs]


def sample_records() -> list[dict]:
    """Every kind of record stamcli writes: plain, error, test-time views, timeline windows and summaries."""
    return [
        make_record("a.mp4", predictions=_predictions(("archery", 0, 0.91), ("baking", 1, 0.05)), frames=12,
                    model="tiny", duration_s=0.48, fps=25.0),
        error_record("broken.mp4", "cannot read video broken.mp4: no frames", model="tiny"),
        make_record("s3://bucket/é 日本, \"q\".mp4", predictions=_predictions(("baking", 1, 0.7123456789012345)),
                    frames=9, model="tiny", duration_s=0.36, fps=25.0, clips=2, crops=3),
        make_record("long.mp4", predictions=_predictions(("cycling", 2, 0.6)), frames=25, model="tiny",
                    duration_s=1.0, fps=25.0, type="window", window=0, start_s=0.0, end_s=1.0),
        make_record("long.mp4", predictions=_predictions(("cycling", 2, 1.0)), frames=50, model="tiny",
                    duration_s=2.0, fps=25.0, type="video", window=None, start_s=0.0, end_s=2.0, windows=1,
                    coverage=[{"label": "cycling", "index": 2, "seconds": 2.0}]),
        error_record("gone.mp4", "not found", model="tiny", type="video", window=None, start_s=None, end_s=None),
        make_record("other.mp4", predictions=[], model="tiny", note={"free": ["form", 1]}),  # a key Parquet has no column for
    ]


def test_round_trip_gives_the_jsonl_records_back(tmp_path):
    records = sample_records()
    with open_writer(tmp_path / "r.jsonl", None, top_k=5) as writer:
        for record in records:
            writer.write(record)
    with open_writer(tmp_path / "r.parquet", None, top_k=5) as writer:
        for record in records:
            writer.write(record)
    assert read_records(tmp_path / "r.parquet") == read_records(tmp_path / "r.jsonl") == records
    assert pq.read_schema(tmp_path / "r.parquet").equals(schema(), check_metadata=True)
    assert not journal_path(tmp_path / "r.parquet").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(UsageError, match="Parquet cannot be written to stdout"):
        open_writer(None, "parquet", top_k=5)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(StamError, match="junk.parquet is not a readable Parquet results file"):
        read_records(tmp_path / "junk.parquet")


def test_row_groups_as_results_arrive(tmp_path):
    out = tmp_path / "r.parquet"
    writer = ParquetWriter(out, 5, rows_per_group=2)
    for record in sample_records():
        writer.write(record)
    writer.close()
    assert pq.ParquetFile(out).metadata.num_row_groups == 4  # 7 records, 2 per group
    writer = ParquetWriter(out, 5, seconds_per_group=0.0)  # a group per record when time is up
    for record in sample_records()[:3]:
        writer.write(record)
    writer.close()
    assert pq.ParquetFile(out).metadata.num_row_groups == 3


def test_files_of_different_runs_concatenate_in_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    records = sample_records()
    for name, part in (("plain", records[:3]), ("timeline", records[3:6])):
        with open_writer(tmp_path / f"{name}.parquet", None, top_k=5) as writer:
            for record in part:
                writer.write(record)
    # The query of the docs: videos whose top-1 label is X with a score above 0.8.
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT path, predictions[1].label AS top1, predictions[1].score AS score
        FROM read_parquet('{tmp_path}/*.parquet')
        WHERE status = 'ok' AND (type IS NULL OR type = 'video') AND predictions[1].score > 0.8
        ORDER BY path""").fetchall()
    assert rows == [("a.mp4", "archery", 0.91), ("long.mp4", "cycling", 1.0)]
    errors = con.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/*.parquet') WHERE status = 'error'").fetchall()
    assert errors == [(2,)]


def test_a_hard_kill_loses_nothing_and_resume_recovers(tmp_path):
    """In-process hard kill: the writer is dropped without close(), as SIGKILL would leave it."""
    out = tmp_path / "r.parquet"
    records = sample_records()
    with open_writer(out, None, top_k=5) as writer:
        writer.write(records[0])
    killed = ParquetWriter(out, 5, resume=True)
    killed.write(records[2])
    killed.write(records[1])
    # no close(): the output is still the previous file, the journal holds every record
    assert [r["path"] for r in pq.read_table(out).to_pylist()] == ["a.mp4"]
    assert read_parquet_records(out) == [records[0], records[2], records[1]]
    with open_writer(out, None, top_k=5, resume=True) as writer:
        assert writer.done_paths == {"a.mp4", records[2]["path"]}  # the error is retried
        assert writer.counts["resumed"] == 2
        writer.write(records[6])
    assert read_records(out) == [records[0], records[2], records[6]]
    assert not journal_path(out).exists()


# ---------------------------------------------------------------------------- the real command


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pq_videos")
    for i in range(3):
        write_index_video(root / f"v{i}.mp4", 30 + 5 * i)
    return root


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("timeline", [False, True])
def test_predict_parquet_equals_jsonl(videos, tiny_checkpoint, tmp_path, timeline):
    extra = ["--window", "0.6", "--stride", "0.4"] if timeline else []
    for fmt in ("jsonl", "parquet"):
        result = _predict(videos, "--model", tiny_checkpoint, "--device", "cpu", "-b", "1", "--streams", "1",
                          "-o", tmp_path / f"r.{fmt}", "-q", *extra)
        assert result.exit_code == 0, result.output
    jsonl, parquet = read_records(tmp_path / "r.jsonl"), read_records(tmp_path / "r.parquet")
    assert parquet == jsonl
    assert len(jsonl) == (3 if not timeline else 3 + sum(r.get("type") == "window" for r in jsonl))
    if timeline:
        assert {r["type"] for r in parquet} == {"window", "video"} and "coverage" in parquet[-1]
    result = _predict(videos, "--model", tiny_checkpoint, "--device", "cpu", "-b", "1", "--streams", "1",
                      "--format", "parquet", "-o", tmp_path / "named.out", "-q", *extra)
    assert result.exit_code == 0 and read_records(tmp_path / "named.out", "parquet") == jsonl


@pytest.fixture
def slow_server(videos):
    """The videos over HTTP on 127.0.0.1, each answer held back 0.25 s, so that a run of a dozen lasts seconds."""

    class Slow(QuietHandler):
        def do_GET(self):  # noqa: N802
            time.sleep(0.25)
            super().do_GET()

    with http_server(functools.partial(Slow, directory=str(videos))) as url:
        yield url


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_ctrl_c_then_sigkill_then_resume(slow_server, tiny_checkpoint, tmp_path):
    """Real signals: Ctrl-C leaves a readable file; SIGKILL leaves the previous file and a journal with every
    finished record; --resume finishes without redoing anything or losing anything."""
    urls = [f"{slow_server}/v{i % 3}.mp4?copy={i}" for i in range(12)]  # distinct URLs of the same videos
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(urls))
    out = tmp_path / "tags.parquet"
    journal = journal_path(out)
    command = [sys.executable, "-m", "stamcli", "predict", f"@{listing}", "--model", str(tiny_checkpoint),
               "--device", "cpu", "-o", str(out), "-b", "1", "-w", "1", "-q"]
    # Ctrl-C while the run waits to write its third record (batches of one video): two are written
    interrupt_when(command[3:], hold=("stamcli.tagging:RecordSink.write", 3))
    first = read_records(out)  # readable: closed on Ctrl-C
    assert not journal.exists()
    assert [r["path"] for r in first] == urls[:2]

    proc = subprocess.Popen([*command, "--resume"], env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _lines(journal) < len(first) + 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert pq.read_table(out).num_rows == len(first)  # the file itself is still the first run's
    journaled = read_records(out)
    assert journaled[: len(first)] == first and len(first) + 2 <= len(journaled) < len(urls)
    assert [r["path"] for r in journaled] == urls[: len(journaled)]

    result = _predict(f"@{listing}", "--model", tiny_checkpoint, "--device", "cpu", "-o", out, "--resume", "-b", "4")
    assert result.exit_code == 0, result.output
    assert f"{len(journaled)} already done" in " ".join(result.output.split())
    final = read_records(out)
    assert [r["path"] for r in final] == urls and final[: len(journaled)] == journaled
    assert not journal.exists() and not list(tmp_path.glob(".tags.parquet.*"))  # the killed run's temporary removed
    assert json.dumps(final)  # plain types
