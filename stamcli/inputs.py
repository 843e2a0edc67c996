"""Turn the PATH arguments of ``stam predict`` into the list of videos to process.

A PATH may be

* a file: always kept, whatever its extension (the user named it);
* a folder: walked (recursively unless ``recursive=False``), keeping entries whose name
  has a video extension;
* a glob pattern (``videos/**/*.mp4``, ``*.avi``): expanded with ``glob(recursive=True)``
  and each match handled as if it had been given by name (this is what the shell would
  have done), so matched files are kept and matched folders are walked;
* ``@list.txt``: a UTF-8 text file with one path per line (blank lines and lines starting
  with ``#`` are ignored; relative lines are relative to the list file's folder); each
  line may be a file, a folder or a glob, but not another ``@list``. A file whose name
  really starts with ``@`` is taken as a file when it exists.

* a URL (``s3://bucket/videos/``, ``gs://...``, ``az://...``, ``https://host/clip.mp4``): an
  object-storage prefix (a trailing ``/``, a bucket, or a name with objects under it) is listed
  like a folder, a glob (``s3://bucket/*/clip?.mp4``) is expanded like a local one, and an object
  is kept as named; an ``http(s)`` URL is one video. Lines of an ``@list`` may be URLs too. The
  video is read when it is decoded (:mod:`stamcli.storage`) and its record's ``path`` is the URL.

Paths that do not exist are kept, so that they get a "file not found" record and the run
goes on; the caller reports them.

Order: arguments are expanded in the order given. Within a folder, entries (files and
folders in one list) are sorted in natural order (``clip2`` before ``clip10``, case
folded, ties broken by the exact name) and walked depth-first, so the output does not
depend on the file system. Glob matches are sorted the same way, component by component.
Duplicates (the same file reached twice, compared by resolved absolute path) are dropped,
keeping the first occurrence and the spelling the user gave for it.

Walking skips hidden entries (name starting with ``.``), follows symlinked folders and
visits each real folder at most once (by ``(st_dev, st_ino)``), which survives loops.
An entry named like a video is an input whatever it is, so a folder called ``x.mp4`` is
kept and later gets an "is a directory" record.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Iterator, Sequence, Union

from .errors import StamError, UsageError
from .storage import WEB, filesystem, glob_objects, is_url, list_prefix, object_kind, url_scheme

DEFAULT_EXTENSIONS = ("mp4", "avi", "mov", "mkv", "webm", "m4v", "mpg", "mpeg", "wmv", "flv", "3gp", "ts")

_GLOB_CHARS = re.compile(r"[*?[]")
_DIGITS = re.compile(r"(\d+)")
log = logging.getLogger(__name__)


def parse_extensions(text: str) -> tuple[str, ...]:
    """``"mp4,.AVI, mkv"`` -> ``("mp4", "avi", "mkv")`` (duplicates dropped, order kept)."""
    exts: list[str] = []
    for part in str(text).split(","):
        ext = part.strip().lstrip(".").strip().lower()
        if ext and ext not in exts:
            exts.append(ext)
    if not exts:
        raise UsageError(f"--ext needs at least one extension, e.g. --ext mp4,avi (got '{text}')")
    return tuple(exts)


def natural_key(name: str) -> tuple:
    """Sort key putting ``clip2`` before ``clip10``; deterministic for any two names."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def has_video_extension(name: str, extensions=DEFAULT_EXTENSIONS) -> bool:
    return _has_ext(name, frozenset(e.lower().lstrip(".") for e in extensions))


def _has_ext(name: str, exts: frozenset) -> bool:
    stem, dot, ext = name.rpartition(".")
    return bool(dot and stem) and ext.lower() in exts


def collect_videos(
    paths: Sequence[str], *, recursive: bool = True, extensions=DEFAULT_EXTENSIONS
) -> list[str]:
    """Expand PATH arguments into the videos to process (see the module docstring)."""
    exts = frozenset(e.lower().lstrip(".") for e in extensions)
    found: list[str] = []
    seen: set[str] = set()
    for arg in paths:
        arg = os.fspath(arg)
        if arg.startswith("@") and len(arg) > 1 and not os.path.lexists(arg):
            candidates = _read_list(arg[1:], recursive, exts)
        else:
            candidates = _expand(arg, recursive, exts)
        for path in candidates:
            key = path if is_url(path) else os.path.normcase(os.path.realpath(path))
            if key not in seen:
                seen.add(key)
                found.append(path)
    if not found:
        raise StamError(
            f"no videos found in: {', '.join(map(str, paths)) or '(nothing)'} "
            f"(extensions: {', '.join(extensions)})"
        )
    return found


def _read_list(list_file: str, recursive: bool, exts: frozenset) -> Iterator[str]:
    try:
        with open(list_file, encoding="utf-8-sig", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError as err:
        raise StamError(f"cannot read list file {list_file}: {err.strerror or err}") from None
    base = os.path.dirname(list_file)
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line if is_url(line) else os.path.expanduser(line)
        yield from _expand(line if is_url(line) or os.path.isabs(line) else os.path.join(base, line), recursive, exts)


def _expand(arg: str, recursive: bool, exts: frozenset) -> Iterator[str]:
    if is_url(arg):
        yield from _expand_url(arg, recursive, exts)
    elif os.path.isdir(arg):
        yield from _walk(arg, recursive, exts)
    elif os.path.lexists(arg):
        yield arg  # a file (or a broken link, a fifo...): named by the user, always kept
    elif _GLOB_CHARS.search(arg):
        matches = glob.glob(arg, recursive=True)
        if not matches:
            raise StamError(f"no files match '{arg}'")
        matches.sort(key=_path_key)
        for match in matches:
            name = os.path.basename(match.rstrip("/" + os.sep))
            if os.path.isdir(match) and not _has_ext(name, exts):
                yield from _walk(match, recursive, exts)
            else:
                yield match
    else:
        yield arg  # does not exist: kept so that it gets a "file not found" record


def _path_key(path: str) -> tuple:
    """Sort key of a path or URL: component by component, in natural order."""
    return tuple(natural_key(c) for c in re.split(r"[\\/]", path))


def _expand_url(url: str, recursive: bool, exts: frozenset) -> Iterator[str]:
    """A URL handled like a local path: a prefix like a folder, a glob like a glob, an object (or a
    missing one) as named. Names with a video extension are taken for objects without asking the
    store (a list of a million URLs makes no million requests)."""
    key = url[url.index("://") + 3:]
    name = key.rstrip("/").rpartition("/")[2]
    if url_scheme(url) in WEB:
        if not name or key.endswith("/"):
            raise UsageError(f"cannot list {url}: an http(s) URL names one video (put many in an @list file)")
        yield url
        return
    filesystem(url)  # a missing backend (s3fs...) stops the run here, not at every video
    if _GLOB_CHARS.search(key):
        matches = sorted(glob_objects(url), key=lambda m: _path_key(m[0].partition("://")[2]))
        if not matches:
            raise StamError(f"no objects match '{url}'")
        for match, kind in matches:
            if kind == "directory" and not _has_ext(match.rstrip("/").rpartition("/")[2], exts):
                yield from _list_url(match, recursive, exts)
            else:
                yield match
    elif key.endswith("/") or "/" not in key.strip("/"):  # a prefix, or a whole bucket
        yield from _list_url(url, recursive, exts)
    elif not _has_ext(name, exts) and _kind_or_none(url) == "directory":
        yield from _list_url(url, recursive, exts)
    else:
        yield url  # an object named by the user (kept whatever its extension), or a missing one


def _kind_or_none(url: str):
    """:func:`~stamcli.storage.object_kind`, or None when the store cannot say: the URL is then kept
    and its record tells why it could not be read."""
    try:
        return object_kind(url)
    except StamError as err:
        log.debug("cannot tell what %s is: %s", url, err)
        return None


def _list_url(prefix: str, recursive: bool, exts: frozenset) -> list[str]:
    """The video objects under a prefix, in the order :func:`_walk` gives a folder's files."""
    listed = [(url, relative.split("/")) for url, relative in list_prefix(prefix, recursive=recursive)]
    kept = [(url, parts) for url, parts in listed
            if not any(part.startswith(".") for part in parts) and _has_ext(parts[-1], exts)]
    kept.sort(key=lambda item: tuple(natural_key(part) for part in item[1]))
    return [url for url, _ in kept]


def _walk(top: str, recursive: bool, exts: frozenset) -> Iterator[str]:
    visited: set[tuple[int, int]] = set()

    def visit(folder: str, shown: str) -> Iterator[str]:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:
                return  # a symlink loop, or a folder already reached through another link
            visited.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: natural_key(e.name))
        except OSError as err:
            if folder == top:
                raise StamError(f"cannot read folder {top}: {err.strerror or err}") from None
            log.warning("skipping folder %s: %s", shown, err.strerror or err)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = entry.name if os.path.normpath(shown) == "." else os.path.join(shown, entry.name)
            if _has_ext(entry.name, exts):
                yield path  # named like a video: an input whatever it is
            elif recursive and _is_dir(entry):
                yield from visit(entry.path, path)

    yield from visit(top, top)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``: this process takes items 1, 5, 9, ..."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UsageError(f"invalid --shard '{text}': expected I/N with 0 <= I < N, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def shard(items: list, spec: Union[str, tuple[int, int]]) -> list:
    """Every N-th item starting at I, for ``spec`` ``"I/N"`` or ``(I, N)``."""
    i, n = parse_shard(spec if isinstance(spec, str) else "%s/%s" % tuple(spec))
    return list(items)[i::n]
