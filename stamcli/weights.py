"""Where the zoo's checkpoint files live and how they get there.

Files live in one directory: ``--weights-dir``, else ``$STAM_WEIGHTS_DIR``, else
``./weights``. A missing file is downloaded from the registry URL or from a mirror
(``--mirror``, else ``$STAM_MIRROR``) that serves the same file names, unless offline mode
is on (``offline=True`` or ``$STAM_OFFLINE`` set to 1/true/yes/on). A present file is
checked against its download record before use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .download import download_file, verify_download
from .errors import StamError
from .zoo import ModelInfo, get_model_info

PathLike = Union[str, Path]

WEIGHTS_DIR_ENV = "STAM_WEIGHTS_DIR"
MIRROR_ENV = "STAM_MIRROR"
OFFLINE_ENV = "STAM_OFFLINE"
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def weights_dir(override: Optional[PathLike] = None) -> Path:
    """The weights directory: ``override``, else ``$STAM_WEIGHTS_DIR``, else ``./weights``."""
    chosen = override if override is not None else os.environ.get(WEIGHTS_DIR_ENV) or None
    return Path(chosen).expanduser() if chosen is not None else Path.cwd() / "weights"


_weights_dir = weights_dir  # for the functions below, whose ``weights_dir`` parameter shadows it


def local_path(name: str, weights_dir: Optional[PathLike] = None) -> Path:
    """Where the checkpoint of zoo model ``name`` is (or would be) stored."""
    return _weights_dir(weights_dir) / get_model_info(name).filename


def is_present(name: str, weights_dir: Optional[PathLike] = None) -> bool:
    """Whether the checkpoint of ``name`` has been downloaded."""
    return local_path(name, weights_dir).is_file()


def resolve_url(info: ModelInfo, mirror: Optional[str] = None) -> str:
    """The URL to fetch ``info`` from: ``<mirror>/<file name>`` when a mirror is set, else its own URL."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror:
        return mirror.rstrip("/") + "/" + info.filename
    return info.url


def download_weights(
    name: str,
    weights_dir: Optional[PathLike] = None,
    *,
    mirror: Optional[str] = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download the checkpoint of ``name`` (checked against the registry sha256 when known)."""
    info = get_model_info(name)
    dest = local_path(name, weights_dir)
    return download_file(
        resolve_url(info, mirror), dest,
        expected_sha256=info.sha256, force=force, progress=progress, desc=info.filename,
    )


def ensure_weights(
    name: str,
    weights_dir: Optional[PathLike] = None,
    *,
    mirror: Optional[str] = None,
    offline: Optional[bool] = None,
    progress: bool = True,
) -> Path:
    """The local checkpoint of ``name``: verified when present, downloaded when missing.

    Raises :class:`StamError` when it is missing and offline mode is on.
    """
    path = local_path(name, weights_dir)
    if path.is_file():
        verify_download(path, redownload_hint=f"stam download-weights {name} --force")
        return path
    if _offline(offline):
        directory = path.parent.resolve()
        hint = f"stam download-weights {name} --weights-dir {directory}"
        if mirror:
            hint += f" --mirror {mirror}"
        raise StamError(f"{name} is not in {directory} and offline mode is on; fetch it with: {hint}")
    return download_weights(name, weights_dir, mirror=mirror, progress=progress)


def _offline(offline: Optional[bool]) -> bool:
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE_WORDS
