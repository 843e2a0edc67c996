"""Fine-tuning options: defaults < ``--config FILE.yaml`` < command-line flags.

The resolved options are saved as ``config.yaml`` in the run directory, which is how
``stam finetune --resume RUN_DIR`` knows what it was doing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from ..errors import StamError, UsageError


@dataclass
class FinetuneConfig:
    """Everything ``stam finetune`` does, as one serialisable object."""

    data: str = ""
    val: Optional[str] = None
    val_split: float = 0.1
    model: str = "stam_16"  # zoo name, checkpoint file, or timm backbone name (new model)
    backbone_weights: Optional[str] = None  # local timm/ImageNet weights for a new model's ViT
    frames: Optional[int] = None  # None: the model's own
    img_size: Optional[int] = None  # None: the model's own
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: float = 1.0  # epochs of linear warm-up before the cosine decay
    label_smoothing: float = 0.1
    grad_accum: int = 1
    clip_grad: float = 1.0  # max gradient norm; 0: no clipping
    precision: str = "auto"
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    patience: int = 0  # epochs without improvement before stopping; 0: never stop early
    freeze_backbone: bool = False
    hflip: bool = False
    skip_bad: bool = False
    decoder: Optional[str] = None  # auto, pyav or opencv; None: STAM_DECODER, else auto
    output: Optional[str] = None  # run directory; None: runs/finetune/<name>
    name: Optional[str] = None
    weights_dir: Optional[str] = None
    mirror: Optional[str] = None
    offline: Optional[bool] = None

    def check(self) -> None:
        if not self.data:
            raise UsageError("no training data given (DATA argument or 'data:' in the config file)")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("frames", "img_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.val_split < 1:
            raise UsageError("--val-split must be in [0, 1)")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup < 0 or not 0 <= self.label_smoothing < 1:
            raise UsageError("--lr must be > 0, --weight-decay and --warmup >= 0, --label-smoothing in [0, 1)")
        if self.workers < 0 or self.patience < 0 or self.clip_grad < 0:
            raise UsageError("--workers, --patience and --clip-grad must be >= 0")
        from ..decode import resolve_decoder  # torch-free until a run: the CLI starts without it

        resolve_decoder(self.decoder)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normalise_keys(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    known = {f.name for f in fields(FinetuneConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise StamError(f"{source}: unknown option {key!r}; valid options: {', '.join(sorted(known))}")
        out[name] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file (keys as in ``stam finetune --help``, dashes or underscores)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise StamError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StamError(f"cannot read config file {path}: {reason}") from None
    if not isinstance(data, dict):
        raise StamError(f"config file {path} must hold a mapping of option: value")
    return _normalise_keys(data, str(path))


def resolve_config(flags: Mapping[str, Any], config_file: Optional[str | Path] = None) -> FinetuneConfig:
    """Defaults, then the YAML file, then every flag that was given (``None`` means not given)."""
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(read_config_file(config_file))
    merged.update({key: value for key, value in _normalise_keys(flags, "flags").items() if value is not None})
    try:
        config = FinetuneConfig(**merged)
    except TypeError as err:
        raise StamError(f"invalid options: {err}") from None
    config.check()
    return config


def save_config(config: FinetuneConfig, run_dir: Path) -> Path:
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def load_run_config(run_dir: str | Path) -> FinetuneConfig:
    """The options of an earlier run (``RUN_DIR/config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise StamError(f"{run_dir} is not a stamcli fine-tuning run (no config.yaml)")
    return FinetuneConfig(**read_config_file(path))


def new_run_dir(config: FinetuneConfig) -> Path:
    """``--output`` or ``runs/finetune/<name>``; an existing, non-empty folder gets ``-2``, ``-3``...
    so an earlier run is never overwritten."""
    if config.output:
        base = Path(config.output)
    else:
        name = config.name or re.sub(r"[^\w.-]+", "_", Path(config.data).stem or "run")
        base = Path("runs") / "finetune" / name
    candidate, number = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate
