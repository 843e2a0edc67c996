"""Video embeddings for ``stam embed``: the temporal class token of each video, optionally per frame.

``embed(paths, model, output="emb.npy")`` decodes the videos with the same decode-ahead threads and
batches as ``stam predict`` (:meth:`Predictor.batches`), runs the model once per batch
(:meth:`Predictor.embeddings`: the video embedding and the frame embeddings from one pass) and
writes row ``i`` of the output for ``paths[i]``:

* ``emb.npy``: float32 ``(N, D)``; with ``per_frame`` also ``emb.frames.npy``, float32 ``(N, F, D)``.
* ``emb.safetensors``: tensor ``embeddings`` ``(N, D)`` and, with ``per_frame``, ``frame_embeddings``
  ``(N, F, D)``; metadata ``model``, ``frames`` and ``index`` (the index file's name).
* ``emb.csv`` (the index, beside either): ``row,path,status,error,model,frames,duration_s,fps``;
  its line ``i`` describes row ``i`` once the run is complete.

Rows of videos that failed (or were not reached) are NaN; their index line says ``error`` and why
(or is missing). Crash safety: the ``.npy`` files are preallocated (``N`` is known up front, all
NaN) and memory-mapped; after each batch its rows are flushed to disk *before* its index lines are
appended and ``fsync``-ed, so an ``ok`` line always has its row on disk. A ``.safetensors`` file
cannot grow in place, so the run works in hidden ``.npy`` files beside it (``.emb.safetensors.*.npy``)
and writes the ``.safetensors`` at the end, also on Ctrl-C or an error, to a temporary name that is
then renamed over the output; the work files are removed after that. At the end of every run the
index is rewritten (atomically) in row order. ``resume=True`` keeps the ``ok`` rows (checked against
the paths and the model), retries the failed ones and computes the rest; after a hard kill the work
files, when present, are newer than the ``.safetensors`` and are used.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
from numpy.lib.format import open_memmap

from .distributed import Distributed
from .engine import Predictor, VideoItem, make_predictor
from .errors import StamError, UsageError
from .jobs import EmbedJob, PredictOptions
from .model import STAM
from .runner import RunSummary, VideoResult, run_loop
from .writers import csv_cell, csv_line, error_record, make_record

SUFFIXES = (".npy", ".safetensors")
INDEX_COLUMNS = ("row", "path", "status", "error", "model", "frames", "duration_s", "fps")
_ENC = ("utf-8", "surrogateescape")


def index_path(output: Union[str, Path]) -> Path:
    """The index CSV of ``output``: ``emb.npy`` -> ``emb.csv``."""
    return Path(output).with_suffix(".csv")


def frame_embeddings_path(output: Union[str, Path]) -> Path:
    """Where the frame embeddings of a ``.npy`` output go: ``emb.npy`` -> ``emb.frames.npy``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.frames.npy")


def check_output(output: Union[str, Path]) -> Path:
    """``output`` as a Path; a usage error unless it ends in ``.npy`` or ``.safetensors``."""
    path = Path(output)
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"cannot tell the embedding format of '{output}': use a .npy or .safetensors file")
    return path


# --------------------------------------------------------------------------- the index CSV

def _index_line(record: dict) -> bytes:
    return csv_line([csv_cell(record.get(name)) for name in INDEX_COLUMNS]).encode(*_ENC)


def read_index(path: Union[str, Path]) -> dict[int, dict]:
    """Row -> record of an index CSV (the last line per row wins; a last line cut short is ignored)."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig", "surrogateescape")
    except OSError as err:
        raise StamError(f"cannot read {path}: {err.strerror or err}") from None
    lines = list(csv.reader(io.StringIO(text, newline="")))
    if not lines:
        return {}
    if tuple(lines[0]) != INDEX_COLUMNS:
        raise StamError(f"{path} is not a stamcli embedding index (expected columns {','.join(INDEX_COLUMNS)})")
    records: dict[int, dict] = {}
    for n, line in enumerate(lines[1:], 2):
        last = n == len(lines)
        try:
            if len(line) != len(INDEX_COLUMNS) or (last and not text.endswith("\n")):
                raise ValueError("incomplete line")
            record = dict(zip(INDEX_COLUMNS, line))
            record["row"] = int(record["row"])
            record["error"] = record["error"] or None
            record["frames"] = int(record["frames"]) if record["frames"] else None
            for name in ("duration_s", "fps"):
                record[name] = float(record[name]) if record[name] else None
        except ValueError:
            if last:
                break  # cut short by a hard kill
            raise StamError(f"{path}: line {n} is malformed") from None
        records[record["row"]] = record
    return records


# --------------------------------------------------------------------------- storage

class EmbeddingStore:
    """The output arrays (``N`` rows, NaN until computed) and the index, written batch by batch."""

    def __init__(self, output: Optional[Union[str, Path]], paths: Sequence[str], *, dim: int, num_frames: int,
                 per_frame: bool, model: str, resume: bool = False):
        self.paths, self.per_frame, self.model, self.num_frames = list(paths), per_frame, model, num_frames
        self.output = None if output is None else check_output(output)
        self.index = None if self.output is None else index_path(self.output)
        self.records: dict[int, dict] = {}
        shape, frame_shape = (len(self.paths), dim), (len(self.paths), num_frames, dim)
        if self.output is None:
            self.embeddings = np.full(shape, np.nan, np.float32)
            self.frame_embeddings = np.full(frame_shape, np.nan, np.float32) if per_frame else None
            return
        self._safetensors = self.output.suffix.lower() == ".safetensors"
        if self._safetensors:
            work = lambda name: self.output.with_name(f".{self.output.name}.{name}.npy")  # noqa: E731
            self._emb_file, self._frame_embeddings_file = work("embeddings"), work("frame_embeddings")
        else:
            self._emb_file, self._frame_embeddings_file = self.output, frame_embeddings_path(self.output)
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                self._resume(shape, frame_shape)
            else:
                self._fresh(shape, frame_shape)
            self._write_index()
            self._index = open(self.index, "ab")
        except OSError as err:
            raise StamError(f"cannot write embeddings to {self.output}: {err.strerror or err}") from None

    @property
    def done(self) -> set[int]:
        """Rows already embedded (kept by ``resume``)."""
        return {row for row, record in self.records.items() if record["status"] == "ok"}

    def _fresh(self, shape, frame_shape) -> None:
        self.embeddings = _nan_memmap(self._emb_file, shape)
        self.frame_embeddings = _nan_memmap(self._frame_embeddings_file, frame_shape) if self.per_frame else None
        if not self.per_frame:
            self._frame_embeddings_file.unlink(missing_ok=True)  # a stale file of an earlier --per-frame run

    def _resume(self, shape, frame_shape) -> None:
        records = read_index(self.index) if self.index.exists() else {}
        records = {row: record for row, record in records.items() if record["status"] == "ok"}
        if records and self._safetensors and not self._emb_file.exists() and self.output.exists():
            self._unpack_safetensors()  # no work files left by a hard kill: start from the finished file
        if not records or not self._emb_file.exists():
            return self._fresh(shape, frame_shape)
        for row, record in records.items():
            if row >= len(self.paths) or record["path"] != self.paths[row]:
                found = self.paths[row] if row < len(self.paths) else "no video"
                raise UsageError(f"{self.index} has {record['path']} at row {row} but the inputs have {found} there: "
                                 "resume needs the same inputs (or drop --resume)")
            if record["model"] != self.model:
                raise UsageError(f"{self.output} was made with model {record['model']}, not {self.model}: "
                                 "resume with the same model (or drop --resume)")
        if self._frame_embeddings_file.exists() != self.per_frame:
            made = "with" if self._frame_embeddings_file.exists() else "without"
            raise UsageError(f"{self.output} was made {made} --per-frame: resume it the same way, or drop --resume")
        self.embeddings = _open_memmap(self._emb_file, shape, self.output)
        self.frame_embeddings = _open_memmap(self._frame_embeddings_file, frame_shape, self.output) if self.per_frame else None
        self.records = records
        self._clear_unrecorded()  # rows a hard kill left half-done are not trusted

    def _clear_unrecorded(self) -> None:
        """Rows without an ``ok`` record go back to NaN: a hard kill, or a Ctrl-C landing between a
        batch's rows and its records, may have left them written."""
        todo = np.ones(len(self.paths), bool)
        todo[list(self.done)] = False
        for array in (self.embeddings, self.frame_embeddings):
            if array is not None and todo.any():
                array[todo] = np.nan
                if isinstance(array, np.memmap):
                    array.flush()

    def _unpack_safetensors(self) -> None:
        """A finished .safetensors being resumed: its tensors become the work files again."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(self.output)
        except (SafetensorError, OSError, ValueError) as err:
            raise StamError(f"cannot read {self.output}: {err}") from None
        for name, target in (("embeddings", self._emb_file), ("frame_embeddings", self._frame_embeddings_file)):
            if name in tensors:
                array = open_memmap(target, "w+", np.float32, tensors[name].shape)
                array[:] = tensors[name]
                array.flush()
                del array

    def put(self, rows: Sequence[int], records: Sequence[dict], embeddings: Optional[np.ndarray],
            frame_embeddings: Optional[np.ndarray]) -> None:
        """Store a batch: ``records[i]`` describes ``rows[i]``; the arrays hold the ``ok`` ones, in order."""
        ok = [row for row, record in zip(rows, records) if record["status"] == "ok"]
        failed = [row for row, record in zip(rows, records) if record["status"] != "ok"]
        for array, values in ((self.embeddings, embeddings), (self.frame_embeddings, frame_embeddings)):
            if array is None:
                continue
            if ok:
                array[ok] = values
            if failed:
                array[failed] = np.nan
            if isinstance(array, np.memmap):
                array.flush()  # the rows reach the file before the index says they are done
        for record in records:
            self.records[record["row"]] = record
        if self.index is not None:
            try:
                self._index.write(b"".join(_index_line(record) for record in records))
                self._index.flush()
                os.fsync(self._index.fileno())
            except OSError as err:
                raise StamError(f"cannot write {self.index}: {err.strerror or err}") from None

    def _write_index(self) -> None:
        """The index with the known records in row order, replaced atomically."""
        tmp = self.index.with_name(f".{self.index.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(",".join(INDEX_COLUMNS).encode() + b"\r\n")
            handle.write(b"".join(_index_line(self.records[row]) for row in sorted(self.records)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.index)

    def close(self) -> None:
        """Finish the files: rows without a record cleared, the index in row order, the
        .safetensors written."""
        self._clear_unrecorded()
        if self.output is None:
            return
        try:
            self._index.close()
            self._write_index()
            if self._safetensors:
                self._pack_safetensors()
        except OSError as err:
            raise StamError(f"cannot write embeddings to {self.output}: {err.strerror or err}") from None

    def _pack_safetensors(self) -> None:
        from safetensors.numpy import save_file

        tensors = {"embeddings": np.ascontiguousarray(self.embeddings)}
        if self.frame_embeddings is not None:
            tensors["frame_embeddings"] = np.ascontiguousarray(self.frame_embeddings)
        metadata = {"model": self.model, "frames": str(self.num_frames), "index": self.index.name}
        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, self.output)
        self.embeddings = self.frame_embeddings = None  # release the maps before removing their files
        self._emb_file.unlink(missing_ok=True)
        self._frame_embeddings_file.unlink(missing_ok=True)


def _nan_memmap(path: Path, shape) -> np.memmap:
    array = open_memmap(path, "w+", np.float32, shape)
    array[:] = np.nan
    array.flush()
    return array


def _open_memmap(path: Path, shape, output) -> np.memmap:
    try:
        array = open_memmap(path, "r+")
    except ValueError as err:
        raise StamError(f"cannot resume {output}: {path} is not a readable .npy file ({err})") from None
    if array.shape != tuple(shape) or array.dtype != np.float32:
        raise UsageError(f"cannot resume {output}: it holds {array.dtype} {tuple(array.shape)}, this run makes "
                         f"float32 {tuple(shape)} (other inputs, model or --frames?); drop --resume")
    return array


# --------------------------------------------------------------------------- running

@dataclass
class EmbeddingResult(RunSummary):
    """What :func:`embed` did. ``embeddings``/``frame_embeddings`` are the arrays when no output file
    was given (``None`` otherwise: read them with :func:`load_embeddings`)."""

    records: list[dict] = field(default_factory=list)  # the index, in row order
    embeddings: Optional[np.ndarray] = None
    frame_embeddings: Optional[np.ndarray] = None


def _record(item: VideoItem, model: str) -> dict:
    """The record of a decoded (or unreadable) video, without predictions."""
    if item.error is not None:
        return error_record(item.path, item.error, model=model)
    return make_record(item.path, frames=item.frame_count, model=model, duration_s=item.duration_s, fps=item.fps)


class EmbeddingSource:
    """The video embedding and frame embeddings of each video from a :class:`~stamcli.engine.Predictor`
    (or a :class:`~stamcli.ray_engine.RayPredictor`), one batch per forward pass (:meth:`Predictor.embeddings`)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def results(self, videos: Sequence[str]) -> Iterator[list[VideoResult]]:
        index, model = 0, self.predictor.model.name
        for batch, computed in self.predictor.compute_batches(videos, self.predictor.embeddings):
            video_embeddings, frame_embeddings = computed or (None, None)
            results, ok = [], 0
            for item in batch:
                result = VideoResult(index, _record(item, model))
                if item.error is None:
                    result.embedding, result.frame_embeddings = video_embeddings[ok].numpy(), frame_embeddings[ok].numpy()
                    ok += 1
                results.append(result)
                index += 1
            yield results


class EmbeddingSink:
    """Stores each batch in an :class:`EmbeddingStore`: the result for video ``i`` of the run goes to
    row ``rows[i]``; closing the sink finishes the store's files."""

    def __init__(self, store: EmbeddingStore, rows: Sequence[int]):
        self.store, self.rows = store, rows

    def write(self, results: Sequence[VideoResult]) -> None:
        rows = [self.rows[result.index] for result in results]
        records = [{"row": row, **{name: result.record.get(name) for name in INDEX_COLUMNS[1:]}}
                   for row, result in zip(rows, results)]
        ok = [result for result in results if result.record["status"] == "ok"]
        embeddings = np.stack([result.embedding for result in ok]) if ok else None
        frame_embeddings = np.stack([result.frame_embeddings for result in ok]) if ok and self.store.per_frame else None
        self.store.put(rows, records, embeddings, frame_embeddings)

    def __enter__(self) -> "EmbeddingSink":
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()


def embed(
    paths: Sequence[Union[str, os.PathLike]],
    model: STAM,
    options: Optional[PredictOptions] = None,
    *,
    output: Union[None, str, Path] = None,
    per_frame: bool = False,
    resume: bool = False,
    on_start: Optional[Callable[[int], None]] = None,
    on_record: Optional[Callable[[dict], None]] = None,
) -> EmbeddingResult:
    """Embed the videos ``paths`` (row ``i`` for ``paths[i]``) into ``output`` (``.npy`` or ``.safetensors``,
    plus the index CSV), or into arrays returned in memory when ``output`` is None (see the module docstring).
    ``on_start(total)`` and ``on_record(record)`` drive a progress display (:func:`stamcli.runner.run_loop`).
    ``options.engine="ray"`` computes them on a Ray cluster (:mod:`stamcli.ray_engine`), with the same results.

    >>> result = embed(["a.mp4", "b.mp4"], stamcli.load_model("stam_16"))
    >>> result.embeddings.shape   # (2, 768)
    """
    predictor = make_predictor(model, options)
    paths = [os.fspath(path) for path in paths]
    store = EmbeddingStore(output, paths, dim=model.embed_dim, num_frames=predictor.num_frames, per_frame=per_frame,
                           model=model.name, resume=resume)
    todo = [row for row in range(len(paths)) if row not in store.done]
    summary = run_loop(EmbeddingSource(predictor), [paths[row] for row in todo], EmbeddingSink(store, todo),
                       skipped=len(paths) - len(todo), output=None if output is None else str(output),
                       on_start=on_start, on_record=on_record)
    in_memory = output is None
    return EmbeddingResult(
        **vars(summary), records=[store.records[row] for row in sorted(store.records)],
        embeddings=store.embeddings if in_memory else None,
        frame_embeddings=store.frame_embeddings if in_memory else None,
    )


@dataclass
class Embeddings:
    """An embedding file read back: ``embeddings`` (N, D), ``frame_embeddings`` (N, F, D) or None, and
    ``records``, the index rows (``records[i]["path"]`` is the video of row ``i`` once the run is complete)."""

    embeddings: np.ndarray
    frame_embeddings: Optional[np.ndarray]
    records: list[dict]

    @property
    def paths(self) -> list[str]:
        return [record["path"] for record in self.records]


def load_embeddings(output: Union[str, Path]) -> Embeddings:
    """Read what ``stam embed --output OUTPUT`` wrote (``.npy`` files are memory-mapped, read-only)."""
    output = check_output(output)
    if not output.exists():
        raise StamError(f"{output} does not exist")
    records = read_index(index_path(output))
    records = [records[row] for row in sorted(records)]
    if output.suffix.lower() == ".npy":
        per_frame = frame_embeddings_path(output)
        return Embeddings(np.load(output, mmap_mode="r"),
                          np.load(per_frame, mmap_mode="r") if per_frame.exists() else None, records)
    from safetensors.numpy import load_file

    tensors = load_file(output)
    return Embeddings(tensors["embeddings"], tensors.get("frame_embeddings"), records)


def run_embedding(
    job: EmbedJob,
    *,
    on_start: Optional[Callable[[int], None]] = None,
    on_record: Optional[Callable[[dict], None]] = None,
) -> EmbeddingResult:
    """Run ``job``: collect the videos (and take ``--shard``'s share), load the model, :func:`embed`."""
    if Distributed.from_env().active:
        raise UsageError("stam embed does not run under torchrun: start one process per --shard I/N, "
                         "each with its own --output")
    check_output(job.output)
    options = job.options.resolve()  # checked once, before a model is loaded or downloaded
    videos = job.videos()
    return embed(videos, job.load_model(), options, output=job.output, per_frame=job.per_frame,
                 resume=job.resume, on_start=on_start, on_record=on_record)
