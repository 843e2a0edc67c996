"""What the file system can say about a video path before any decoder looks at it."""

from __future__ import annotations

import os

from ..errors import VideoError

__all__ = ["one_line", "check_file"]


def one_line(path) -> str:
    """``path`` as text for a one-line message (newlines escaped)."""
    return os.fsdecode(path).replace("\n", "\\n").replace("\r", "\\r")


def check_file(path) -> None:
    """Raise VideoError for problems the file system can explain (before a decoder guesses)."""
    name = one_line(path)
    if os.path.isdir(path):
        raise VideoError(f"cannot read video {name}: it is a directory, not a file")
    if os.path.exists(path) and not os.path.isfile(path):
        raise VideoError(f"cannot read video {name}: not a regular file")
    try:
        with open(path, "rb") as fh:
            empty = fh.read(1) == b""
    except FileNotFoundError:
        raise VideoError(f"cannot read video {name}: no such file") from None
    except PermissionError:
        raise VideoError(f"cannot read video {name}: permission denied") from None
    except OSError as exc:
        raise VideoError(f"cannot read video {name}: {exc.strerror or exc}") from None
    if empty:
        raise VideoError(f"cannot read video {name}: the file is empty (0 bytes)")
