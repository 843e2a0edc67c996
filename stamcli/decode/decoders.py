"""Which backend decodes a video: the decoder choice, and the one fallback from PyAV to OpenCV.

* ``auto``: PyAV where it can read the video exactly, else OpenCV (the default);
* ``pyav``: PyAV only; a video it cannot read exactly is a one-line :class:`~stamcli.errors.VideoError`;
* ``opencv``: OpenCV only.

The choice comes from the caller (``--decoder``, :attr:`PredictOptions.decoder
<stamcli.engine.PredictOptions>`, :attr:`FinetuneConfig.decoder <stamcli.train.config.FinetuneConfig>`),
else from the ``STAM_DECODER`` environment variable, else ``auto``: :func:`resolve_decoder`, the
only place that reads the variable.  Decoding functions take the resolved value (``decoder=``).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from ..errors import UsageError, VideoError
from .backend import Backend
from .files import one_line
from .opencv import OPENCV
from .pyav import PYAV, Unsupported, available

__all__ = ["DECODERS", "ENV_VAR", "check_decoder", "resolve_decoder", "decode_with_fallback"]

DECODERS = ("auto", "pyav", "opencv")  #: the valid decoder choices
ENV_VAR = "STAM_DECODER"  #: the environment variable that sets the default choice
T = TypeVar("T")


def check_decoder(decoder: str, shown: Optional[str] = None) -> str:
    """``decoder`` in lower case; UsageError naming the valid choices for anything else (the
    message shows the value as ``shown``, by default ``decoder '<value>'``)."""
    choice = str(decoder).strip().lower()
    if choice not in DECODERS:
        raise UsageError(f"{shown or f'decoder {decoder!r}'} is not one of {', '.join(DECODERS)}")
    return choice


def resolve_decoder(decoder: Optional[str] = None) -> str:
    """The decoder to use: ``decoder`` when given, else ``STAM_DECODER`` (when set and not
    empty), else ``auto``.  UsageError for an unknown value, or for ``pyav`` without PyAV."""
    if decoder is not None:
        choice = check_decoder(decoder, f"--decoder {decoder!r}")
    else:
        value = os.environ.get(ENV_VAR, "").strip()
        choice = check_decoder(value, f"{ENV_VAR}={value.lower()!r}") if value else "auto"
    if choice == "pyav" and not available():
        raise UsageError("decoder 'pyav' needs PyAV 14 or newer (pip install 'av>=14'); use auto or opencv")
    return choice


def decode_with_fallback(decoder: str, path, attempt: Callable[[Backend], Iterable[T]]) -> Iterator[T]:
    """The items of ``attempt(backend)`` for the backends ``decoder`` allows.

    PyAV goes first (``auto``, ``pyav``).  When it gives up (:class:`~stamcli.decode.pyav.Unsupported`),
    at the start or part-way: with ``auto`` OpenCV reads the video, and the items PyAV already
    handed on are not repeated (both backends must give the same items in the same order); with
    ``pyav`` a one-line :class:`~stamcli.errors.VideoError` says why.  ``opencv``: OpenCV alone.
    """
    decoder = check_decoder(decoder)
    handed = 0
    if decoder != "opencv":
        try:
            for item in attempt(PYAV):
                yield item
                handed += 1
            return
        except Unsupported as exc:
            if decoder == "pyav":
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise VideoError(f"cannot read video {one_line(path)}: PyAV cannot read it exactly ({reason}); "
                                 "decoder 'auto' would read it with OpenCV") from None
    for count, item in enumerate(attempt(OPENCV)):
        if count >= handed:
            yield item
