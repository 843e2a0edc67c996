"""Result records and the writers that save them as they arrive.

A record is a plain dict, keys in this order::

    {"path": str, "status": "ok" | "error", "error": str | None,
     "predictions": [{"label": str, "index": int, "score": float}, ...],
     "frames": int | None, "model": str, "duration_s": float | None, "fps": float | None}

Extra keys are kept by the JSON and JSONL writers (CSV has fixed columns). Floats are
written with ``repr`` so they read back as the exact same value.

Writers are crash safe: each record is written as a whole, flushed and ``fsync``-ed before
``write`` returns (a video takes far longer to process than an fsync, and ``--resume``
needs every record that was reported as done to be on disk). CSV and JSONL files only
ever grow by complete lines; a JSON file is a top-level array that ``close()`` (also run
by the context manager on an exception or Ctrl-C) terminates, and that
:func:`read_records` can still read when a hard kill left it unterminated or cut a record.
Files are UTF-8 (file names that are not valid UTF-8 round-trip via ``surrogateescape``).

CSV columns: ``path,status,error,label_1,score_1,...,label_K,score_K,frames,model,
duration_s,fps``, then any extra ``columns`` the writer was given (timelines add
``type,window,start_s,end_s``). CSV has no class-index column, so predictions read back from a CSV
file have ``"index": None``; empty cells read back as ``None``.

Parquet files (:mod:`stamcli.parquet`) hold the same records in a fixed schema, with a journal that
keeps them through a hard kill. An ``--output`` in object storage (``s3://bucket/tags.parquet``,
JSONL or Parquet) is written to a local staged file and uploaded on close (:class:`RemoteWriter`).

Timeline runs write several records per video: ``"type": "window"`` records followed by the
video's own ``"type": "video"`` record (its summary, or its error). On ``--resume`` a video counts
as done only once its ``ok`` video record is written; window records of unfinished videos are
dropped, so a video cut short is redone without duplicates.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .errors import StamError, UsageError, require_extra
from .storage import WEB, download, exists, is_url, require_backend, staging_path, upload, url_scheme

FORMATS = ("csv", "json", "jsonl", "parquet")
REMOTE_FORMATS = ("jsonl", "parquet")  # what an object-storage --output can be
_SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_ENC = ("utf-8", "surrogateescape")
log = logging.getLogger(__name__)


def make_record(path, *, status: str = "ok", error: Optional[str] = None, predictions: Iterable[dict] = (),
                frames: Optional[int] = None, model: str = "", duration_s: Optional[float] = None,
                fps: Optional[float] = None, **extra: Any) -> dict:
    """Build a record with the standard key order and plain Python types."""
    preds = [{"label": str(p["label"]), "index": None if p.get("index") is None else int(p["index"]),
              "score": float(p["score"])} for p in predictions]
    rec = {"path": str(path), "status": status, "error": None if error is None else str(error),
           "predictions": preds, "frames": None if frames is None else int(frames), "model": str(model),
           "duration_s": None if duration_s is None else float(duration_s),
           "fps": None if fps is None else float(fps)}
    rec.update(extra)
    return rec


def error_record(path, error: Union[str, BaseException], *, model: str = "", **extra: Any) -> dict:
    return make_record(path, status="error", error=str(error), model=model, **extra)


def format_for(output: Optional[str], fmt: Optional[str]) -> Optional[str]:
    """The output format: ``fmt`` when given, else from ``output``'s extension; ``None`` = table.
    Parquet needs a file, and an object-storage ``output`` must be JSONL or Parquet."""
    name = _format_name(output, fmt)
    to_stdout = output is None or str(output) == "-"
    if name == "parquet":
        if to_stdout:
            raise UsageError("Parquet cannot be written to stdout: give --output FILE.parquet")
        require_extra("pyarrow", "parquet", "Parquet output")  # before any video is read
    if not to_stdout and is_url(str(output)):
        if url_scheme(str(output)) in WEB:
            raise UsageError(f"--output {output}: results can go to a file or to s3://, gs:// or az://, not http(s)")
        if name not in REMOTE_FORMATS:
            raise UsageError(f"--output {output}: results in object storage must be jsonl or parquet, not {name}")
        require_backend(str(output), "writing results to")
    return name


def _format_name(output: Optional[str], fmt: Optional[str]) -> Optional[str]:
    if fmt:
        name = fmt.strip().lower().lstrip(".")
        name = "jsonl" if name == "ndjson" else name
        if name not in FORMATS:
            raise UsageError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
        return name
    if output is None or str(output) == "-":
        return None
    suffix = Path(output).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UsageError(f"cannot tell the format of '{output}' from its extension: "
                        f"add --format {'|'.join(FORMATS)} or use .csv, .json, .jsonl or .parquet")
    return _SUFFIXES[suffix]


def read_records(path: Union[str, Path], fmt: Optional[str] = None) -> list[dict]:
    """Read a results file, tolerating a last record cut short by a hard kill."""
    fmt = format_for(str(path), fmt)
    if fmt == "parquet":
        from .parquet import read_parquet_records  # pyarrow: an optional extra, imported when needed

        return read_parquet_records(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig", "surrogateescape")
    except OSError as err:
        raise StamError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return {"csv": _read_csv, "json": _read_json, "jsonl": _read_jsonl}[fmt](text)
    except (ValueError, KeyError, TypeError, csv.Error) as err:
        raise StamError(f"{path} is not a readable {fmt.upper()} results file ({err})") from None


def _read_jsonl(text: str) -> list[dict]:
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    out = []
    for i, (n, line) in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "path" not in rec:
                raise ValueError("not a record")
        except ValueError:
            if i == len(lines) - 1:
                break  # the last line was cut short
            raise ValueError(f"line {n} is not a JSON record") from None
        out.append(rec)
    return out


def _read_json(text: str) -> list[dict]:
    """The records of a JSON array, also one never closed or cut mid-record by a hard kill."""
    dec, out = json.JSONDecoder(), []
    i = len(text) - len(text.lstrip())
    if i == len(text):
        return out
    if text[i] != "[":
        raise ValueError("expected '['")
    i += 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return out
        try:
            rec, i = dec.raw_decode(text, i)
        except ValueError:
            if "\n" in text[i:].rstrip():  # more lines follow: damaged, not cut short
                raise ValueError(f"bad record at character {i}") from None
            return out
        if not isinstance(rec, dict) or "path" not in rec:
            raise ValueError("expected an array of records")
        out.append(rec)


def _read_csv(text: str) -> list[dict]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return []
    header, rows = rows[0], rows[1:]
    if "path" not in header or "status" not in header:
        raise ValueError("no path/status columns")
    col = {name: i for i, name in enumerate(header)}
    k = sum(1 for name in header if name.startswith("label_"))
    out = []
    for n, row in enumerate(rows):
        last = n == len(rows) - 1
        try:
            if len(row) != len(header) or (last and not text.endswith("\n")):
                raise ValueError("incomplete row")
            out.append(_csv_record(row, col, k))
        except ValueError:
            if last:
                break  # the last row was cut short
            raise ValueError(f"row {n + 2} is malformed") from None
    return out


def _csv_record(row: list[str], col: dict, k: int) -> dict:
    cell = lambda name: row[col[name]] if name in col else ""  # noqa: E731
    opt = lambda name, cast: cast(cell(name)) if cell(name) else None  # noqa: E731
    if cell("status") not in ("ok", "error"):
        raise ValueError("bad status")
    preds = [{"label": cell(f"label_{i}"), "index": None, "score": opt(f"score_{i}", float)}
             for i in range(1, k + 1) if cell(f"label_{i}") or cell(f"score_{i}")]
    rec = make_record(cell("path"), status=cell("status"), error=cell("error") or None, frames=opt("frames", int),
                      model=cell("model"), duration_s=opt("duration_s", float), fps=opt("fps", float))
    rec["predictions"] = preds
    known = set(rec) | {f"{p}_{i}" for p in ("label", "score") for i in range(1, k + 1)}
    rec.update({name: (_TYPED_COLUMNS[name](row[i]) if name in _TYPED_COLUMNS else row[i]) if row[i] else None
                for name, i in col.items() if name not in known})
    return rec


# extra CSV columns read back typed (``windows``, an event's window numbers, is written as a JSON list)
_TYPED_COLUMNS = {"window": int, "start_s": float, "end_s": float, "shot": int, "event": int, "windows": json.loads}

#: Record types that are part of a video's timeline and come before its ``"video"`` record.
PART_TYPES = ("window", "event")


def _kept_ok(records: list[dict]) -> list[dict]:
    """The records of videos done ``ok``, only the last time per path (in the order of those last times).

    A ``"type": "window"`` or ``"event"`` record belongs to the next video record of its path; those
    not followed by an ``ok`` video record (an error, or a run cut short) are dropped.
    """
    windows: dict[str, list[dict]] = {}
    kept: dict[str, list[dict]] = {}
    for rec in records:
        if rec.get("type") in PART_TYPES:
            windows.setdefault(rec["path"], []).append(rec)
            continue
        group = windows.pop(rec["path"], [])
        if rec.get("status") == "ok":
            kept.pop(rec["path"], None)
            kept[rec["path"]] = [*group, rec]
    return [rec for group in kept.values() for rec in group]


class ResultWriter:
    """Base of all writers: a context manager taking one record at a time."""

    format: Optional[str] = None

    def __init__(self, top_k: int):
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.top_k = top_k
        self.done_paths: set[str] = set()  # ok records kept on --resume: the caller skips them
        self.counts = {"ok": 0, "error": 0, "resumed": 0}
        self.closed = False

    def write(self, record: dict) -> None:
        if self.closed:
            raise ValueError("write to a closed ResultWriter")
        self._write(record)
        self.counts["ok" if record.get("status") == "ok" else "error"] += 1

    def _write(self, record: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class _FileWriter(ResultWriter):
    """Writes text made by ``_header``/``_format``/``_footer`` to a file or a stream."""

    def __init__(self, path, top_k: int, *, resume: bool = False, stream=None, sync: bool = True):
        super().__init__(top_k)
        self.path = None if path is None else Path(path)
        self._n = 0  # records in the file
        self._sync_each = sync and stream is None
        if stream is not None:
            self._fh = stream
            self._put(self._header())
            self._flush(False)
            return
        kept = _kept_ok(read_records(self.path, self.format)) if resume and self.path.is_file() else []
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(tmp if kept else self.path, "wb")
            self._put(self._header())
            if kept:  # rewrite the kept records atomically, then go on appending
                for rec in kept:
                    self._put(self._format(rec))
                    self._n += 1
                self._flush(True)
                self._fh.close()
                os.replace(tmp, self.path)
                self._fh = open(self.path, "ab")
            self._flush(True)
        except OSError as err:
            if kept and tmp.exists():
                tmp.unlink()
            raise StamError(f"cannot write results to {self.path}: {err.strerror or err}") from None
        self.done_paths = {rec["path"] for rec in kept}
        self.counts["resumed"] = len(kept)

    def _put(self, text: str) -> None:
        if not isinstance(self._fh, io.TextIOBase):
            self._fh.write(text.encode(*_ENC))
        elif hasattr(self._fh, "buffer"):  # stdout: bytes, after what was printed as text
            self._fh.flush()
            self._fh.buffer.write(text.encode(*_ENC))
        else:
            self._fh.write(text)

    def _flush(self, sync: bool) -> None:
        target = getattr(self._fh, "buffer", self._fh)
        target.flush()
        if sync and self.path is not None:
            os.fsync(target.fileno())

    def _write(self, record: dict) -> None:
        text = self._format(record)
        pos = self._fh.tell() if self.path is not None else None
        try:
            self._put(text)
            self._flush(self._sync_each)
        except BaseException as err:
            if pos is not None:  # never leave half a record behind (e.g. Ctrl-C mid-write)
                try:
                    if not isinstance(err, OSError) and self._whole_record_in_file(pos, text):
                        self._n += 1  # only its fsync was cut short (Ctrl-C): the record is kept
                    else:
                        self._fh.truncate(pos)
                        self._fh.seek(pos)
                except OSError:
                    pass
            if isinstance(err, OSError):
                raise StamError(f"cannot write results to {self.path}: {err.strerror or err}") from None
            raise
        self._n += 1

    def _whole_record_in_file(self, pos: int, text: str) -> bool:
        """Whether all of ``text``, written from ``pos`` on, already reached the file (not only its buffer)."""
        return os.fstat(self._fh.fileno()).st_size == pos + len(text.encode(*_ENC))

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        try:
            self._put(self._footer())
            self._flush(True)
        except OSError as err:
            raise StamError(f"cannot write results to {self.path}: {err.strerror or err}") from None
        finally:
            if self.path is not None:
                self._fh.close()

    def _header(self) -> str:
        return ""

    def _footer(self) -> str:
        return ""

    def _format(self, record: dict) -> str:
        raise NotImplementedError


def _jsonable(obj):
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=_jsonable)


class JsonlWriter(_FileWriter):
    format = "jsonl"

    def _format(self, record: dict) -> str:
        return _dumps(record) + "\n"


class JsonWriter(_FileWriter):
    format = "json"

    def _header(self) -> str:
        return "["

    def _format(self, record: dict) -> str:
        return ("\n  " if self._n == 0 else ",\n  ") + _dumps(record)

    def _footer(self) -> str:
        return "\n]\n" if self._n else "]\n"


def csv_cell(value) -> str:
    """A CSV cell: empty for None, floats at full precision (``repr``), numpy scalars as Python ones,
    lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    value = value.item() if hasattr(value, "item") else value
    return repr(value) if isinstance(value, float) else str(value)


def csv_line(cells: list) -> str:
    """One RFC 4180 CSV line (quoted where needed), ending in ``\\r\\n``."""
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_MINIMAL).writerow(cells)
    return buf.getvalue()


class CsvWriter(_FileWriter):
    format = "csv"

    def __init__(self, path, top_k: int, *, columns: Iterable[str] = (), **kwargs):
        self.columns = tuple(columns)  # extra columns after the standard ones, e.g. timelines' start_s
        super().__init__(path, top_k, **kwargs)

    def _header(self) -> str:
        pairs = [f"{kind}_{i}" for i in range(1, self.top_k + 1) for kind in ("label", "score")]
        return csv_line(["path", "status", "error", *pairs, "frames", "model", "duration_s", "fps", *self.columns])

    def _format(self, record: dict) -> str:
        preds = list(record.get("predictions") or [])[: self.top_k]
        pairs = []
        for i in range(self.top_k):
            pairs += [preds[i]["label"], csv_cell(preds[i]["score"])] if i < len(preds) else ["", ""]
        return csv_line([record["path"], record["status"], csv_cell(record.get("error")), *pairs,
                           *(csv_cell(record.get(k)) for k in ("frames", "model", "duration_s", "fps", *self.columns))])


_WRITERS = {"csv": CsvWriter, "json": JsonWriter, "jsonl": JsonlWriter}


class TableWriter(ResultWriter):
    """One aligned row per video on the console, printed as results arrive."""

    def __init__(self, top_k: int, console=None):
        super().__init__(top_k)
        if console is None:
            from rich.console import Console
            console = Console()
        self.console = console
        self._header_done = False

    def _write(self, record: dict) -> None:
        from rich.text import Text

        total = max(self.console.width, 60)
        wp = max(16, min(60, total * 2 // 5))  # path
        wl = max(12, min(30, (total - wp) // 3))  # top-1 label
        rest = total - wp - 6 - wl - 6 - 4  # other labels (status and score are 6 wide)
        if not self._header_done:
            self._header_done = True
            head = f"{_fit('path', wp)} {'status':6} {_fit('top-1', wl)} {'score':>6} other labels"
            self._print(Text(head, style="bold"))
        shown = str(record.get("path"))
        if record.get("type") == "window":  # a timeline window: where it is in the video
            shown += f" [{record['start_s']:.1f}-{record['end_s']:.1f}s]"
        elif record.get("type") == "event":
            shown += f" [event {record['start_s']:.1f}-{record['end_s']:.1f}s]"
        elif record.get("type") == "video" and record.get("status") == "ok":  # its summary: share of time
            shown += " [share of time]"
        line = Text(_fit(shown, wp, keep_end=True) + " ")
        preds = record.get("predictions") or []
        if record.get("status") == "ok":
            line.append(f"{'ok':6} ", style="green")
            top = preds[0] if preds else {"label": "-", "score": None}
            score = "" if top.get("score") is None else f"{top['score']:.3f}"
            line.append(f"{_fit(str(top['label']), wl)} {score:>6} ", style="bold")
            others = ", ".join(str(p["label"]) + ("" if p.get("score") is None else f" {p['score']:.2f}")
                               for p in preds[1:self.top_k])
            line.append(_fit(others, max(rest, 1), pad=False), style="dim")
        else:
            line.append(f"{'error':6} ", style="red")
            line.append(_fit(str(record.get("error") or "failed"), wl + 7 + max(rest, 0), pad=False), style="red")
        self._print(line)

    def _print(self, text) -> None:
        self.console.print(text, no_wrap=True, overflow="crop", highlight=False, soft_wrap=False)


def _fit(text: str, width: int, *, keep_end: bool = False, pad: bool = True) -> str:
    """``text`` shown in exactly ``width`` cells (``…`` where cut); control chars escaped."""
    from rich.cells import cell_len, set_cell_size

    text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
    if cell_len(text) > width:
        if keep_end:  # paths: the file name matters more than the folder
            end = ""
            for ch in reversed(text):
                if cell_len(end) + cell_len(ch) > width - 1:
                    break
                end = ch + end
            text = "…" + end
        else:
            text = set_cell_size(text, width - 1) + "…"
    return set_cell_size(text, width) if pad else text


def open_writer(output: Union[str, Path, None], fmt: Optional[str], *, top_k: int, resume: bool = False,
                console=None, columns: Iterable[str] = ()) -> ResultWriter:
    """The writer for ``--output``/``--format``: a file writer, a stream writer to stdout
    (format given, no output or ``-``), a :class:`RemoteWriter` (an object-storage URL) or a
    :class:`TableWriter` (neither given). ``columns``: extra CSV columns (JSON, JSONL and Parquet
    keep every key anyway)."""
    if output is not None and str(output) == "-":
        output = None
    fmt = format_for(None if output is None else str(output), fmt)
    if fmt is None:
        return TableWriter(top_k, console)
    if output is not None and is_url(str(output)):
        return RemoteWriter(str(output), fmt, top_k=top_k, resume=resume)
    if fmt == "parquet":
        from .parquet import ParquetWriter  # pyarrow: an optional extra, imported when needed

        return ParquetWriter(output, top_k, resume=resume)
    extra = {"columns": columns} if fmt == "csv" else {}
    if output is None:
        return _WRITERS[fmt](None, top_k, stream=sys.stdout, **extra)
    return _WRITERS[fmt](output, top_k, resume=resume, **extra)


class RemoteWriter(ResultWriter):
    """Results for an object-storage URL (JSONL or Parquet): written to a local staged file
    (:func:`~stamcli.storage.staging_path`) as usual and uploaded when the writer closes (also after
    Ctrl-C); object stores show an upload only once it is complete.

    A ``.pending`` marker beside the staged file says it holds results not uploaded yet (a run
    killed, or an upload that failed): ``--resume`` then goes on from the staged file; otherwise
    it first downloads the URL (when it exists). Without ``--resume`` the run starts afresh.
    """

    def __init__(self, url: str, fmt: str, *, top_k: int, resume: bool = False):
        super().__init__(top_k)
        self.url, self.staged = url, staging_path(url)
        self._pending = self.staged.with_name(self.staged.name + ".pending")
        if not (resume and self._pending.exists()):
            self.staged.unlink(missing_ok=True)
            if resume and exists(url):
                download(url, self.staged)
        self._pending.touch()
        self.inner = open_writer(self.staged, fmt, top_k=top_k, resume=resume)
        self.done_paths, self.counts = self.inner.done_paths, self.inner.counts

    def write(self, record: dict) -> None:
        self.inner.write(record)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.inner.close()
        try:
            upload(self.staged, self.url)
        except StamError as err:
            raise StamError(f"{err}; the results are kept in {self.staged}: run again with --resume to "
                            "upload them") from None
        self._pending.unlink(missing_ok=True)
