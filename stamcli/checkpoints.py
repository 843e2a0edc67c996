"""Reading and writing STAM checkpoints.

Two formats:

* **The authors' files** (``stam_16.pth``...): a torch pickle of ``{"model": state_dict}`` with the
  key names of ``../shared/docs/stam-reference.md``. They carry no architecture, so it comes from the
  zoo registry, from the caller (``arch``: a dict or a JSON file; a ``<name>.json`` beside the
  checkpoint is used automatically), or is inferred from the tensor shapes.
* **The project's own files** (``*.safetensors``, written by fine-tuning): the tensors plus a
  ``stamcli`` metadata entry (JSON) with the architecture, labels, preprocessing, stamcli version
  and training provenance, so ``stam predict --model run/best.safetensors`` needs no other flag.

Pickles are never unpickled beyond tensors (``weights_only=True``) unless the caller trusts the file.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, StamError
from .fileutils import atomic_path
from .model import STAM, STAMConfig
from .zoo import read_labels_file

FORMAT_NAME = "stamcli-checkpoint"
FORMAT_VERSION = 1
AUTHORS_HEAD_DIM = 64  # timm's ViT convention: heads = embed_dim / 64
AUTHORS_TEMPORAL_HEADS = 8  # nn.TransformerEncoderLayer(d_model, nhead=8) in the authors' code
AUTHORS_BACKBONE = "vit_base_patch16_224"

ArchSpec = Union[None, str, Path, Mapping[str, Any]]  # a dict or a JSON file
LabelsSpec = Union[None, str, Path, Sequence[str]]  # a list or a one-name-per-line file


# --------------------------------------------------------------------------- key names

def authors_to_stamcli_key(key: str) -> str:
    """``blocks.0.norm1.weight`` -> ``spatial.blocks.0.norm1.weight``; ``aggregate.*`` -> ``temporal.*``."""
    if key.startswith("aggregate."):
        return "temporal." + key[len("aggregate."):]
    if key.startswith("head."):
        return key
    return "spatial." + key


def stamcli_to_authors_key(key: str) -> str:
    """The inverse of :func:`authors_to_stamcli_key`."""
    if key.startswith("temporal."):
        return "aggregate." + key[len("temporal."):]
    if key.startswith("spatial."):
        return key[len("spatial."):]
    return key


# --------------------------------------------------------------------------- file sniffing

def _sniff(path: Path) -> str:
    """``"torch-zip"``, ``"torch-legacy"`` or ``"safetensors"``; anything else is an error."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    if not head:
        raise CheckpointError(f"{path} is empty, not a checkpoint")
    # safetensors first: its 8-byte header length can start with 0x80, a pickle's first byte
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    raise CheckpointError(
        f"{path} is not a checkpoint (expected a PyTorch .pth file or a stamcli .safetensors file)"
    )


def _torch_load(path: Path, kind: str, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=kind == "torch-zip")
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path} holds Python objects besides tensors; refusing to unpickle it because that "
                "can run arbitrary code. If you trust the file, pass --trust-checkpoint "
                "(trust_checkpoint=True in Python)"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a checkpoint ({err})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({reason}); download or copy it again") from None


def _authors_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside an authors'-format object: ``{"model": sd}``, ``{"state_dict": sd}`` or ``sd``."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a STAM state dict (expected {{'model': state_dict}})")
    return {key.removeprefix("module."): value for key, value in obj.items()}


# --------------------------------------------------------------------------- architecture

def _count_indexed(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indexes = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indexes) + 1 if indexes else 0


def _require(state: Mapping[str, torch.Tensor], path: Path, *keys: str) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"{path} is missing keys needed to read its architecture: {', '.join(missing)}")


def infer_architecture(
    state: Mapping[str, torch.Tensor], path: Path = Path("checkpoint"), num_heads: Optional[int] = None
) -> dict[str, Any]:
    """Architecture of an authors'-format state dict, read from its tensor shapes.

    Spatial heads cannot be read from shapes: unless ``num_heads`` is given they follow timm's
    convention (embed_dim / 64), and the temporal heads the authors' fixed 8. Pass ``arch`` to the
    loader for anything else.
    """
    _require(
        state, path, "cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight",
        "aggregate.pos_embed", "aggregate.transformer_enc.layers.0.linear1.weight", "head.weight",
    )
    embed_dim = state["cls_token"].shape[-1]
    patch_size = state["patch_embed.proj.weight"].shape[-1]
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    if num_heads is None and embed_dim % AUTHORS_HEAD_DIM:
        raise CheckpointError(
            f"{path}: cannot infer the number of attention heads for embedding size {embed_dim} "
            f"(not a multiple of {AUTHORS_HEAD_DIM}); give the architecture as a JSON file "
            "(--arch FILE, or a .json file of the same name beside the checkpoint)"
        )
    return {
        "backbone": AUTHORS_BACKBONE,
        "embed_dim": embed_dim,
        "depth": _count_indexed(state, "blocks."),
        "num_heads": num_heads or embed_dim // AUTHORS_HEAD_DIM,
        "patch_size": patch_size,
        "img_size": grid * patch_size,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "temporal_layers": _count_indexed(state, "aggregate.transformer_enc.layers."),
        "temporal_heads": AUTHORS_TEMPORAL_HEADS,
        "temporal_ff": state["aggregate.transformer_enc.layers.0.linear1.weight"].shape[0],
        "frames": state["aggregate.pos_embed"].shape[1] - 1,
        "num_classes": state["head.weight"].shape[0],
    }


def read_arch(arch: ArchSpec) -> dict[str, Any]:
    """An architecture given as a dict or a JSON file (``stam_tiny_official.json`` style)."""
    if arch is None:
        return {}
    if isinstance(arch, Mapping):
        return dict(arch)
    path = Path(arch)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StamError(f"architecture file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise StamError(f"cannot read architecture file {path}: {err}") from None
    if not isinstance(data, dict):
        raise StamError(f"architecture file {path} must hold a JSON object")
    return data


def _arch_config(arch: Mapping[str, Any], inferred: Mapping[str, Any]) -> STAMConfig:
    merged = dict(inferred)
    merged.update({key: value for key, value in arch.items() if value is not None})
    merged.setdefault("backbone", AUTHORS_BACKBONE)
    return STAMConfig.from_dict(merged)


# --------------------------------------------------------------------------- state dict -> model

def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in tensor.shape) + ")"


def _list(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_into(
    model: STAM,
    state: Mapping[str, torch.Tensor],
    path: Path,
    file_key: Callable[[str], str] = lambda key: key,
) -> None:
    """Copy ``state`` (stamcli key names) into ``model``; any missing, unexpected or misshapen key is
    an error naming the key as the file spells it (``file_key`` maps stamcli names to the file's)."""
    expected = model.state_dict()
    missing = [file_key(key) for key in expected if key not in state]
    unexpected = [file_key(key) for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(parts))
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: shape mismatch for {file_key(key)}: the model expects {_shape(tensor)}, "
                f"the file has {_shape(state[key])}"
            )
    model.load_state_dict(state, strict=True)


def _read_labels(labels: LabelsSpec) -> Optional[list[str]]:
    """Label names from a list or a file; ``None`` leaves the model's defaults (STAM checks the count)."""
    if labels is None:
        return None
    return read_labels_file(labels) if isinstance(labels, (str, Path)) else list(labels)


def load_authors_checkpoint(
    path: Union[str, Path],
    *,
    arch: ArchSpec = None,
    labels: LabelsSpec = None,
    trust_checkpoint: bool = False,
    name: Optional[str] = None,
) -> STAM:
    """A STAM model from an authors'-format ``.pth`` file.

    ``arch`` (dict or JSON file) overrides what the shapes say; without it, ``<stem>.json`` beside
    the file is used when present. A 400-way head gets the Kinetics-400 names unless ``labels``
    (a list or a one-name-per-line file) is given; other sizes get ``class_<i>``.
    """
    path = Path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        raise CheckpointError(f"{path} is a safetensors file, not an authors' .pth checkpoint")
    state = _authors_state_dict(_torch_load(path, kind, trust_checkpoint), path)
    if arch is None and path.with_suffix(".json").is_file():
        arch = path.with_suffix(".json")
    given = read_arch(arch)
    try:
        inferred = infer_architecture(state, path, num_heads=given.get("num_heads"))
    except CheckpointError:
        if not given:
            raise
        inferred = {}  # the given architecture must then be complete; loading names any missing key
    config = _arch_config(given, inferred)
    model = STAM(config, labels=_read_labels(labels), name=name or path.name)
    load_state_into(model, {authors_to_stamcli_key(k): v for k, v in state.items()}, path, stamcli_to_authors_key)
    return model.eval()


# --------------------------------------------------------------------------- the project's format

def preprocessing_of(config: STAMConfig) -> dict[str, Any]:
    """How frames must be prepared for a model (stored in its checkpoints)."""
    return {
        "img_size": config.img_size,
        "resize_size": int(config.img_size / 0.875),
        "interpolation": "bilinear-antialias",
        "crop": "center",
        "scale": "0-1",
        "mean": None,
        "std": None,
        "sampling": "uniform: floor((i + 0.5) * n / frames)",
    }


def save_checkpoint(
    model: STAM,
    path: Union[str, Path],
    *,
    provenance: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``model`` in the project's format (safetensors + metadata), atomically."""
    from . import __version__

    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "labels": list(model.labels),
        "preprocessing": preprocessing_of(model.config),
        "stamcli_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provenance": dict(provenance or {}),
    }
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"stamcli": json.dumps(meta)})
    return path


def read_checkpoint_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """The ``stamcli`` metadata of a project checkpoint (without loading its tensors)."""
    path = Path(path)
    if _sniff(path) != "safetensors":
        raise CheckpointError(f"{path} is not a stamcli .safetensors checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("stamcli")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err}); copy it again") from None
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without stamcli metadata (not a STAM checkpoint)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path} has unreadable stamcli metadata") from None
    if meta.get("format") != FORMAT_NAME or meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is in checkpoint format {meta.get('format')} v{meta.get('format_version')}; "
            f"this stamcli reads {FORMAT_NAME} v{FORMAT_VERSION} (upgrade stamcli)"
        )
    return meta


def load_stamcli_checkpoint(
    path: Union[str, Path],
    *,
    labels: LabelsSpec = None,
    name: Optional[str] = None,
) -> STAM:
    """A STAM model from a project checkpoint; labels come from the file unless ``labels`` is given."""
    path = Path(path)
    meta = read_checkpoint_metadata(path)
    config = STAMConfig.from_dict(meta["config"])
    model = STAM(config, labels=_read_labels(labels) or meta["labels"], name=name or path.name)
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err}); copy it again") from None
    load_state_into(model, state, path)
    model.provenance = meta.get("provenance", {})
    return model.eval()


def load_checkpoint(
    path: Union[str, Path],
    *,
    arch: ArchSpec = None,
    labels: LabelsSpec = None,
    trust_checkpoint: bool = False,
    name: Optional[str] = None,
) -> STAM:
    """A STAM model from any checkpoint file, whichever its format."""
    path = Path(path)
    if _sniff(path) == "safetensors":
        return load_stamcli_checkpoint(path, labels=labels, name=name)
    return load_authors_checkpoint(path, arch=arch, labels=labels, trust_checkpoint=trust_checkpoint, name=name)
