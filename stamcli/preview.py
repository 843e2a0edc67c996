"""Contact sheets for ``stam predict --preview DIR``: the frames the model saw, with its top-k labels.

A sheet is one PNG per video that was tagged ``ok``::

    +----------------------------------------------+
    | videos/a.mp4                                 |  caption band: the video's path, then
    | 1. label                              0.913  |  one line per top-k label with its score
    | 2. label                              0.041  |  (and a bar as long as the score)
    +----------------------------------------------+
    | [tile] [tile] [tile] [tile] [tile] [tile]    |  the F sampled frames, as preprocessed for the
    | #0 0.00s #12 0.48s ...                       |  model, in rows of COLUMNS, each with its source
    | [tile] [tile] ...                            |  frame index and time under it
    +----------------------------------------------+

Tiles are the model's input frames (``img_size`` pixels square), enlarged with nearest-neighbour
to at least :data:`MIN_TILE` pixels so that small inputs stay visible. OpenCV's Hershey fonts
draw ASCII only, so text is transliterated (``é`` -> ``e``; anything else -> ``?``) and labels too
long for the sheet are cut with ``...``.

File names come from the video's path (relative to the current folder when it lies under it; an
absolute path otherwise, without its root): folder separators become ``__`` and ``.png`` is
appended, e.g. ``videos/sub/a.mp4`` -> ``videos__sub__a.mp4.png``, so two videos with the same
name in different folders get different sheets. Names are made safe for any file system and
capped at :data:`MAX_NAME` characters (a long path keeps its end plus a hash of the whole path).
"""

from __future__ import annotations

import hashlib
import math
import os
import unicodedata
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from .errors import StamError
from .decode import Clip, Views
from .fileutils import write_atomic

COLUMNS = 8  #: tiles per row (fewer when the clip has fewer frames)
MIN_TILE = 128  #: smallest tile side in pixels; smaller inputs are enlarged by an integer factor
PAD = 4  #: pixels between and around tiles
TILE_TEXT = 18  #: height of the frame-index/time strip under each tile
LINE = 22  #: height of one caption line
MAX_NAME = 180  #: longest sheet file name

BACKGROUND = (32, 32, 32)  #: BGR
TEXT = (255, 255, 255)
DIM_TEXT = (190, 190, 190)
BAR = (150, 95, 40)
FONT = cv2.FONT_HERSHEY_SIMPLEX
_SCALE = 0.5
_TILE_SCALE = 0.4

_UNSAFE = set('<>:"|?*\\') | {chr(c) for c in range(32)} | {"\x7f"}


def ascii_text(text: str) -> str:
    """``text`` drawable with a Hershey font: accents dropped (``é`` -> ``e``), other non-ASCII -> ``?``."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    out = []
    for ch in decomposed:
        if unicodedata.combining(ch):
            continue
        out.append(ch if " " <= ch <= "~" else "?")
    return "".join(out)


def fit_text(text: str, width: int, scale: float = _SCALE, *, keep_end: bool = False) -> str:
    """``text`` (ASCII) cut with ``...`` (at its start with ``keep_end``) to at most ``width`` pixels."""
    if _text_width(text, scale) <= width:
        return text
    dots = lambda t: "..." + t if keep_end else t + "..."  # noqa: E731
    while text and _text_width(dots(text), scale) > width:
        text = text[1:] if keep_end else text[:-1]
    return dots(text) if text else ""


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def tile_size(img_size: int) -> int:
    """The side of a tile for frames of ``img_size`` pixels."""
    return img_size * max(1, math.ceil(MIN_TILE / img_size))


def sheet_shape(frames: int, img_size: int, top_k: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of the sheet of ``frames`` frames of ``img_size`` with ``top_k`` labels."""
    tile = tile_size(img_size)
    columns = min(frames, COLUMNS)
    rows = math.ceil(frames / columns)
    width = PAD + columns * (tile + PAD)
    caption = PAD + (1 + top_k) * LINE + PAD
    return caption + rows * (tile + TILE_TEXT + PAD), width


def contact_sheet(clip: Clip, predictions: Sequence[dict], title: Optional[str] = None) -> np.ndarray:
    """The sheet of ``clip``'s frames with ``predictions`` (``label``/``score`` dicts, best first), BGR uint8.

    ``title`` (default: the clip's path) heads the caption; a long one keeps its end.  Of test-time
    :class:`~stamcli.decode.Views`, the sheet shows the first temporal clip's centre crop.
    """
    frames, indices = clip.frames.numpy(), clip.indices  # (F, 3, S, S) RGB
    if isinstance(clip, Views):
        frames, indices = frames[clip.crops // 2], clip.clip_indices(0)
    count, size = frames.shape[0], frames.shape[-1]
    tile = tile_size(size)
    height, width = sheet_shape(count, size, len(predictions))
    sheet = np.empty((height, width, 3), np.uint8)
    sheet[:] = BACKGROUND
    y = PAD
    title = ascii_text(clip.path if title is None else title)
    _put(sheet, fit_text(title, width - 2 * PAD, keep_end=True), PAD, y, DIM_TEXT)
    for rank, prediction in enumerate(predictions, 1):
        y += LINE
        score = prediction.get("score")
        score_text = "" if score is None else f"{score:.3f}"
        score_w = _text_width(score_text, _SCALE)
        if score is not None:
            bar = int(round(max(0.0, min(1.0, float(score))) * (width - 2 * PAD)))
            cv2.rectangle(sheet, (PAD, y + 2), (PAD + bar, y + LINE - 3), BAR, thickness=-1)
        label = fit_text(f"{rank}. {ascii_text(prediction.get('label', ''))}", width - 3 * PAD - score_w)
        _put(sheet, label, PAD, y, TEXT)
        _put(sheet, score_text, width - PAD - score_w, y, TEXT)
    top = PAD + (1 + len(predictions)) * LINE + PAD
    columns = min(count, COLUMNS)
    for i in range(count):
        row, col = divmod(i, columns)
        x0, y0 = PAD + col * (tile + PAD), top + row * (tile + TILE_TEXT + PAD)
        rgb = frames[i].transpose(1, 2, 0)
        if tile != size:
            rgb = cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_NEAREST)
        sheet[y0 : y0 + tile, x0 : x0 + tile] = rgb[:, :, ::-1]
        index = indices[i] if i < len(indices) else i
        caption = f"#{index}" + (f" {index / clip.fps:.2f}s" if clip.fps > 0 else "")
        _put(sheet, fit_text(caption, tile, _TILE_SCALE), x0, y0 + tile, DIM_TEXT, _TILE_SCALE, TILE_TEXT)
    return sheet


def _put(img: np.ndarray, text: str, x: int, y: int, colour, scale: float = _SCALE, line: int = LINE) -> None:
    """Draw ``text`` left-aligned at ``x``, vertically centred in the ``line`` pixels starting at ``y``."""
    if not text:
        return
    (_, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    cv2.putText(img, text, (x, y + (line + h) // 2), FONT, scale, colour, 1, cv2.LINE_AA)


def preview_name(path: str) -> str:
    """The sheet's file name for the video at ``path`` (see the module docstring)."""
    full = os.path.abspath(path)
    here = os.path.abspath(os.curdir)
    try:
        inside = os.path.commonpath([full, here]) == here
    except ValueError:  # another drive
        inside = False
    rel = os.path.relpath(full, here) if inside else os.path.splitdrive(full)[1]
    parts = [p for p in rel.replace("\\", "/").split("/") if p and p != "."]
    name = "__".join(parts) + ".png"
    name = "".join("_" if ch in _UNSAFE else ch for ch in name).lstrip(".") or "video.png"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(os.fsencode(full)).hexdigest()[:10]
        name = f"{digest}-{name[-(MAX_NAME - len(digest) - 1):]}"
    return name


class PreviewWriter:
    """Writes one contact sheet per ``ok`` video into ``folder`` (created if needed).

    Drawing and PNG encoding (OpenCV releases the GIL) run in a background thread, at most
    ``max_pending`` sheets behind, so that they overlap the model instead of adding to it. A failed
    write is raised by a later :meth:`write` or by :meth:`close`, which waits for every sheet (a
    context manager closes it on exit).
    """

    def __init__(self, folder, *, background: bool = True, max_pending: int = 8) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StamError(f"cannot create the preview folder {self.folder}: {err.strerror or err}") from None
        self.written = 0
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stam-preview") if background else None
        self._pending: deque[Future] = deque()

    def write(self, clip: Clip, record: dict) -> Optional[Path]:
        """Write the sheet of ``clip`` with ``record``'s predictions; its path, or ``None`` for an error record."""
        if record.get("status") != "ok":
            return None
        target = self.folder / preview_name(record["path"])
        if self._pool is None:
            self._write(clip, record, target)
            return target
        self._pending.append(self._pool.submit(self._write, clip, record, target))
        while self._pending and (len(self._pending) > self.max_pending or self._pending[0].done()):
            self._pending.popleft().result()  # raises a failed write's StamError
        return target

    def _write(self, clip: Clip, record: dict, target: Path) -> None:
        ok, encoded = cv2.imencode(".png", contact_sheet(clip, record.get("predictions") or []))
        if not ok:
            raise StamError(f"cannot write preview {target}: PNG encoding failed")
        write_atomic(target, encoded.tobytes(), what="preview ")  # never a half-written sheet, even on Ctrl-C
        self.written += 1

    def close(self) -> None:
        """Wait for every pending sheet; the first failed write is raised."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            for future in self._pending:
                future.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> "PreviewWriter":
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None:
            self.close()
        else:  # already failing: finish what can be finished without hiding the original error
            try:
                self.close()
            except StamError:
                pass
        return False
