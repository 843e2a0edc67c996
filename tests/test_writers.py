"""Result writers: formats, round trips, crash safety, resume, merge, console table."""

from __future__ import annotations

import csv
import json
from io import StringIO

import pytest
from rich.console import Console

from stamcli.errors import StamError
from stamcli.writers import (
    FORMATS,
    error_record,
    format_for,
    make_record,
    open_writer,
    read_records,
)

TOP_K = 3
TEXT_FORMATS = tuple(f for f in FORMATS if f != "parquet")  # Parquet has a footer: a journal instead (test_parquet)
ODD_NAMES = ['a, "quoted"\nname.mp4', "spaced name é 日本.mp4", "plain.mp4"]


def ok(path, *labels, frames=16, **extra):
    scores = [0.7123456789012345, 0.2000000000000001, 1e-12, 0.05][: len(labels)]
    preds = [{"label": lab, "index": i * 7, "score": s} for i, (lab, s) in enumerate(zip(labels, scores))]
    return make_record(path, predictions=preds, frames=frames, model="stam_16", duration_s=3.25, fps=29.97, **extra)


def sample_records():
    return [
        ok(ODD_NAMES[0], "riding, bike", 'say "hi"', "c"),
        error_record("missing.mp4", "file not found", model="stam_16"),
        ok(ODD_NAMES[1], "only one"),  # fewer than K predictions
        ok(ODD_NAMES[2], "x", "y", "z"),
    ]


def comparable(record, fmt):
    """What a record reads back as: CSV has no index column and no extra keys."""
    if fmt != "csv":
        return record
    rec = {k: v for k, v in record.items() if k in make_record("x")}
    rec["predictions"] = [{**p, "index": None} for p in record["predictions"]]
    return rec


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt):
    out = tmp_path / "new" / "dir" / f"results.{fmt}"  # missing folders are created
    records = sample_records()
    records[-1]["start_s"] = 1.5  # extra keys survive JSON/JSONL
    with open_writer(out, None, top_k=TOP_K) as writer:
        for rec in records:
            writer.write(rec)
    assert writer.counts == {"ok": 3, "error": 1, "resumed": 0}
    back = read_records(out)
    assert back == [comparable(r, fmt) for r in records]
    assert back[0]["predictions"][0]["score"] == 0.7123456789012345  # exact float
    assert back[2]["predictions"][0]["score"] == 0.7123456789012345
    assert back[1]["error"] == "file not found" and back[1]["frames"] is None
    assert isinstance(back[0]["frames"], int) and isinstance(back[0]["fps"], float)
    if fmt != "csv":
        assert back[-1]["start_s"] == 1.5


def test_csv_layout(tmp_path):
    out = tmp_path / "r.csv"
    with open_writer(out, None, top_k=TOP_K) as writer:
        for rec in sample_records():
            writer.write(rec)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "status", "error", "label_1", "score_1", "label_2", "score_2",
                       "label_3", "score_3", "frames", "model", "duration_s", "fps"]
    assert rows[1] == [ODD_NAMES[0], "ok", "", "riding, bike", "0.7123456789012345", 'say "hi"',
                       "0.2000000000000001", "c", "1e-12", "16", "stam_16", "3.25", "29.97"]
    assert rows[2] == ["missing.mp4", "error", "file not found", "", "", "", "", "", "", "", "stam_16", "", ""]
    assert rows[3][3:9] == ["only one", "0.7123456789012345", "", "", "", ""]
    assert out.read_bytes().endswith(b"\r\n") and "日本".encode() in out.read_bytes()


def test_json_layout(tmp_path):
    out = tmp_path / "r.json"
    with open_writer(out, None, top_k=TOP_K) as writer:
        writer.write(ok("a.mp4", "x"))
        writer.write(ok("b.mp4", "y"))
    text = out.read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[0] == "[" and lines[-2:] == ["]", ""]
    assert lines[1].startswith('  {"path": "a.mp4"') and lines[1].endswith("},")
    assert lines[2].startswith('  {"path": "b.mp4"') and lines[2].endswith("}")
    assert [r["path"] for r in json.loads(text)] == ["a.mp4", "b.mp4"]


def test_empty_json_is_valid(tmp_path):
    out = tmp_path / "r.json"
    open_writer(out, None, top_k=1).close()
    assert json.loads(out.read_text()) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_json_valid_after_exception(tmp_path, exc):
    out = tmp_path / "r.json"
    with pytest.raises(exc):
        with open_writer(out, None, top_k=TOP_K) as writer:
            writer.write(ok("a.mp4", "x"))
            raise exc()
    assert [r["path"] for r in json.loads(out.read_text(encoding="utf-8"))] == ["a.mp4"]


def test_records_are_on_disk_before_close(tmp_path):
    for fmt in FORMATS:
        out = tmp_path / f"r.{fmt}"
        writer = open_writer(out, None, top_k=TOP_K)
        writer.write(ok("a.mp4", "x"))
        assert [r["path"] for r in read_records(out)] == ["a.mp4"]  # JSON not closed yet
        writer.close()


@pytest.mark.parametrize("cut", [2, 20, 60])
def test_truncated_files_are_readable(tmp_path, cut):
    """A hard kill can leave a partial last record; it is dropped, the rest is read."""
    for fmt in TEXT_FORMATS:
        out = tmp_path / f"r.{fmt}"
        with open_writer(out, None, top_k=TOP_K) as writer:
            for rec in sample_records():
                writer.write(rec)
        full = out.read_bytes()
        if fmt == "json":
            full = full[: -len(b"\n]\n")]  # never closed
        out.write_bytes(full[:-cut])
        back = read_records(out)
        assert [r["path"] for r in back] == [r["path"] for r in sample_records()[:3]], fmt
        assert back[0]["predictions"][0]["score"] == 0.7123456789012345


def test_jsonl_complete_last_line_without_newline_is_kept(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"path": "a.mp4", "status": "ok"}\n{"path": "b.mp4", "status": "ok"}', encoding="utf-8")
    assert [r["path"] for r in read_records(out)] == ["a.mp4", "b.mp4"]


def test_unclosed_json_is_readable(tmp_path):
    out = tmp_path / "r.json"
    writer = open_writer(out, None, top_k=TOP_K)
    writer.write(ok("a.mp4", "x"))
    writer.write(ok("b.mp4", "x"))
    # simulate a hard kill: nothing more is written, close() never runs
    assert not out.read_text().rstrip().endswith("]")
    assert [r["path"] for r in read_records(out)] == ["a.mp4", "b.mp4"]
    writer._fh.close()


def test_corrupt_middle_line_is_an_error(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"path": "a"}\nnot json\n{"path": "b"}\n')
    with pytest.raises(StamError, match="not a readable JSONL results file"):
        read_records(out)
    bad_json = tmp_path / "r.json"
    bad_json.write_text('[\n  {"path": "a"},\n  {"path": oops},\n  {"path": "b"}\n]\n')
    with pytest.raises(StamError, match="not a readable JSON results file"):
        read_records(bad_json)
    with pytest.raises(StamError, match="not a readable CSV results file"):
        read_records(bad_json, "csv")


def test_json_written_by_other_tools_is_read(tmp_path):
    out = tmp_path / "r.json"
    out.write_text(json.dumps([{"path": "a.mp4", "status": "ok"}, {"path": "b.mp4", "status": "error"}], indent=4))
    assert [r["path"] for r in read_records(out)] == ["a.mp4", "b.mp4"]


def test_interrupted_write_leaves_no_partial_record(tmp_path):
    out = tmp_path / "r.json"
    writer = open_writer(out, None, top_k=1)
    writer.write(ok("a.mp4", "x"))

    def interrupted(sync):
        raise KeyboardInterrupt

    writer._flush = interrupted  # Ctrl-C after the text went into the buffer
    with pytest.raises(KeyboardInterrupt):
        writer.write(ok("b.mp4", "x"))
    del writer._flush
    writer.close()
    assert [r["path"] for r in json.loads(out.read_text())] == ["a.mp4"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume(tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    with open_writer(out, None, top_k=TOP_K) as writer:
        writer.write(ok("a.mp4", "first"))
        writer.write(error_record("b.mp4", "decode failed"))
        writer.write(ok(ODD_NAMES[0], "x"))
        writer.write(ok("a.mp4", "second"))  # duplicate: the last one is kept
    if fmt == "json":  # as if killed: unclosed and a record cut short
        out.write_bytes(out.read_bytes()[: -len(b"\n]\n")] + b',\n  {"path": "c.mp4", "sta')
    with open_writer(out, None, top_k=TOP_K, resume=True) as writer:
        assert writer.done_paths == {"a.mp4", ODD_NAMES[0]}
        assert writer.counts["resumed"] == 2
        # the file was rewritten with the kept records only
        assert [r["path"] for r in read_records(out)] == [ODD_NAMES[0], "a.mp4"]
        writer.write(ok("b.mp4", "retried"))
        writer.write(error_record("c.mp4", "still broken"))
    back = read_records(out)
    assert [r["path"] for r in back] == [ODD_NAMES[0], "a.mp4", "b.mp4", "c.mp4"]
    assert back[1]["predictions"][0]["label"] == "second"
    assert back[2]["predictions"][0]["label"] == "retried"
    if fmt == "json":
        json.loads(out.read_text(encoding="utf-8"))
    if fmt == "csv":
        assert out.read_text(encoding="utf-8").count("path,status") == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_without_resume_output_is_overwritten(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"path": "old.mp4", "status": "ok"}\n')
    with open_writer(out, None, top_k=1) as writer:
        assert writer.done_paths == set()
        writer.write(ok("new.mp4", "x"))
    assert [r["path"] for r in read_records(out)] == ["new.mp4"]


def test_resume_missing_file_starts_fresh(tmp_path):
    with open_writer(tmp_path / "r.csv", None, top_k=1, resume=True) as writer:
        assert writer.done_paths == set()
        writer.write(ok("a.mp4", "x"))
    assert [r["path"] for r in read_records(tmp_path / "r.csv")] == ["a.mp4"]


def test_unwritable_output(tmp_path):
    (tmp_path / "adir.csv").mkdir()
    with pytest.raises(StamError, match="cannot write results to"):
        open_writer(tmp_path / "adir.csv", None, top_k=1)
    (tmp_path / "file").write_text("")
    with pytest.raises(StamError, match="cannot write results to"):
        open_writer(tmp_path / "file" / "r.csv", None, top_k=1)


def test_format_for():
    assert format_for("out/r.CSV", None) == "csv"
    assert format_for("r.json", None) == "json"
    assert format_for("r.jsonl", None) == "jsonl"
    assert format_for("r.ndjson", None) == "jsonl"
    assert format_for("r.txt", "CSV") == "csv"  # explicit format wins
    assert format_for("r.json", "jsonl") == "jsonl"
    assert format_for(None, None) is None
    assert format_for(None, "json") == "json"
    with pytest.raises(StamError, match="--format"):
        format_for("results.txt", None)
    with pytest.raises(StamError, match="choose one of csv, json, jsonl"):
        format_for("r.csv", "xml")


def test_format_given_without_output_writes_to_stdout(capsys):
    with open_writer(None, "jsonl", top_k=1) as writer:
        writer.write(ok("a.mp4", "x"))
    assert [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()] == ["a.mp4"]


def test_table_writer():
    console = Console(file=StringIO(), width=200)
    with open_writer(None, None, top_k=TOP_K, console=console) as writer:
        writer.write(ok("videos/a.mp4", "riding a bike", "skateboarding", "surfing"))
        writer.write(error_record("videos/[red]bad.mp4", "cannot decode video"))
        writer.write(ok("line\nbreak.mp4", "only one"))
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["path", "status", "top-1", "score", "other", "labels"]
    assert "videos/a.mp4" in lines[1] and "riding a bike" in lines[1] and "0.712" in lines[1]
    assert "skateboarding 0.20" in lines[1] and "surfing 0.00" in lines[1]
    assert "videos/[red]bad.mp4" in lines[2] and "error" in lines[2] and "cannot decode video" in lines[2]
    assert "line\\nbreak.mp4" in lines[3] and "only one" in lines[3]
    # columns are aligned
    assert len({line.index(word) for line, word in zip(lines[1:], ("ok", "error", "ok"))}) == 1
    assert not any(line.lstrip().startswith(("{", "[")) for line in lines)
    assert writer.counts == {"ok": 2, "error": 1, "resumed": 0}


def test_table_writer_narrow_console_truncates_long_paths():
    console = Console(file=StringIO(), width=60)
    writer = open_writer(None, None, top_k=2, console=console)
    writer.write(ok("/very/long/folder/name/" * 5 + "clip.mp4", "jumping", "running"))
    row = console.file.getvalue().splitlines()[1]
    assert "…" in row and "clip.mp4" in row and "jumping" in row
    assert len(row) <= 60
