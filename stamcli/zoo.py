"""The registry of published STAM checkpoints and the label sets they use.

The registry is package data (``stamcli/data/zoo.json``) so that a mirror or a new release
only needs a data change. Each entry becomes a :class:`ModelInfo`, the equivalent of timm's
``pretrained_cfg``: everything needed to fetch the file and rebuild the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

from .errors import StamError

_DATA = resources.files("stamcli") / "data"


@dataclass(frozen=True)
class ModelInfo:
    """One published checkpoint."""

    name: str
    url: str
    frames: int
    img_size: int
    labels: str  # name of a label set, see :func:`load_label_set`
    top1: float  # reported Kinetics-400 top-1 (%)
    gflops: Optional[float]  # reported cost per video (one view), when published
    architecture: dict = field(default_factory=dict)
    sha256: Optional[str] = None  # checked on download when known

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@lru_cache(maxsize=None)
def _registry() -> dict[str, ModelInfo]:
    data = json.loads((_DATA / "zoo.json").read_text(encoding="utf-8"))
    defaults = data["defaults"]
    registry = {}
    for name, entry in data["models"].items():
        registry[name] = ModelInfo(
            name=name,
            url=entry.get("url", f"{data['base_url']}/{name}.pth"),
            frames=entry["frames"],
            img_size=entry.get("img_size", defaults["img_size"]),
            labels=entry.get("labels", defaults["labels"]),
            top1=entry["top1"],
            gflops=entry["gflops"],
            architecture=dict(defaults["architecture"], **entry.get("architecture", {})),
            sha256=entry.get("sha256"),
        )
    return registry


def available_models() -> list[str]:
    """Names of the published checkpoints, e.g. ``["stam_8", "stam_16", "stam_32", "stam_64"]``."""
    return list(_registry())


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name is an error listing the known ones."""
    try:
        return _registry()[name]
    except KeyError:
        raise StamError(
            f"unknown model {name!r}; known models: {', '.join(available_models())} "
            "(or pass a checkpoint file)"
        ) from None


def model_for_frames(frames: int) -> ModelInfo:
    """The published model trained for ``frames`` frames (``--frames 16`` -> stam_16)."""
    for info in _registry().values():
        if info.frames == frames:
            return info
    known = ", ".join(f"{i.frames} ({i.name})" for i in _registry().values())
    raise StamError(
        f"no published model is trained for {frames} frames (published: {known}); "
        "pass --model to run another model at this frame count"
    )


@lru_cache(maxsize=None)
def load_label_set(name: str) -> tuple[str, ...]:
    """A label set shipped with the package (``"kinetics400"``)."""
    path = _DATA / f"{name}_labels.txt"
    if not path.is_file():
        raise StamError(f"unknown label set {name!r}")
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def read_labels_file(path: str | Path) -> list[str]:
    """Labels from a text file, one name per line (blank lines ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StamError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise StamError(f"cannot read labels file {path}: {err}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise StamError(f"labels file {path} is empty")
    return labels


def default_labels(num_classes: int) -> list[str]:
    """Kinetics-400 names for a 400-way head, ``class_<i>`` otherwise."""
    if num_classes == 400:
        return list(load_label_set("kinetics400"))
    return [f"class_{i}" for i in range(num_classes)]
