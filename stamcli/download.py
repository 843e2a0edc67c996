"""Resumable, verified HTTP downloads (stdlib ``urllib`` plus a ``tqdm`` progress bar).

A download streams into ``<dest>.part``. An interrupted transfer is resumed with an HTTP
``Range`` request, both by the automatic retries and by running the same command again.
Only a file that passed every check (size, sha256 when known, the per-member CRC32 of zip
archives such as PyTorch checkpoints) is moved to ``dest``, atomically, next to a record
``<dest>.download.json`` ({"url", "sha256", "size", "downloaded_at"}) that
:func:`verify_download` later uses to notice a file that changed on disk.

Every failure is a :class:`~stamcli.errors.DownloadError` with a one-line message; ``dest``
itself is never left behind by a failed or interrupted download.

One process at a time downloads a file: it holds a lock on ``<dest>.lock`` (released by the
operating system if the process dies), and another process that wants the same file, such as the
other ranks of a ``torchrun`` job, waits for it and then uses the finished file.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, NoReturn, Optional
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

from .errors import CheckpointError, DownloadError
from .fileutils import write_atomic

CHUNK_SIZE = 1 << 20
USER_AGENT = "stamcli"
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(\d+|\*)")
_CONTENT_RANGE_TOTAL = re.compile(r"/(\d+)\s*$")
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError)


class _TransientError(DownloadError):
    """A failure worth retrying: network trouble, an early close, a 5xx answer."""


@dataclass(frozen=True)
class _Job:
    """What one download is about; shared by its attempts."""

    url: str
    part: Path
    name: str
    timeout: float
    expected_size: Optional[int]


# ----------------------------------------------------------------------------- public helpers


def part_path(dest: str | Path) -> Path:
    """Where the bytes of ``dest`` collect while it downloads (``stam_16.pth.part``)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def lock_path(dest: str | Path) -> Path:
    """The file a process locks while it downloads ``dest`` (``stam_16.pth.lock``)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".lock")


def record_path(path: str | Path) -> Path:
    """The download record kept beside ``path`` (``stam_16.pth.download.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".download.json")


def read_record(path: str | Path) -> Optional[dict]:
    """The download record of ``path``, or None when it has none."""
    record = record_path(path)
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read download record {record}: {err}; delete it") from None
    if not isinstance(data, dict) or not {"sha256", "size"} <= data.keys():
        raise CheckpointError(f"download record {record} is not valid; delete it")
    return data


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's contents."""
    return _hash_file(hashlib.sha256(), Path(path)).hexdigest()


def verify_download(path: str | Path, *, redownload_hint: str) -> bool:
    """Check ``path`` against its download record.

    Returns True when it matches, False when there is no record. A file whose size or
    sha256 differs from the record raises :class:`CheckpointError` naming ``redownload_hint``
    (a command such as ``stam download-weights stam_16 --force``) as the fix.
    """
    path = Path(path)
    record = read_record(path)
    if record is None:
        return False
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; download it with: {redownload_hint}")
    size = path.stat().st_size
    if size != record["size"]:
        _changed(path, f"{size} bytes != recorded {record['size']}", redownload_hint)
    digest = sha256_file(path)
    if digest != record["sha256"]:
        _changed(path, f"sha256 {digest[:12]}… != recorded {record['sha256'][:12]}…", redownload_hint)
    return True


def _changed(path: Path, difference: str, hint: str) -> NoReturn:
    raise CheckpointError(
        f"{path} has changed since it was downloaded ({difference}); re-download it with: {hint}"
    )


# ----------------------------------------------------------------------------- download_file


def download_file(
    url: str,
    dest: str | Path,
    *,
    expected_sha256: Optional[str] = None,
    expected_size: Optional[int] = None,
    force: bool = False,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
    desc: Optional[str] = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` is returned as is (no network) unless ``force``; a forced download
    starts from scratch and replaces the old file and record only once the new file checks
    out. A leftover ``.part`` is resumed. Network trouble is retried up to ``retries`` more
    times, ``retry_wait`` seconds apart, each retry resuming where the last one stopped.
    ``timeout`` bounds each connect and each read, not the whole transfer. While another process
    downloads ``dest``, this one waits for it (see the module docstring).
    """
    dest = Path(dest)
    if dest.exists() and not force:
        return dest
    job = _Job(url, part_path(dest), dest.name, timeout, expected_size)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(lock_path(dest), f"another process is downloading {dest.name}; waiting for it" if progress
                        else None):
            if dest.exists() and not force:  # the other process finished it
                return dest
            if force:
                job.part.unlink(missing_ok=True)
            bar = tqdm(
                total=expected_size, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc or dest.name, disable=not progress, file=sys.stderr,
            )
            with bar:
                digest, size = _fetch_with_retries(job, bar, retries, retry_wait)
            _check_complete_part(job, digest, size, expected_sha256)
            _install(job.part, dest, url, digest, size)
    except OSError as err:  # network errors are DownloadErrors by now: this is the local disk
        raise DownloadError(f"cannot save {dest.name} in {dest.parent}: {_reason(err)}") from None
    return dest


def _fetch_with_retries(job: _Job, bar: tqdm, retries: int, retry_wait: float) -> tuple[str, int]:
    """Run :func:`_fetch` until it completes or the retries are used up."""
    attempt = 0
    while True:
        try:
            return _fetch(job, bar)
        except _TransientError as err:
            if attempt >= retries:
                raise DownloadError(str(err)) from None
        attempt += 1
        time.sleep(retry_wait)


def _fetch(job: _Job, bar: tqdm) -> tuple[str, int]:
    """One request: bring ``job.part`` up to date; return its (sha256, size)."""
    offset = job.part.stat().st_size if job.part.exists() else 0
    response = _open(job, offset)
    with response:
        if response.status == 416:
            return _range_not_satisfiable(job, bar, response, offset)
        offset, total = _resume_point(job, response, offset)
        _check_announced_size(job, total)
        if total is None:
            total = job.expected_size
        hasher = _hash_file(hashlib.sha256(), job.part) if offset else hashlib.sha256()
        bar.reset(total=total)
        bar.update(offset)
        size = _stream(job, response, hasher, offset, total, bar)
    if total is not None and size < total:
        raise _TransientError(_stopped(job, size, total, "server closed the connection"))
    return hasher.hexdigest(), size


def _open(job: _Job, offset: int):
    """Send the GET (with ``Range`` when resuming); a 416 answer is returned, not raised."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    host = urlsplit(job.url).netloc or job.url
    try:
        return urlopen(Request(job.url, headers=headers), timeout=job.timeout)
    except HTTPError as err:
        if err.code == 416 and offset:
            return err
        err.close()
        kind = _TransientError if err.code in _RETRY_STATUSES else DownloadError
        raise kind(f"HTTP {err.code} {err.reason} for {job.url}") from None
    except URLError as err:
        raise _TransientError(f"cannot reach {host}: {_reason(err.reason)}") from None
    except (OSError, http.client.HTTPException) as err:  # raised while awaiting the answer
        raise _TransientError(f"cannot reach {host}: {_reason(err)}") from None
    except ValueError as err:
        raise DownloadError(f"invalid URL {job.url!r}: {err}") from None


def _resume_point(job: _Job, response, offset: int) -> tuple[int, Optional[int]]:
    """Where this response's body starts in the file, and the file's total size if known.

    A 206 that resumes exactly at ``offset`` appends to the part; any other success starts
    over from zero (the server ignored the range). A 206 at another offset is unusable.
    """
    length = _int_or_none(response.headers.get("Content-Length"))
    if response.status != 206:
        return 0, length
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        job.part.unlink(missing_ok=True)
        raise _TransientError(f"server answered the resume request for {job.name} with the wrong range")
    total = match.group(2)
    if total != "*":
        return offset, int(total)
    return offset, None if length is None else offset + length


def _range_not_satisfiable(job: _Job, bar: tqdm, response, offset: int) -> tuple[str, int]:
    """The server has nothing after ``offset``: the part is complete, or it is junk to discard."""
    total = (
        _int_or_none(_match_group(_CONTENT_RANGE_TOTAL, response.headers.get("Content-Range", "")))
        or job.expected_size
        or _remote_size(job)
    )
    if total != offset:
        job.part.unlink()
        return _fetch(job, bar)
    bar.reset(total=total)
    bar.update(offset)
    return sha256_file(job.part), offset


def _remote_size(job: _Job) -> Optional[int]:
    """The Content-Length of a HEAD request, or None when the server does not tell."""
    request = Request(job.url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urlopen(request, timeout=job.timeout) as response:
            return _int_or_none(response.headers.get("Content-Length"))
    except (OSError, http.client.HTTPException, ValueError):  # URLError is an OSError
        return None


def _check_announced_size(job: _Job, total: Optional[int]) -> None:
    """Fail before transferring anything when the server's size contradicts ``expected_size``."""
    if total is not None and job.expected_size is not None and total != job.expected_size:
        raise DownloadError(
            f"size mismatch for {job.name}: expected {job.expected_size} bytes, the server reports {total}"
        )


def _stream(job: _Job, response, hasher, offset: int, total: Optional[int], bar: tqdm) -> int:
    """Append the response body to the part (truncating it first when ``offset`` is 0)."""
    size = offset
    with open(job.part, "ab" if offset else "wb") as out:
        while True:
            try:
                chunk = response.read1(CHUNK_SIZE)  # read() would lose what it got before a timeout
            except (OSError, http.client.HTTPException) as err:
                raise _TransientError(_stopped(job, size, total, _reason(err))) from None
            if not chunk:
                break
            out.write(chunk)
            hasher.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return size


def _stopped(job: _Job, size: int, total: Optional[int], why: str) -> str:
    of_total = f" of {total}" if total is not None else ""
    return (
        f"download of {job.name} stopped after {size}{of_total} bytes ({why}); "
        "run the same command again to resume"
    )


# ----------------------------------------------------------------------------- integrity, install


def _check_complete_part(job: _Job, digest: str, size: int, expected_sha256: Optional[str]) -> None:
    """Size, sha256 and zip CRC checks of a finished part; a failing part is deleted."""
    if job.expected_size is not None and size != job.expected_size:
        _corrupt(job, f"size mismatch for {job.name}: expected {job.expected_size} bytes, got {size}")
    if expected_sha256 and digest != expected_sha256.lower():
        _corrupt(job, f"sha256 mismatch for {job.name}: expected {expected_sha256.lower()}, got {digest}")
    problem = _zip_problem(job.part)
    if problem:
        _corrupt(job, f"{job.name} is corrupt ({problem})")


def _zip_problem(path: Path) -> Optional[str]:
    """Why a zip archive (e.g. a PyTorch checkpoint) fails its CRC test; None if fine or not a zip."""
    with open(path, "rb") as f:
        if f.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except _ZIP_ERRORS as err:
        return f"not a valid zip archive: {_reason(err)}"
    return f"CRC check failed for {bad_member}" if bad_member else None


def _corrupt(job: _Job, message: str) -> NoReturn:
    job.part.unlink(missing_ok=True)
    raise DownloadError(f"{message}; the partial file was deleted, run the command again")


def _install(part: Path, dest: Path, url: str, digest: str, size: int) -> None:
    """Move the verified part to ``dest`` atomically, then record what was downloaded.

    The old record goes first, so a crash in between never pairs a new file with an old record.
    """
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    record = record_path(dest)
    record.unlink(missing_ok=True)
    os.replace(part, dest)
    downloaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = json.dumps({"url": url, "sha256": digest, "size": size, "downloaded_at": downloaded_at}, indent=2)
    write_atomic(record, (text + "\n").encode("utf-8"), what="the download record ")


# ----------------------------------------------------------------------------- small helpers


@contextmanager
def _exclusive(path: Path, waiting: Optional[str]) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created for it and removed afterwards), waiting
    while another process holds it (``waiting`` is printed then, unless None). The operating
    system releases the lock of a process that dies."""
    announced = False
    while True:
        handle = open(path, "a+b")
        try:
            if not _lock(handle, block=False):
                if waiting and not announced:
                    print(waiting, file=sys.stderr, flush=True)
                    announced = True
                _lock(handle, block=True)
            if _same_file(handle, path):
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # the holder removed the file before this process got its lock: lock the new one
    try:
        yield
    finally:
        try:  # while still locked, so a process waiting on this file sees it is gone and starts over
            path.unlink()
        except OSError:  # Windows cannot remove an open file
            pass
        _unlock(handle)
        handle.close()


def _same_file(handle, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``handle``."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt

    def _lock(handle, block: bool) -> bool:
        handle.seek(0)
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not block:
                    return False
                time.sleep(0.2)

    def _unlock(handle) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(handle, block: bool) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False

    def _unlock(handle) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _hash_file(hasher, path: Path):
    """Feed a file's contents to ``hasher`` and return it."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher


def _int_or_none(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _match_group(pattern: re.Pattern, text: str) -> Optional[str]:
    match = pattern.search(text)
    return match.group(1) if match else None


def _reason(err: object) -> str:
    """An exception (or urllib reason) as text, never empty."""
    return str(err) or type(err).__name__
