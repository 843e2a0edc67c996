"""Which parts of a model a fine-tuning run trains, from what start, at which learning rate.

A STAM has three parts: the ``backbone`` (the spatial ViT, ``model.spatial``), the ``temporal``
encoder (``model.temporal``) and the ``head`` (``model.head``). A part either starts from trained
weights (a zoo model, a checkpoint, ``--backbone-weights``) or from random ones (a new head for new
labels, a new model's temporal encoder). Parts that start from random weights need a higher
learning rate than trained ones, which a high rate would wreck: they train at
``lr * scratch_lr_scale``, the others at ``lr`` (measurements in ``benchmarks/README.md``).

The plan is printed at the start of a run and saved as ``RUN_DIR/trained_parts.json``, which is
also how ``--resume`` knows it. A run folder from before per-part learning rates has no such
file: it resumes as it was started, with one learning rate for every part.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from torch import nn

from ..errors import StamError
from ..model import STAM

PARTS_FILE = "trained_parts.json"
#: part name -> the attribute of :class:`~stamcli.model.STAM` that holds it
PART_MODULES = {"backbone": "spatial", "temporal": "temporal", "head": "head"}


@dataclass
class TrainedPart:
    """One part of the model in a fine-tuning run."""

    name: str  #: backbone, temporal or head
    parameters: int
    start: str  #: "pretrained" (trained weights), "scratch" (random weights) or "unknown" (an old run folder)
    trained: bool
    lr: Optional[float]  #: peak learning rate; None when frozen


def plan_parts(model: STAM, scratch: Optional[Iterable[str]], *, lr: float, scratch_lr_scale: float,
               freeze_backbone: bool) -> list[TrainedPart]:
    """The parts of ``model``; those named in ``scratch`` start from random weights (None: not
    known, every part at ``lr``)."""
    known = scratch is not None
    scratch = set(scratch or ())
    unknown = scratch - set(PART_MODULES)
    if unknown:
        raise ValueError(f"unknown model parts: {', '.join(sorted(unknown))}")
    parts = []
    for name, attribute in PART_MODULES.items():
        trained = not (freeze_backbone and name == "backbone")
        new = name in scratch
        parts.append(TrainedPart(
            name=name,
            parameters=sum(p.numel() for p in getattr(model, attribute).parameters()),
            start=("scratch" if new else "pretrained") if known else "unknown",
            trained=trained,
            lr=(lr * scratch_lr_scale if new else lr) if trained else None,
        ))
    return parts


def _decay_split(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights with weight decay, the rest): no decay on biases, norms, tokens and position embeddings."""
    decay, plain = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        (plain if no_decay else decay).append(param)
    return decay, plain


def param_groups(model: STAM, parts: list[TrainedPart], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: per trained part, its weights (decayed) and the rest, at its rate.

    Each group carries its part's name under ``"part"`` (kept in the optimiser's saved state)."""
    groups = []
    for part in parts:
        if not part.trained:
            continue
        decay, plain = _decay_split(getattr(model, PART_MODULES[part.name]))
        groups += [{"params": decay, "weight_decay": weight_decay, "lr": part.lr, "part": part.name},
                   {"params": plain, "weight_decay": 0.0, "lr": part.lr, "part": part.name}]
    return [group for group in groups if group["params"]]


def legacy_param_groups(trainable: nn.Module, weight_decay: float) -> list[dict]:
    """The groups of stamcli before per-part rates (all at the optimiser's ``lr``): resumes old runs."""
    decay, plain = _decay_split(trainable)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def parts_table(parts: list[TrainedPart]) -> str:
    """A compact text table: part, parameters, start, trained or frozen, learning rate."""
    rows = [("part", "params", "start", "trains", "lr")]
    rows += [(p.name, _count(p.parameters), p.start, "yes" if p.trained else "frozen",
              f"{p.lr:.1e}" if p.lr is not None else "-") for p in parts]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def save_parts(parts: list[TrainedPart], run_dir: Path, *, scratch_lr_scale: float) -> Path:
    path = Path(run_dir) / PARTS_FILE
    data = {"scratch_lr_scale": scratch_lr_scale, "parts": [asdict(p) for p in parts]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_parts(run_dir: Path) -> Optional[list[TrainedPart]]:
    """The plan saved in ``run_dir``; None for a run folder from before per-part learning rates."""
    path = Path(run_dir) / PARTS_FILE
    if not path.is_file():
        return None
    try:
        return [TrainedPart(**entry) for entry in json.loads(path.read_text(encoding="utf-8"))["parts"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StamError(f"cannot read {path} ({err}); the run folder is damaged") from None
