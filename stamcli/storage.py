"""Videos and results in object storage (``s3://``, ``gs://``, ``az://``) or behind ``http(s)://`` URLs.

Inputs
    :func:`object_kind`, :func:`glob_objects` and :func:`list_prefix` say which objects a URL
    stands for; :mod:`stamcli.inputs` turns them into the sorted list of videos, as for a local
    folder. A video is read by the task that decodes it: :func:`local_input` (or
    :func:`read_input`) streams it to a temporary file, in chunks, and removes that file
    afterwards (also on an error or Ctrl-C); the record's ``path`` stays the URL.

Downloads are capped at :data:`DEFAULT_MAX_DOWNLOAD_BYTES` (env ``STAM_MAX_DOWNLOAD_BYTES``: a byte
count such as ``500M`` or ``40G``, ``0`` for no cap), checked before the transfer when the size is
known and while streaming otherwise, so a huge object cannot fill the temporary folder
(``TMPDIR``). Failures (no such object, access denied, an unreachable endpoint, over the cap) are
one-line :class:`~stamcli.errors.StamError` s, which the engine turns into error records.

Outputs
    :func:`upload` and :func:`download` copy a whole results file; :func:`staging_path` is the
    local file a results URL is written to before it is uploaded (see :mod:`stamcli.writers`).

Credentials, endpoints and regions come from each cloud's standard configuration: for S3 the
``AWS_*`` environment variables and profiles (``AWS_ENDPOINT_URL`` for S3-compatible stores such
as MinIO or Ceph), for GCS the Google application default credentials, for Azure the
``AZURE_STORAGE_*`` variables. The fsspec backends are optional extras (``stamcli[s3]``,
``[gcs]``, ``[azure]``); without one, a URL of its kind is a one-line error naming the install
command. Everything here is a plain function of its arguments and the environment, so it works
the same in a decode thread, a subprocess or a Ray task.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, TypeVar
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit
from urllib.request import Request, urlopen

from .errors import StamError, UsageError, require_extra

__all__ = ["DEFAULT_MAX_DOWNLOAD_BYTES", "is_url", "url_scheme", "require_backend", "filesystem", "reason",
           "object_kind", "glob_objects", "list_prefix", "local_copy", "local_input", "read_input",
           "max_download_bytes", "abort_downloads", "upload", "download", "exists", "staging_path"]

#: scheme -> (fsspec backend module, stamcli extra)
OBJECT_STORES = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
}
WEB = ("http", "https")
DEFAULT_MAX_DOWNLOAD_BYTES = 20 << 30  #: 20 GiB
MAX_DOWNLOAD_ENV = "STAM_MAX_DOWNLOAD_BYTES"
STAGING_ENV = "STAM_STAGING_DIR"
CHUNK_SIZE = 8 << 20  # bytes per read while streaming an object to disk
HTTP_TIMEOUT_S = 60.0

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:/ stays a path
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
T = TypeVar("T")

# Downloads compare this with its value when they started, so abort_downloads() stops those
# running in this process (a Ctrl-C must not wait for a 10 GB transfer) and no later one.
_aborts = 0
_aborts_lock = threading.Lock()


# --------------------------------------------------------------------------- URLs


def url_scheme(path) -> Optional[str]:
    """The lower-case scheme of a URL (``"s3"``), or None for a local path."""
    match = _SCHEME.match(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None
    return match.group(1).lower() if match else None


def is_url(path) -> bool:
    """Whether ``path`` is a URL stamcli reads (``s3://``, ``gs://``, ``az://``, ``http(s)://``...).

    Any other ``scheme://`` is a :class:`UsageError`, so that ``ftp://host/a.mp4`` is not taken for
    a local file name."""
    scheme = url_scheme(path)
    if scheme is None:
        return False
    if scheme not in OBJECT_STORES and scheme not in WEB:
        raise UsageError(f"unsupported URL {path}: stamcli reads s3://, gs://, az:// and http(s):// URLs")
    return True


def require_backend(url: str, doing: str = "reading") -> None:
    """A one-line error naming the install command when the fsspec backend of ``url`` is missing
    (no network, no credentials: cheap enough to check options before a run)."""
    scheme = url_scheme(url)
    if scheme not in OBJECT_STORES:
        raise UsageError(f"{url} is not an object-storage URL (s3://, gs://, az://)")
    module, extra = OBJECT_STORES[scheme]
    require_extra(module, extra, f"{doing} {scheme}:// URLs")


def filesystem(url: str):
    """The fsspec file system of an object-storage URL and the object's path in it (``bucket/key``).

    A missing backend (s3fs, gcsfs, adlfs) is a one-line error naming the install command."""
    require_backend(url)
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:  # a backend whose own dependencies are broken
        raise StamError(f"cannot open {url}: {_first_line(err)}") from None
    except ValueError as err:
        raise UsageError(f"invalid URL {url}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def reason(err: BaseException) -> str:
    """One line saying why an object-storage or HTTP request failed."""
    if isinstance(err, FileNotFoundError):
        text = _first_line(err)
        return "not found" if text in ("", "FileNotFoundError") or "/" in text else f"not found ({text})"
    if isinstance(err, PermissionError):
        return f"access denied ({_first_line(err)})" if str(err).strip() else "access denied"
    name = type(err).__name__
    if "Connect" in name or "Endpoint" in name or isinstance(err, (ConnectionError, TimeoutError)):
        return f"cannot reach the server: {_first_line(err)}"
    return _first_line(err)


# --------------------------------------------------------------------------- listing
# The I/O only: which objects there are. What to keep and in which order is stamcli.inputs' job.


def _listing_error(url: str, err: BaseException) -> StamError:
    if isinstance(err, StamError):
        return err
    return StamError(f"cannot list {url}: {reason(err)}")


def object_kind(url: str) -> Optional[str]:
    """``"file"`` for an object, ``"directory"`` for a prefix with objects under it (or a bucket),
    None when there is neither. ``http(s)://`` URLs are always files."""
    if url_scheme(url) in WEB:
        return "file"
    fs, path = filesystem(url)
    try:
        return fs.info(path.rstrip("/")).get("type", "file")
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - every backend raises its own kinds
        raise _listing_error(url, err) from None


def glob_objects(url: str) -> list[tuple[str, str]]:
    """``(url, kind)`` of what an object-storage glob (``s3://b/*/clip?.mp4``) matches, unsorted."""
    scheme = url_scheme(url)
    fs, path = filesystem(url)
    try:
        return [(f"{scheme}://{name}", info.get("type", "file"))
                for name, info in fs.glob(path, detail=True).items()]
    except Exception as err:  # noqa: BLE001
        raise _listing_error(url, err) from None


def list_prefix(url: str, *, recursive: bool = True) -> list[tuple[str, str]]:
    """``(url, name relative to the prefix)`` of every object under a prefix, unsorted (folder
    markers, the zero-byte ``dir/`` objects some tools make, left out); only its direct children
    unless ``recursive``."""
    scheme = url_scheme(url)
    fs, path = filesystem(url)
    base = path.rstrip("/")
    try:
        listing = fs.find(base, maxdepth=None if recursive else 1, withdirs=False, detail=True)
    except Exception as err:  # noqa: BLE001
        raise _listing_error(url, err) from None
    return [(f"{scheme}://{name}", name[len(base) + 1:]) for name, info in listing.items()
            if info.get("type") != "directory" and not name.endswith("/") and name.startswith(base + "/")]


# --------------------------------------------------------------------------- reading one video


def parse_size(text: str) -> int:
    """``"500M"`` -> 524288000; plain digits are bytes; K, M, G, T (optionally ``iB``/``B``) are powers of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def max_download_bytes() -> Optional[int]:
    """The download cap: ``STAM_MAX_DOWNLOAD_BYTES`` when set (``0``: none), else 20 GiB."""
    text = os.environ.get(MAX_DOWNLOAD_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_DOWNLOAD_BYTES
    try:
        value = parse_size(text)
    except ValueError:
        raise UsageError(f"invalid {MAX_DOWNLOAD_ENV}={text!r}: use a size such as 500M or 40G (0: no cap)") from None
    return value or None


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def abort_downloads() -> None:
    """Stop every download running in this process (each fails with a one-line error, its temporary
    file removed); downloads started later run as usual. The engine calls this when a run stops."""
    global _aborts
    with _aborts_lock:
        _aborts += 1


def _suffix(url: str) -> str:
    """The object's extension (``.mp4``), so that the decoder sees the same file name kind."""
    name = unquote(urlsplit(url).path).rsplit("/", 1)[-1]
    ext = os.path.splitext(name)[1]
    return ext if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", ext) else ""


@contextmanager
def local_copy(url: str, *, max_bytes: Optional[int] = -1, tmp_dir: Optional[str] = None) -> Iterator[str]:
    """Stream the object at ``url`` to a temporary file and yield its path; the file is removed
    afterwards, also on an error or Ctrl-C. ``max_bytes``: the cap (default: :func:`max_download_bytes`;
    None: no cap). ``tmp_dir``: where (default: ``TMPDIR``)."""
    limit = max_download_bytes() if max_bytes == -1 else max_bytes
    fd, tmp = tempfile.mkstemp(prefix="stam-dl-", suffix=_suffix(url), dir=tmp_dir)
    os.close(fd)
    try:
        with open(tmp, "wb") as out:
            if url_scheme(url) in WEB:
                _http_to(url, out, limit)
            else:
                _object_to(url, out, limit)
        yield tmp
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _check_size(url: str, size: Optional[int], limit: Optional[int], folder: str) -> None:
    if size is None:
        return
    if limit is not None and size > limit:
        raise StamError(f"{url} is {human_size(size)}, over the download limit of {human_size(limit)} "
                        f"(set {MAX_DOWNLOAD_ENV} to raise it)")
    free = shutil.disk_usage(folder).free
    if size > free:
        raise StamError(f"{url} is {human_size(size)}, but the temporary folder {folder} has {human_size(free)} "
                        "free (set TMPDIR to a bigger disk)")


def _copy(url: str, read: Callable[[int], bytes], out: BinaryIO, size: Optional[int], limit: Optional[int]) -> None:
    """Copy chunks until ``read`` returns nothing; the cap and :func:`abort_downloads` checked per chunk."""
    started = _aborts
    copied = 0
    while chunk := read(CHUNK_SIZE):
        copied += len(chunk)
        if limit is not None and copied > limit:
            raise StamError(f"{url} is over the download limit of {human_size(limit)} "
                            f"(set {MAX_DOWNLOAD_ENV} to raise it)")
        if _aborts != started:
            raise StamError(f"download of {url} stopped: the run was interrupted")
        out.write(chunk)
    if size is not None and copied != size:
        raise StamError(f"download of {url} stopped after {copied} of {size} bytes (connection closed)")


def _object_to(url: str, out: BinaryIO, limit: Optional[int]) -> None:
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
        if info.get("type") == "directory":
            raise StamError(f"{url} is a folder (prefix), not a video")
        size = info.get("size")
        _check_size(url, size, limit, os.path.dirname(out.name))
        with fs.open(path, "rb", block_size=CHUNK_SIZE) as src:
            _copy(url, src.read, out, size, limit)
    except StamError:
        raise
    except Exception as err:  # noqa: BLE001 - every backend raises its own kinds
        raise StamError(f"cannot read {url}: {reason(err)}") from None


def _http_to(url: str, out: BinaryIO, limit: Optional[int]) -> None:
    from . import __version__

    host = urlsplit(url).netloc
    try:
        response = urlopen(Request(url, headers={"User-Agent": f"stamcli/{__version__}"}), timeout=HTTP_TIMEOUT_S)
    except HTTPError as err:
        err.close()
        what = {401: "access denied", 403: "access denied", 404: "not found", 410: "not found"}.get(err.code)
        raise StamError(f"cannot read {url}: {what + ' ' if what else ''}(HTTP {err.code} {err.reason})") from None
    except URLError as err:
        why = _first_line(err.reason) if isinstance(err.reason, BaseException) else str(err.reason)
        raise StamError(f"cannot read {url}: cannot reach {host}: {why}") from None
    except (OSError, http.client.HTTPException) as err:
        raise StamError(f"cannot read {url}: cannot reach {host}: {_first_line(err)}") from None
    except ValueError as err:
        raise UsageError(f"invalid URL {url}: {_first_line(err)}") from None
    with response:
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        _check_size(url, size, limit, os.path.dirname(out.name))
        try:
            _copy(url, response.read1, out, size, limit)
        except (OSError, http.client.HTTPException) as err:
            raise StamError(f"download of {url} stopped: {_first_line(err)}") from None


@contextmanager
def local_input(path: str) -> Iterator[str]:
    """A local file to read ``path`` from: ``path`` itself, or for a URL a temporary copy
    (:func:`local_copy`) that lives as long as the ``with`` block. A :class:`StamError` raised in the
    block names the URL, not the temporary file."""
    if not is_url(path):
        yield path
        return
    with local_copy(path) as local:
        try:
            yield local
        except Exception as err:
            renamed = _naming(err, local, path)
            if renamed is err:
                raise
            raise renamed from None


def _naming(err: Exception, local: str, url: str) -> Exception:
    """``err`` with ``url`` where its message names the temporary copy ``local`` (same type when possible)."""
    text = str(err)
    if local not in text:
        return err
    try:
        return type(err)(text.replace(local, url))
    except Exception:  # noqa: BLE001 - a type that wants other arguments
        return StamError(f"{type(err).__name__}: {text.replace(local, url)}")


def read_input(path: str, read: Callable[[str], T]) -> T:
    """``read(local_path)`` for a path or URL (through :func:`local_input`); a result with a ``path``
    attribute (a :class:`~stamcli.decode.Clip`) gets the URL back. Use it wherever a video is
    decoded: ``read_input(url, lambda p: read_clip(p, 16))``. Picklable callables make it usable in
    another process or a Ray task."""
    with local_input(path) as local:
        result = read(local)
    if local != path and getattr(result, "path", None) == local:
        result.path = path
    return result


# --------------------------------------------------------------------------- results files


def exists(url: str) -> bool:
    """Whether the object at ``url`` exists."""
    fs, path = filesystem(url)
    try:
        return fs.exists(path)
    except Exception as err:  # noqa: BLE001
        raise StamError(f"cannot reach {url}: {reason(err)}") from None


def download(url: str, dest: Path) -> None:
    """Copy the object at ``url`` to ``dest`` (whole; replaced atomically)."""
    fs, path = filesystem(url)
    tmp = dest.with_name(f".{dest.name}.download")
    try:
        fs.get_file(path, str(tmp))
        os.replace(tmp, dest)
    except Exception as err:  # noqa: BLE001
        raise StamError(f"cannot download {url}: {reason(err)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def upload(local: Path, url: str) -> None:
    """Copy ``local`` to the object at ``url``. Object stores make an upload visible only once it is
    complete, so readers see the old object or the new one, never a part."""
    if url_scheme(url) not in OBJECT_STORES:
        raise UsageError(f"cannot write results to {url}: use s3://, gs:// or az://")
    fs, path = filesystem(url)
    try:
        fs.put_file(str(local), path)
    except Exception as err:  # noqa: BLE001
        raise StamError(f"cannot upload results to {url}: {reason(err)}") from None


def staging_path(url: str) -> Path:
    """The local file a results URL is written to before each upload: under ``STAM_STAGING_DIR``
    (default: ``<TMPDIR>/stamcli-staging``), in a folder named by a hash of the URL, so that a run on
    the same machine finds it again (``--resume`` after a hard kill)."""
    root = Path(os.environ.get(STAGING_ENV) or Path(tempfile.gettempdir()) / "stamcli-staging")
    name = unquote(urlsplit(url).path).rsplit("/", 1)[-1] or "results"
    folder = root / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
