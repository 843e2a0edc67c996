"""Atomic file writes: readers never see half a file, an interrupted write leaves no trace.

* :func:`write_atomic` - bytes to a file in one step, with a one-line :class:`StamError` when the
  file cannot be written (reports, charts, subtitles, contact sheets, small JSON records).
* :func:`atomic_path` - a temporary path beside the target for writers that need a file name
  (``torch.save``, ``safetensors.save_file``, exporters); renamed over the target when the
  ``with`` block succeeds, removed when it fails.

Both write beside the target (``.<name>.<pid>.tmp``, so the rename stays on one file system and
two processes never share a temporary file) and create missing parent folders.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import StamError

__all__ = ["write_atomic", "atomic_path", "temporary_name"]


def temporary_name(path: str | os.PathLike) -> Path:
    """The hidden temporary file beside ``path`` that an atomic write goes through."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally the temporary file is
    renamed over ``path`` (``os.replace``), otherwise it is removed and the error goes on.

    >>> with atomic_path("model.safetensors") as tmp:   # doctest: +SKIP
    ...     save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the block or the rename failed


def write_atomic(path: str | os.PathLike, data: bytes, what: str = "") -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; returns
    the path. :class:`StamError` when it cannot be written: ``cannot write {what}{path}: reason``
    (e.g. ``what="preview "``)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(data)
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise StamError(f"cannot write {what}{path}: {reason}") from None
    return path
