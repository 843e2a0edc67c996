"""The user's own tags: a label map groups the model's labels, and a tag scores the sum of its members.

A label map is a file, or the name of one shipped with stamcli (:func:`packaged_label_maps`):

* **YAML**, a mapping of tag to its labels::

      basketball: [dribbling basketball, dunking basketball, shooting basketball, playing basketball]
      music: [playing guitar, singing]
      other: "*"            # every label the map does not name elsewhere

* **CSV**, one ``label,tag`` row per label (an optional ``label,tag`` header; ``#`` comments)::

      dribbling basketball,basketball
      dunking basketball,basketball
      *,other

A file with another extension is read as YAML when it holds a mapping, else as CSV.

Rules. A tag's score is the sum of its members' probabilities, taken from the model's full softmax
(before top-k). ``*`` stands for every label no tag names (the "rest"); at most one tag has it.
Without it, labels the map does not name are left out, so tag scores may sum to less than 1. A
label may belong to several tags (e.g. ``ball sports`` and ``sports``); tag scores then sum to more
than 1. Naming a label the model does not have is an error that names it and its closest labels.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import StamError

__all__ = ["LabelMap", "REST", "packaged_label_maps", "closest_labels"]

REST = "*"  #: in a map file: every label that no tag names
_YAML_SUFFIXES = (".yaml", ".yml")
_PACKAGE_FOLDER = "label_maps"
_NOT_TEXT = "is not a text file: expected YAML (tag: [labels]) or CSV (label,tag)"


def packaged_label_maps() -> list[str]:
    """Names of the label maps shipped with stamcli (usable as ``--label-map NAME``)."""
    folder = resources.files("stamcli") / "data" / _PACKAGE_FOLDER
    return sorted(entry.name.rsplit(".", 1)[0] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def closest_labels(name: str, labels: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``labels`` closest to ``name`` (case-insensitive, :mod:`difflib`), best first."""
    folded: dict[str, str] = {}
    for label in labels:
        folded.setdefault(label.casefold(), label)
    return [folded[m] for m in difflib.get_close_matches(name.casefold(), list(folded), n=n, cutoff=0.6)]


@dataclass(frozen=True)
class LabelMap:
    """Tags, each a group of the model's labels; :meth:`apply` turns label probabilities into tag scores.

    :meth:`read` parses a file (or a packaged name); :meth:`bind` checks it against a model's labels
    and returns the map ready to :meth:`apply`. :meth:`load` does both.
    """

    groups: dict[str, tuple[str, ...]]  #: tag -> the labels it names, in file order (the rest excluded)
    rest: Optional[str] = None  #: the tag that also takes every label no tag names
    source: str = ""  #: the file or packaged name it came from (for messages and reports)
    labels: Optional[tuple[str, ...]] = None  #: the model's labels, once bound
    _matrix: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)  # (classes, tags) 0/1

    @property
    def tags(self) -> list[str]:
        """The tags, in file order: the columns of :meth:`apply`."""
        return list(self.groups)

    # ------------------------------------------------------------------ reading

    @classmethod
    def load(cls, spec: str | Path, labels: Sequence[str]) -> "LabelMap":
        """:meth:`read` ``spec`` and :meth:`bind` it to ``labels``."""
        return cls.read(spec).bind(labels)

    @classmethod
    def read(cls, spec: str | Path) -> "LabelMap":
        """The map in file ``spec``, or the packaged map of that name; one-line :class:`StamError` otherwise."""
        path = Path(spec)
        if not path.exists():
            if str(spec) in packaged_label_maps():
                text = (resources.files("stamcli") / "data" / _PACKAGE_FOLDER / f"{spec}.yaml").read_text("utf-8")
                return cls._parse(text, str(spec), "yaml")
            raise StamError(f"label map {spec} not found: give a YAML or CSV file, or one of the packaged maps "
                            f"({', '.join(packaged_label_maps())})")
        if path.is_dir():
            raise StamError(f"label map {spec} is a folder: give a YAML or CSV file")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as err:
            raise StamError(f"cannot read label map {spec}: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise StamError(f"label map {spec} {_NOT_TEXT}") from None
        suffix = path.suffix.lower()
        kind = "yaml" if suffix in _YAML_SUFFIXES else "csv" if suffix == ".csv" else None
        return cls._parse(text, str(spec), kind)

    @classmethod
    def _parse(cls, text: str, source: str, kind: Optional[str]) -> "LabelMap":
        if "\x00" in text:
            raise StamError(f"label map {source} {_NOT_TEXT}")
        data = None
        if kind is None:  # another extension: a YAML mapping, else CSV
            try:
                data = _load_yaml(text, source)
            except StamError:
                pass
            kind = "yaml" if isinstance(data, dict) else "csv"
        elif kind == "yaml":
            data = _load_yaml(text, source)
        pairs = _yaml_pairs(data, source) if kind == "yaml" else _csv_pairs(text, source)
        groups: dict[str, list[str]] = {}
        rest = None
        for label, tag in pairs:
            if not tag:
                raise StamError(f"label map {source}: an empty tag name (for label {label!r})")
            if not label:
                raise StamError(f"label map {source}: an empty label under tag {tag!r}")
            members = groups.setdefault(tag, [])
            if label == REST:
                if rest is not None and rest != tag:
                    raise StamError(f"label map {source}: '*' (every other label) is given to two tags, "
                                    f"{rest!r} and {tag!r}; give it to one")
                if rest == tag:
                    raise StamError(f"label map {source}: '*' is listed twice under tag {tag!r}")
                rest = tag
            elif label in members:
                raise StamError(f"label map {source}: label {label!r} is listed twice under tag {tag!r}")
            else:
                members.append(label)
        if not groups:
            raise StamError(f"label map {source} has no tags: expected YAML (tag: [labels]) or CSV (label,tag)")
        return cls({tag: tuple(members) for tag, members in groups.items()}, rest, source)

    # ------------------------------------------------------------------ binding and applying

    def bind(self, labels: Sequence[str]) -> "LabelMap":
        """This map checked against a model's ``labels``, ready to :meth:`apply`.

        A :class:`StamError` names every label the model does not have, with its closest real labels.
        """
        labels = tuple(str(label) for label in labels)
        index = {label: i for i, label in enumerate(labels)}
        unknown = list(dict.fromkeys(label for members in self.groups.values() for label in members
                                     if label not in index))
        if unknown:
            hints = []
            for label in unknown[:5]:
                near = closest_labels(label, labels)
                hints.append(f"{label!r} (closest: {', '.join(near)})" if near else f"{label!r} (no close label)")
            more = f"; and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            named = len({label for members in self.groups.values() for label in members})
            other = " (is the map for another model's labels?)" if 2 * len(unknown) > named else ""
            raise StamError(f"label map {self.source} names {len(unknown)} label(s) the model does not have{other}: "
                            f"{'; '.join(hints)}{more}")
        matrix = torch.zeros(len(labels), len(self.groups))
        for t, members in enumerate(self.groups.values()):
            for label in members:
                matrix[index[label], t] = 1.0
        if self.rest is not None:
            unnamed = matrix.sum(dim=1) == 0
            matrix[unnamed, self.tags.index(self.rest)] = 1.0
        return replace(self, labels=labels, _matrix=matrix)

    def members(self, tag: str) -> list[str]:
        """The model's labels whose probabilities make up ``tag``'s score (bound maps: the rest included)."""
        if self._matrix is None:
            return list(self.groups[tag])
        column = self._matrix[:, self.tags.index(tag)]
        return [self.labels[i] for i in column.nonzero().flatten().tolist()]

    @property
    def unmapped(self) -> list[str]:
        """The model's labels in no tag (left out of every score); empty when the map has a rest tag."""
        self._require_bound()
        return [self.labels[i] for i in (self._matrix.sum(dim=1) == 0).nonzero().flatten().tolist()]

    def apply(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Tag scores ``(..., tags)`` from class probabilities ``(..., classes)``: each tag's members summed."""
        self._require_bound()
        if probabilities.shape[-1] != self._matrix.shape[0]:
            raise ValueError(f"probabilities have {probabilities.shape[-1]} classes, the map was bound to "
                             f"{self._matrix.shape[0]} labels")
        return probabilities @ self._matrix.to(probabilities.device, probabilities.dtype)

    def _require_bound(self) -> None:
        if self._matrix is None:
            raise ValueError("bind() the label map to the model's labels first")


# ---------------------------------------------------------------------------- file formats


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    """A safe YAML loader that rejects a tag given twice (PyYAML would keep the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in keys:
                raise yaml.constructor.ConstructorError(None, None, f"tag {key!r} is given twice", key_node.start_mark)
            keys.add(key)
        return loader.construct_mapping(node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


def _load_yaml(text: str, source: str):
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise StamError(f"label map {source} is not valid YAML{where}: {problem}") from None


def _yaml_pairs(data, source: str) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        raise StamError(f"label map {source} is not a YAML mapping of tag: [labels]")
    pairs = []
    for tag, members in data.items():
        if isinstance(members, (str, int, float)) and not isinstance(members, bool):
            members = [members]
        if not isinstance(members, list) or not members:
            raise StamError(f"label map {source}: tag {tag!r} must have a list of labels")
        for label in members:
            if isinstance(label, (dict, list)) or label is None:
                raise StamError(f"label map {source}: tag {tag!r} holds {label!r}, not a label name")
            pairs.append((str(label).strip(), str(tag).strip()))
    return pairs


def _csv_pairs(text: str, source: str) -> list[tuple[str, str]]:
    pairs = []
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in rows:
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2:
                raise StamError(f"label map {source} line {rows.line_num}: expected 'label,tag', got "
                                f"{len(row)} field(s); is it a YAML (tag: [labels]) or CSV (label,tag) file?")
            label, tag = row[0].strip(), row[1].strip()
            if not pairs and (label.casefold(), tag.casefold()) == ("label", "tag"):
                continue  # the header
            pairs.append((label, tag))
    except csv.Error as err:
        raise StamError(f"label map {source} line {rows.line_num} is not valid CSV: {err}") from None
    return pairs
