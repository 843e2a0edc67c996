"""User-facing errors.

Everything a user can cause (a missing file, a bad checkpoint, a failed download, an
unreadable video) is raised as a :class:`StamError` whose message is written for them.
The CLI prints that message on one line and exits non-zero; tracebacks appear only with
``--debug``.
"""

from __future__ import annotations


class StamError(Exception):
    """An error the user can act on. ``str(err)`` is a complete, one-line explanation."""


class CheckpointError(StamError):
    """A checkpoint file is missing, unreadable, corrupt or does not fit the model."""


class DownloadError(StamError):
    """A download failed (network, HTTP status, early close, size or checksum mismatch)."""


class VideoError(StamError):
    """A video cannot be opened or decoded."""


class UsageError(StamError):
    """An option or argument has an invalid value (the CLI exits with 2, like other usage errors)."""


def require_extra(module: str, extra: str, purpose: str):
    """Import and return the optional ``module``; when it is missing, a one-line :class:`StamError`
    naming the install command: ``reading s3:// URLs needs s3fs: pip install "stamcli[s3]"``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise StamError(f'{purpose} needs {module}: pip install "stamcli[{extra}]"') from None
