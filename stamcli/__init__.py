"""stamcli: tag videos with action labels using STAM (Space Time Attention Model).

Public API::

    import stamcli
    stamcli.available_models()                 # ['stam_8', 'stam_16', 'stam_32', 'stam_64']
    model = stamcli.load_model("stam_16")      # zoo name (downloaded if missing) or a checkpoint file
    model = stamcli.create_model("vit_tiny_patch16_224", frames=8, num_classes=5)
    stamcli.save_checkpoint(model, "run/best.safetensors")
    stamcli.export_model(model, "stam_16.onnx")  # or .pt for TorchScript
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from .errors import CheckpointError, DownloadError, StamError, UsageError, VideoError
from .zoo import available_models, get_model_info

if TYPE_CHECKING:
    from .model import STAM

# Names that need torch/timm are imported on first use, so `stam --help` and
# `stam download-weights` start in a fraction of a second.
_LAZY = {
    "STAM": "model", "STAMConfig": "model", "create_model": "model",
    "load_checkpoint": "checkpoints", "read_checkpoint_metadata": "checkpoints", "save_checkpoint": "checkpoints",
    "Predictor": "engine", "predict": "engine",
    "PredictOptions": "jobs", "TaggingJob": "jobs", "EmbedJob": "jobs", "EvaluationJob": "jobs", "ExportJob": "jobs",
    "run_tagging": "tagging",
    "embed": "embedding", "load_embeddings": "embedding", "run_embedding": "embedding",
    "TimelinePredictor": "timeline",
    "LabelMap": "labelmap", "Thresholds": "thresholds", "calibrate_thresholds": "thresholds",
    "FinetuneConfig": "train.config", "finetune": "train.finetune", "evaluate": "train.evaluate",
    "export_model": "export", "read_export_metadata": "export",
}

__all__ = [
    "CheckpointError", "DownloadError", "StamError", "UsageError", "VideoError", "available_models", "get_model_info",
    "load_model", "__version__", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(
    name_or_path: Union[str, Path],
    *,
    device: Any = "cpu",
    weights_dir: Union[None, str, Path] = None,
    labels: Union[None, str, Path, Sequence[str]] = None,
    arch: Union[None, str, Path, Mapping[str, Any]] = None,
    trust_checkpoint: bool = False,
    offline: Optional[bool] = None,
    mirror: Optional[str] = None,
    progress: bool = True,
) -> "STAM":
    """A ready-to-run STAM model in eval mode.

    ``name_or_path`` is a zoo name (``stam_16``: fetched into ``weights_dir`` when missing, unless
    offline, and verified against its download record) or a checkpoint file (the authors' ``.pth``
    or the project's ``.safetensors``).
    """
    from .checkpoints import load_checkpoint, read_arch
    from .weights import ensure_weights

    text = str(name_or_path)
    if text in available_models():
        info = get_model_info(text)
        path = ensure_weights(text, weights_dir, mirror=mirror, offline=offline, progress=progress)
        zoo_arch = dict(info.architecture, frames=info.frames, img_size=info.img_size)
        zoo_arch.update(read_arch(arch))
        model = load_checkpoint(path, arch=zoo_arch, labels=labels, trust_checkpoint=trust_checkpoint, name=text)
    elif Path(text).exists() or Path(text).suffix in (".pth", ".pt", ".safetensors", ".bin"):
        model = load_checkpoint(text, arch=arch, labels=labels, trust_checkpoint=trust_checkpoint)
    else:
        get_model_info(text)  # raises: unknown model name, listing the known ones
        raise AssertionError("unreachable")
    return model.to(device)
