"""Labelled clips for ``stam finetune`` and ``stam evaluate``: read, check, split, load.

**DATA** is either

* a **folder of class folders**: ``root/<label>/...`` where each non-hidden sub-folder of ``root``
  is a class named after it, and its videos are found by :func:`stamcli.inputs.collect_videos`
  (recursive, hidden entries skipped, :data:`~stamcli.inputs.DEFAULT_EXTENSIONS`); files directly
  in ``root`` (e.g. a ``labels.csv``) are ignored; or
* a **labels file** (any other file), UTF-8, one example per line:

  - blank lines and lines whose first non-blank character is ``#`` are ignored;
  - a line that parses as exactly two CSV fields is ``path,label`` (quote a path or label that
    holds a comma: ``"a,b.mp4",label``); labels may contain spaces in this form;
  - any other line is split on its **last** run of whitespace: ``my clip.mp4 dance`` is
    ``("my clip.mp4", "dance")``, so paths may hold spaces and labels are single tokens;
    a line with no whitespace has no label (reported as a problem);
  - the first line is a **header** and skipped when its two cells read ``path`` and ``label``
    (any case), or when its path cell has no video extension and names no existing file while
    some later line's path does exist (e.g. ``video,class``);
  - relative paths are relative to the labels file's folder; ``~`` is expanded.

Paths and labels are stripped of surrounding whitespace; labels are kept as text (``"3"`` stays
``"3"``), and :func:`class_names` sorts them numerically when all are integers.

Before training everything is checked at once (:func:`validate`): every problem is found and
reported together, or with ``skip_bad`` the examples they name are dropped with a warning each.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..decode import read_clip, sample_indices
from ..errors import StamError, VideoError
from ..inputs import DEFAULT_EXTENSIONS, collect_videos, has_video_extension, natural_key

__all__ = ["Example", "Problem", "read_examples", "class_names", "check_examples", "check_classes",
           "validate", "stratified_split", "jittered_indices", "random_resized_crop", "ClipDataset"]

log = logging.getLogger(__name__)

_INTEGER = re.compile(r"[+-]?\d+")
_LAST_SPACE = re.compile(r"(.*\S)\s+(\S+)")  # greedy: splits on the last whitespace run
_NO_LABEL = "no label (expected 'path,label' or 'path label')"


@dataclass(frozen=True)
class Example:
    """One labelled video."""

    path: str  #: as it will be opened (labels-file paths joined to the file's folder)
    label: str
    source: str  #: where it came from, for messages: ``"labels.csv:12"`` or the class folder


@dataclass(frozen=True)
class Problem:
    """Why an example cannot be used; ``str()`` is ``"source: path: message"``."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: {self.message}"


# ---------------------------------------------------------------------------- reading


def read_examples(data: str | Path) -> list[Example]:
    """The examples of a labels file or a folder of class folders (see the module docstring).

    Raises :class:`StamError` when ``data`` does not exist, cannot be read or holds no examples.
    Problems with single examples (missing videos, empty labels...) are left to :func:`validate`.
    """
    data = os.fspath(data)
    if os.path.isdir(data):
        return _read_folder(data)
    if not os.path.exists(data):
        raise StamError(f"no such file or folder: {data}")
    if has_video_extension(os.path.basename(data)):
        raise StamError(f"{data} is a video: DATA must be a CSV of path,label rows or a folder of class folders")
    return _read_table(data)


def _parse_line(line: str) -> tuple[str, str]:
    fields = next(csv.reader([line]), [])
    if len(fields) == 2:
        return fields[0].strip(), fields[1].strip()
    match = _LAST_SPACE.fullmatch(line)
    return (match.group(1).strip(), match.group(2)) if match else (line, "")


def _resolve(base: str, path: str) -> str:
    if not path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(base, path)


def _is_header(rows: list[tuple[int, str, str]], base: str) -> bool:
    _, path, label = rows[0]
    if (path.casefold(), label.casefold()) == ("path", "label"):
        return True
    return (not has_video_extension(path) and not os.path.exists(_resolve(base, path))
            and any(os.path.exists(_resolve(base, p)) for _, p, _ in rows[1:]))


def _read_table(path: str) -> list[Example]:
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError as err:
        raise StamError(f"cannot read {path}: {err.strerror or err}") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append((lineno, *_parse_line(line)))
    if rows and _is_header(rows, os.path.dirname(path)):
        rows = rows[1:]
    if not rows:
        raise StamError(f"no examples in {path} (expected lines of 'path,label' or 'path label')")
    base = os.path.dirname(path)
    return [Example(_resolve(base, p), label, f"{path}:{lineno}") for lineno, p, label in rows]


def _read_folder(root: str) -> list[Example]:
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: natural_key(e.name))
    except OSError as err:
        raise StamError(f"cannot read folder {root}: {err.strerror or err}") from None
    examples: list[Example] = []
    for entry in entries:
        if entry.name.startswith(".") or not _is_dir(entry):
            continue
        folder = os.path.join(root, entry.name)
        try:
            videos = collect_videos([folder], extensions=DEFAULT_EXTENSIONS)
        except StamError as err:
            log.warning("skipping class folder %s: %s", folder, err)
            continue
        examples += [Example(video, entry.name.strip(), folder) for video in videos]
    if not examples:
        raise StamError(f"no videos in class folders of {root} (expected {os.path.join(root, '<label>', '<video>')}, "
                        "or give a CSV of path,label rows)")
    return examples


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def class_names(examples: Sequence[Example]) -> list[str]:
    """The distinct labels, sorted; numerically when every label is an integer (``2`` < ``10``)."""
    names = sorted({e.label for e in examples if e.label})
    if names and all(_INTEGER.fullmatch(n) for n in names):
        names.sort(key=lambda n: (int(n), n))
    return names


# ---------------------------------------------------------------------------- checking


def _unreadable(path: str, num_frames: int, decoder: str) -> str | None:
    """Why the video cannot be decoded, or None. A cheap read: ``num_frames`` tiny frames."""
    try:
        read_clip(path, max(1, num_frames), 16, threads=1, decoder=decoder)
    except VideoError as err:
        return "unreadable video: " + str(err).removeprefix(f"cannot read video {path}: ")
    except (OSError, RuntimeError) as err:
        return f"unreadable video: {err}"
    return None


def _example_problems(examples: Sequence[Example], decode: bool, num_frames: int,
                      decoder: str) -> list[tuple[Problem, set[int]]]:
    """Per-example problems, each with the positions of the examples it rules out, in file order."""
    found: dict[int, list[tuple[Problem, set[int]]]] = {}

    def add(i: int, message: str, drop: set[int] | None = None) -> None:
        e = examples[i]
        found.setdefault(i, []).append((Problem(e.source, e.path, message), {i} if drop is None else drop))

    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        if not e.label:
            add(i, _NO_LABEL)
        if not e.path:
            add(i, "no path")
            continue
        groups.setdefault(os.path.normcase(os.path.realpath(e.path)), []).append(i)
    to_decode = []
    for same in groups.values():
        first = examples[same[0]]
        if len({examples[i].label for i in same}) > 1:
            listing = ", ".join(f"{examples[i].source} ({examples[i].label or 'no label'})" for i in same)
            for i in same:
                add(i, f"listed with different labels: {listing}", set(same))
        else:
            for i in same[1:]:
                add(i, f"listed twice (also at {first.source})")
        path = first.path
        if not os.path.exists(path):
            add(same[0], "no such file")
        elif os.path.isdir(path):
            add(same[0], "is a folder, not a video")
        elif decode:
            to_decode.append(same[0])
    if to_decode:
        with ThreadPoolExecutor(max_workers=2) as pool:
            messages = pool.map(lambda i: _unreadable(examples[i].path, num_frames, decoder), to_decode)
            for i, message in zip(to_decode, messages):
                if message:
                    add(i, message)
    return [item for i in sorted(found) for item in found[i]]


def check_examples(examples: Sequence[Example], *, decode: bool = True, frames: int = 8,
                   decoder: str = "auto") -> list[Problem]:
    """Every problem of single examples: no path or no label, missing file or a folder, a video that
    cannot be decoded (``decode``: read ``frames`` small frames with ``decoder``, two videos at a
    time), and a path listed twice (each repeat names the first; with different labels every
    occurrence is a problem).
    """
    return [problem for problem, _ in _example_problems(examples, decode, frames, decoder)]


def check_classes(train: Sequence[Example], val: Sequence[Example] | None = None) -> list[Problem]:
    """Class-level problems. With ``val``: validation examples of a class that has no training
    examples. With ``val=None`` (a validation split is still to be made from ``train``): the
    examples of classes with fewer than 2 examples. Examples without a label are ignored."""
    return [problem for problem, _ in _class_problems(train, val)]


def _class_problems(train, val) -> list[tuple[Problem, Example]]:
    counts: dict[str, int] = {}
    for e in train:
        counts[e.label] = counts.get(e.label, 0) + 1
    if val is None:
        return [(Problem(e.source, e.path, f"class '{e.label}' has only 1 usable example: a validation "
                         "split needs at least 2 per class (or give --val)"), e)
                for e in train if e.label and counts[e.label] < 2]
    return [(Problem(e.source, e.path, f"class '{e.label}' has no usable training examples"), e)
            for e in val if e.label and e.label not in counts]


def _data_names(examples: Sequence[Example]) -> str:
    names: list[str] = []
    for e in examples:
        match = re.fullmatch(r"(.*):\d+", e.source)
        name = match.group(1) if match and os.path.isfile(match.group(1)) else os.path.dirname(e.source) or e.source
        if name not in names:
            names.append(name)
    return " and ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} and {names[-1]}"


def validate(train: Sequence[Example], val: Sequence[Example] | None = None, *, skip_bad: bool,
             frames: int = 8, decode: bool = True, split: bool = False, decoder: str = "auto"):
    """Check ``train`` (and ``val``) all at once, then stop or drop.

    Checks: :func:`check_examples` on all examples together (so a video in both sets is a
    repeat), then :func:`check_classes` on the examples that passed: against ``val`` when given,
    or, with ``split=True`` (``val`` is to be split from ``train`` afterwards), for classes with
    fewer than 2 examples. With no problems the examples come back unchanged. Otherwise, unless
    ``skip_bad``, a :class:`StamError` lists every problem, one per line as
    ``source: path: message`` under a summary line; with ``skip_bad`` each problem is logged as
    a warning and the examples it names are dropped.

    Returns the kept training examples, or ``(train, val)`` when ``val`` is given (even ``[]``).
    """
    train, given_val = list(train), val is not None
    val = list(val) if given_val else []
    examples = train + val
    found = _example_problems(examples, decode, frames, decoder)
    dropped = set().union(*(drop for _, drop in found))
    kept_train = [e for i, e in enumerate(train) if i not in dropped]
    kept_val = [e for i, e in enumerate(val, len(train)) if i not in dropped]
    if given_val or split:
        class_found = _class_problems(kept_train, kept_val if given_val else None)
        position = {id(e): i for i, e in enumerate(examples)}
        dropped.update(position[id(e)] for _, e in class_found)
    else:
        class_found = []
    problems = [p for p, _ in found] + [p for p, _ in class_found]
    if problems and not skip_bad:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise StamError(f"{count} in {_data_names(examples)} (use --skip-bad to drop "
                        f"{'them' if len(problems) != 1 else 'it'}):\n" + "\n".join(map(str, problems)))
    for problem in problems:
        log.warning("skipping %s", problem)
    if dropped:
        log.warning("dropped %d of %d examples (--skip-bad)", len(dropped), len(examples))
    kept_train = [e for i, e in enumerate(train) if i not in dropped]
    kept_val = [e for i, e in enumerate(val, len(train)) if i not in dropped]
    return (kept_train, kept_val) if given_val else kept_train


# ---------------------------------------------------------------------------- splitting


def _entropy(*values: int) -> list[int]:
    """Non-negative seed words for numpy (which rejects negative seeds)."""
    return [int(v) & (2**64 - 1) for v in values]


def stratified_split(examples: Sequence[Example], fraction: float = 0.1,
                     seed: int = 0) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: from each class, ``round(fraction * count)`` examples (halves round
    up) are held out, at least 1 when the class has >= 2 examples and ``fraction > 0``, and never
    the class's last one. Which ones depends only on ``seed``, the label and the class's
    examples (not on other classes); both lists keep the input order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    by_class: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_class.setdefault(e.label, []).append(i)
    held: set[int] = set()
    for label, positions in by_class.items():
        count = len(positions)
        k = math.floor(fraction * count + 0.5)
        if fraction > 0 and count >= 2:
            k = max(k, 1)
        k = min(k, count - 1)
        if k > 0:
            rng = np.random.default_rng(_entropy(seed, zlib.crc32(label.encode("utf-8", "surrogateescape"))))
            held.update(positions[j] for j in rng.choice(count, k, replace=False))
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


# ---------------------------------------------------------------------------- augmentation


def jittered_indices(n: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """TSN-style sampling: segment ``i`` covers frames ``[i*n/F, (i+1)*n/F)`` and one frame is
    drawn uniformly from it. A video shorter than ``F`` frames gets :func:`sample_indices`
    (deterministic repeats, no randomness)."""
    if n < 1 or num_frames < 1:
        raise ValueError(f"need n >= 1 and num_frames >= 1, got n={n}, num_frames={num_frames}")
    if n < num_frames:
        return sample_indices(n, num_frames)
    low = [-(-i * n // num_frames) for i in range(num_frames)]  # ceil: first frame at or after i*n/F
    high = low[1:] + [n]
    return [int(k) for k in rng.integers(low, high)]


def random_resized_crop(rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Callable[[int, int], tuple[int, int, int, int]]:
    """A ``crop(height, width) -> (top, left, crop_h, crop_w)`` for :func:`stamcli.decode.read_clip`:
    torchvision's RandomResizedCrop choice (area fraction uniform in ``scale``, log-uniform aspect
    ratio in ``ratio``, uniform position; after 10 misses a centre crop of the whole frame clipped
    to ``ratio``)."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def crop(height: int, width: int) -> tuple[int, int, int, int]:
        area = height * width
        for _ in range(10):
            target = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        if width / height < min(ratio):
            w, h = width, min(height, max(1, int(round(width / min(ratio)))))
        elif width / height > max(ratio):
            w, h = min(width, max(1, int(round(height * max(ratio))))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    return crop


# ---------------------------------------------------------------------------- dataset


class ClipDataset(Dataset):
    """``(frames uint8 (F, 3, S, S), label index)`` for each example.

    ``train=False``: exactly what ``stam predict`` feeds the model (:func:`read_clip`'s uniform
    frames, resize + centre crop). ``train=True``: :func:`jittered_indices`, a
    :func:`random_resized_crop` (the same region for all frames of a clip) and, with ``hflip``, a
    horizontal flip with probability 0.5. The randomness of sample ``i`` comes only from
    ``(seed, epoch, i)`` (three independent streams spawned from
    ``numpy.random.SeedSequence([seed, epoch, i])``: frames, crop, flip), so it does not depend on
    the worker process that loads it and a resumed run repeats it exactly. Call
    :meth:`set_epoch` before each epoch (with persistent DataLoader workers it would not reach
    them). ``decoder``: ``auto``, ``pyav`` or ``opencv`` (:mod:`stamcli.decode.decoders`). A video
    that cannot be decoded raises :class:`VideoError`.
    """

    def __init__(self, examples: Sequence[Example], label_to_index: dict[str, int], frames: int, img_size: int, *,
                 train: bool, seed: int = 0, hflip: bool = False, threads: int = 0, decoder: str = "auto"):
        unknown = sorted({e.label for e in examples} - set(label_to_index))
        if unknown:
            raise StamError(f"labels without a class index: {', '.join(unknown[:10])}"
                            f"{' ...' if len(unknown) > 10 else ''}")
        self.examples = list(examples)
        self.label_to_index = dict(label_to_index)
        self.frames, self.img_size, self.train = int(frames), int(img_size), bool(train)
        self.seed, self.hflip, self.threads, self.decoder = int(seed), bool(hflip), int(threads), decoder
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = range(len(self.examples))[i]  # IndexError when out of range; negative indices allowed
        example = self.examples[i]
        target = self.label_to_index[example.label]
        if not self.train:
            return read_clip(example.path, self.frames, self.img_size, threads=self.threads,
                             decoder=self.decoder).frames, target
        when, where, flip = (np.random.default_rng(s) for s in
                             np.random.SeedSequence(_entropy(self.seed, self.epoch, i)).spawn(3))
        clip = read_clip(example.path, self.frames, self.img_size, threads=self.threads, decoder=self.decoder,
                         sampler=lambda n, f: jittered_indices(n, f, when), crop=random_resized_crop(where))
        frames = clip.frames
        if self.hflip and flip.random() < 0.5:
            frames = frames.flip(-1)
        return frames, target
