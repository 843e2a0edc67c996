"""Ctrl-C while a result writer writes a record: half a record is removed, a whole one is kept."""

from __future__ import annotations

import os

import pytest

from stamcli import writers
from stamcli.writers import make_record, open_writer, read_records


def _record(path: str) -> dict:
    return make_record(path, predictions=[{"label": "a", "index": 0, "score": 0.25}], frames=4, model="m")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_ctrl_c_during_the_fsync_of_a_whole_record_keeps_it(tmp_path, monkeypatch, fmt):
    out = tmp_path / f"tags.{fmt}"
    real_fsync, calls = os.fsync, []

    def interrupted_fsync(fd):
        calls.append(fd)
        real_fsync(fd)
        if len(calls) == 3:  # the header's, the first record's, then Ctrl-C in the second record's
            raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        with open_writer(out, fmt, top_k=1) as writer:
            writer.write(_record("a.mp4"))
            writer.write(_record("b.mp4"))
    # the second record was whole in the file when the signal came: a reader and --resume see it
    assert [r["path"] for r in read_records(out)] == ["a.mp4", "b.mp4"]


def test_ctrl_c_in_the_middle_of_a_record_removes_its_start(tmp_path, monkeypatch):
    out = tmp_path / "tags.csv"
    with open_writer(out, "csv", top_k=1) as writer:
        writer.write(_record("a.mp4"))
        real_put = writer._put

        def half_then_interrupt(text):
            real_put(text[: len(text) // 2])
            raise KeyboardInterrupt

        monkeypatch.setattr(writer, "_put", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            writer.write(_record("b.mp4"))
        monkeypatch.setattr(writer, "_put", real_put)
    assert [r["path"] for r in read_records(out)] == ["a.mp4"]
    assert out.read_text(encoding="utf-8").count("\n") == 2  # header and one record, nothing half-written
