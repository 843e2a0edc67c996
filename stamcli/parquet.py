"""Parquet results (``--format parquet`` or an ``--output`` ending in ``.parquet``), with pyarrow.

The file holds the same records as JSONL, one row each, in one fixed schema (:func:`schema`) so that
the files of different runs, shards and models concatenate (``SELECT * FROM 'runs/*.parquet'``):

=============  ==========================================  ==========================================
column         type                                        present in
=============  ==========================================  ==========================================
path           string (not null)                           every record
status         string (not null): ``ok`` or ``error``      every record
error          string                                      error records
predictions    list<struct<label: string, index: int64,    every record (empty for errors), best first
               score: double>>
frames         int64                                       ok records
model          string                                      every record
duration_s     double                                      ok records
fps            double                                      ok records
type           string: ``window``, ``event`` or ``video``  timeline runs (``--window``)
window         int64                                       timeline window records
start_s        double                                      timeline records
end_s          double                                      timeline records
windows        int64                                       timeline video summaries
coverage       list<struct<label: string, index: int64,    timeline video summaries: seconds as top-1
               seconds: double>>
shot           int64                                       window records of ``--window shots``
shots          int64                                       video summaries of ``--window shots``
event          int64                                       event records (``--events``)
label, score   string, double                              event records
event_windows  list<int64>                                 event records: their ``windows`` (read back
                                                           as ``windows``)
events         int64                                       video summaries with ``--events``
clips, crops   int64                                       test-time views (``--clips``/``--crops``)
extra          string: a JSON object                       any other key a record has
=============  ==========================================  ==========================================

:func:`read_parquet_records` gives back the records exactly as JSONL would (absent keys stay absent).

Crash safety. Every record is first appended to a journal beside the output,
``<output>.journal.jsonl``, flushed and fsync-ed (as the JSONL writer does), then buffered; every
:data:`ROWS_PER_GROUP` records or :data:`SECONDS_PER_GROUP` seconds the buffer becomes a row group
of a hidden temporary Parquet file next to the output. ``close()`` (also on an exception or
Ctrl-C) writes the last row group and the footer, renames the temporary file over the output
atomically, then deletes the journal: readers see the old file or the whole new one, never a part.
After a hard kill (SIGKILL, power loss) the output is the previous run's file (or missing) and the
journal holds every finished record: while a journal exists it is the truth, so
:func:`read_parquet_records` and ``--resume`` read it, and the next run writes a complete file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from glob import escape as glob_escape
from pathlib import Path
from typing import Union

from .errors import StamError, require_extra
from .writers import JsonlWriter, ResultWriter, _jsonable, _kept_ok, read_records

__all__ = ["schema", "ROWS_PER_GROUP", "SECONDS_PER_GROUP", "ParquetWriter", "journal_path", "read_parquet_records",
           "records_to_table", "table_to_records"]

ROWS_PER_GROUP = 10_000  #: records per row group (at most)
SECONDS_PER_GROUP = 300.0  #: a row group is written at least this often while records arrive
_OPTIONAL = ("type", "window", "start_s", "end_s", "windows", "coverage", "clips", "crops", "shot", "shots", "event",
             "label", "score", "event_windows", "events")  # read back when set
_TIMELINE = ("window", "start_s", "end_s")  # ... or when "type" is: a timeline video's error record has them null
log = logging.getLogger(__name__)


def _pyarrow():
    pa = require_extra("pyarrow", "parquet", "Parquet output")
    import pyarrow.parquet as pq

    return pa, pq


def schema():
    """The fixed ``pyarrow.Schema`` of results files (see the module docstring)."""
    pa, _ = _pyarrow()
    label = [("label", pa.string()), ("index", pa.int64())]
    list_of = lambda *fields: pa.list_(pa.field("element", pa.struct([*label, *fields])))  # noqa: E731 - as read back
    return pa.schema(
        [pa.field("path", pa.string(), nullable=False), pa.field("status", pa.string(), nullable=False),
         ("error", pa.string()), ("predictions", list_of(("score", pa.float64()))),
         ("frames", pa.int64()), ("model", pa.string()), ("duration_s", pa.float64()), ("fps", pa.float64()),
         ("type", pa.string()), ("window", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64()),
         ("windows", pa.int64()), ("coverage", list_of(("seconds", pa.float64()))),
         ("clips", pa.int64()), ("crops", pa.int64()),
         ("shot", pa.int64()), ("shots", pa.int64()), ("event", pa.int64()), ("label", pa.string()),
         ("score", pa.float64()), ("event_windows", pa.list_(pa.field("element", pa.int64()))),
         ("events", pa.int64()),
         ("extra", pa.string())],
        metadata={"stamcli.results": "1"},
    )


def journal_path(path: Union[str, Path]) -> Path:
    """The journal beside a Parquet output: ``tags.parquet`` -> ``tags.parquet.journal.jsonl``."""
    path = Path(path)
    return path.with_name(path.name + ".journal.jsonl")


def _row(record: dict, columns: list[str]) -> dict:
    if record.get("type") == "event":  # an event's ``windows`` is a list: its own column
        record = {("event_windows" if key == "windows" else key): value for key, value in record.items()}
    row = {name: record.get(name) for name in columns[:-1]}
    row["predictions"] = [{"label": p.get("label"), "index": p.get("index"), "score": p.get("score")}
                          for p in record.get("predictions") or []]
    extra = {key: value for key, value in record.items() if key not in row}
    row["extra"] = json.dumps(extra, ensure_ascii=False, default=_jsonable) if extra else None
    return row


def records_to_table(records: list[dict]):
    """The records as a ``pyarrow.Table`` of :func:`schema`."""
    pa, _ = _pyarrow()
    fixed = schema()
    try:
        return pa.Table.from_pylist([_row(r, fixed.names) for r in records], schema=fixed)
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise StamError(f"cannot store a result record in Parquet: {err}") from None


def table_to_records(table) -> list[dict]:
    """The records of a table read from a results file, keyed as JSONL records are."""
    records = []
    for row in table.to_pylist():
        extra = row.pop("extra", None)
        timeline = row.get("type") is not None
        for name in _OPTIONAL:
            if row.get(name) is None and not (timeline and name in _TIMELINE):
                row.pop(name, None)
        if "event_windows" in row:
            row["windows"] = row.pop("event_windows")
        if extra:
            row.update(json.loads(extra))
        records.append(row)
    return records


def read_parquet_records(path: Union[str, Path]) -> list[dict]:
    """The records of a Parquet results file, from its journal when one is left (see the module docstring)."""
    journal = journal_path(path)
    if journal.is_file():
        records = read_records(journal, "jsonl")
        log.info("%s: reading the %d records of its journal %s (its last run did not finish)", path, len(records),
                 journal)
        return records
    pa, pq = _pyarrow()
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise StamError(f"cannot read {path}: no such file") from None
    except (OSError, pa.ArrowException) as err:
        raise StamError(f"{path} is not a readable Parquet results file ({str(err).splitlines()[0]})") from None
    if "path" not in table.column_names or "status" not in table.column_names:
        raise StamError(f"{path} is not a stamcli results file (no path/status columns)")
    return table_to_records(table)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files that hard-killed runs (processes no longer alive) left beside ``path``."""
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        return True
    return True


class ParquetWriter(ResultWriter):
    """Writes records to a Parquet file in row groups, with a journal for hard kills (module docstring)."""

    format = "parquet"

    def __init__(self, path, top_k: int, *, resume: bool = False, rows_per_group: int = ROWS_PER_GROUP,
                 seconds_per_group: float = SECONDS_PER_GROUP):
        super().__init__(top_k)
        pa, pq = _pyarrow()
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self.rows_per_group, self.seconds_per_group = rows_per_group, seconds_per_group
        records = read_parquet_records(self.path) if resume and (self.path.exists() or self.journal.exists()) else []
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        _remove_stale_temporaries(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if records and not self.journal.exists():  # the journal holds every kept record before any new one
                with JsonlWriter(self.journal.with_suffix(".tmp"), top_k, sync=True) as seed:
                    for record in records:
                        seed.write(record)
                os.replace(self.journal.with_suffix(".tmp"), self.journal)
            self._journal = JsonlWriter(self.journal, top_k, resume=resume)
            self._file = pq.ParquetWriter(self._tmp, schema())
        except (OSError, pa.ArrowException) as err:
            raise StamError(f"cannot write results to {self.path}: {getattr(err, 'strerror', None) or err}") from None
        kept = _kept_ok(records)
        self.done_paths = self._journal.done_paths
        self.counts["resumed"] = len(kept)
        for start in range(0, len(kept), rows_per_group):  # the kept records first, a row group at a time
            self._rows = kept[start:start + rows_per_group]
            self._write_group()
        self._rows: list[dict] = []
        self._flushed_at = time.monotonic()

    def _write(self, record: dict) -> None:
        self._journal.write(record)  # on disk before write() returns: what a hard kill cannot lose
        self._rows.append(record)
        if len(self._rows) >= self.rows_per_group or time.monotonic() - self._flushed_at >= self.seconds_per_group:
            self._write_group()

    def _write_group(self) -> None:
        """The buffered records as a row group of the temporary file."""
        if self._rows:
            pa, _ = _pyarrow()
            try:
                self._file.write_table(records_to_table(self._rows))
            except (OSError, pa.ArrowException) as err:
                raise StamError(f"cannot write results to {self._tmp}: {err}") from None
            self._rows = []
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        """The last row group and the footer; the output replaced atomically; the journal deleted."""
        if self.closed:
            return
        super().close()
        pa, _ = _pyarrow()
        try:
            self._write_group()
            self._file.close()
            with open(self._tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
        except (OSError, pa.ArrowException) as err:
            self._tmp.unlink(missing_ok=True)
            raise StamError(f"cannot write results to {self.path}: {err}; its records are kept in {self.journal}, "
                            "which --resume reads") from None
        finally:
            self._journal.close()
        self.journal.unlink(missing_ok=True)

