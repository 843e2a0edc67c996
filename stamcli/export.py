"""Export a STAM model for serving without stamcli: TorchScript or ONNX.

The exported model takes ``videos``, float32 ``(batch, F, 3, S, S)`` RGB in [0, 1] (preprocessed
as ``stam predict`` does, see :func:`stamcli.decode.read_clip`), and returns ``logits``
``(batch, classes)``. The batch is dynamic; the frame count ``F`` and the size ``S`` are fixed
at export (``num_frames`` resamples the temporal position embedding once, as
:meth:`stamcli.model.STAM.set_frames` does). The labels, the architecture and the preprocessing
travel inside the file as one JSON document (:func:`export_metadata`): in a TorchScript file as
the extra file ``stamcli.json``, in an ONNX file as the ``stamcli`` entry of ``metadata_props``.
:func:`read_export_metadata` reads it back from either.

TorchScript comes from :func:`torch.jit.trace` (with an input check scripted in, so a wrong frame
count is a clear error); ONNX from the TorchScript-based exporter of :func:`torch.onnx.export`
(``dynamo=False``: it needs no onnxscript, and onnxruntime rejects a wrong frame count itself).
Unless ``verify=False``, the exported file is loaded back and run at a batch size other than the
traced one; its logits must match PyTorch's within :data:`VERIFY_ATOL`.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn

from .checkpoints import preprocessing_of
from .errors import StamError, UsageError
from .fileutils import atomic_path
from .jobs import DEFAULT_OPSET, ExportJob
from .model import STAM

__all__ = ["EXPORT_FORMATS", "VERIFY_ATOL", "DEFAULT_OPSET", "ExportResult", "export_model", "export_metadata",
           "format_for_export", "read_export_metadata", "require_onnx", "run_export"]

EXPORT_FORMATS = ("torchscript", "onnx")
_SUFFIXES = {".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".onnx": "onnx"}
METADATA_KEY = "stamcli"  #: ONNX metadata_props key; the TorchScript extra file is ``stamcli.json``
EXTRA_FILE = "stamcli.json"
FORMAT_NAME = "stamcli-export"
FORMAT_VERSION = 1
VERIFY_ATOL = 1e-4  #: largest absolute logit difference from PyTorch that verification accepts
TRACE_BATCH = 2  #: batch size of the example input the model is traced with
ONNX_HINT = 'ONNX export needs the onnx and onnxruntime packages: pip install "stamcli[onnx]"'


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    path: Path
    format: str
    num_frames: int
    img_size: int
    max_abs_diff: Optional[float]  #: largest logit difference from PyTorch (None: not verified)


def require_onnx() -> None:
    """StamError naming the extra to install when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise StamError(ONNX_HINT) from None


def format_for_export(output: Union[str, Path], fmt: Optional[str] = None) -> str:
    """``fmt`` when given, else from ``output``'s extension (``.onnx``; ``.pt``, ``.ts``: TorchScript)."""
    if fmt:
        name = fmt.strip().lower()
        if name not in EXPORT_FORMATS:
            raise UsageError(f"unknown export format {fmt!r}: choose torchscript or onnx")
        return name
    suffix = Path(output).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UsageError(f"cannot tell the export format of '{output}' from its extension: "
                         "pass --format torchscript or --format onnx")
    return _SUFFIXES[suffix]


def export_metadata(model: STAM) -> dict[str, Any]:
    """The JSON document stored in an exported file."""
    from . import __version__

    config = model.config
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "labels": list(model.labels),
        "config": config.to_dict(),
        "preprocessing": preprocessing_of(config),
        "input": {"name": "videos", "shape": ["batch", config.frames, 3, config.img_size, config.img_size],
                  "dtype": "float32", "range": [0.0, 1.0], "channels": "RGB"},
        "output": {"name": "logits", "shape": ["batch", config.num_classes], "dtype": "float32"},
        "stamcli_version": __version__,
    }


def _check_videos(videos: torch.Tensor, num_frames: int, size: int) -> torch.Tensor:
    """``videos`` unchanged when it is ``(batch, num_frames, 3, size, size)``; a clear error otherwise."""
    if videos.dim() != 5 or videos.size(1) != num_frames or videos.size(2) != 3 or videos.size(3) != size \
            or videos.size(4) != size:
        raise ValueError("expected videos of shape (batch, " + str(num_frames) + ", 3, " + str(size) + ", "
                         + str(size) + "), float32 in [0, 1], got " + str(videos.shape))
    return videos


@functools.cache
def _scripted_check():
    """:func:`_check_videos` as TorchScript, so that a trace keeps it (compiled on first use)."""
    with _quiet_export():
        return torch.jit.script(_check_videos)


class _Exported(nn.Module):
    """``videos -> logits`` of ``model``, with the scripted input check (TorchScript only)."""

    def __init__(self, model: STAM, check: bool):
        super().__init__()
        self.model, self.check = model, _scripted_check() if check else None
        self.num_frames, self.size = model.config.frames, model.config.img_size

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if self.check is not None:
            videos = self.check(videos, self.num_frames, self.size)
        return self.model(videos)


@contextmanager
def _standard_ops() -> Iterator[None]:
    """Trace ``nn.TransformerEncoder`` through its standard ops: its inference fast path is one
    private fused op that the ONNX exporter cannot translate and that ties a TorchScript file to
    this torch build."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Tracing warns about constants it folds (frame count, sizes: fixed on purpose) and about
    deprecations of the exporters; none of it is for the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _example(batch: int, num_frames: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, num_frames, 3, size, size), generator=generator)


def _check_num_frames(num_frames: Optional[int]) -> None:
    if num_frames is not None and num_frames < 1:
        raise UsageError("--frames must be at least 1")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, meta: str) -> None:
    traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: meta})


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, meta: str, opset: int) -> None:
    import onnx

    torch.onnx.export(
        module, (example,), str(path), dynamo=False, opset_version=opset, input_names=["videos"],
        output_names=["logits"], dynamic_axes={"videos": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta
    proto.producer_name = "stamcli"
    onnx.save(proto, str(path))


def run_exported(path: Union[str, Path], videos: torch.Tensor, fmt: Optional[str] = None) -> torch.Tensor:
    """Logits of an exported file on ``videos`` (TorchScript via torch, ONNX via onnxruntime on the CPU)."""
    fmt = format_for_export(path, fmt)
    if fmt == "torchscript":
        with torch.no_grad(), _quiet_export():
            return torch.jit.load(str(path), map_location="cpu")(videos)
    require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"videos": videos.numpy()})[0])


def export_model(
    model: STAM,
    path: Union[str, Path],
    format: Optional[str] = None,
    *,
    num_frames: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> ExportResult:
    """Write ``model`` to ``path`` as TorchScript or ONNX (``format``: from the extension when None).

    ``num_frames``: the fixed frame count of the exported model (its own by default). ``opset``:
    the ONNX opset. The model is exported in float32 on the CPU from a copy, so ``model`` itself
    is left as it was. The file is written atomically. Unless ``verify`` is False, it is then run
    at batch size 1 on a random input and must match PyTorch within :data:`VERIFY_ATOL`.
    """
    fmt = format_for_export(path, format)
    _check_num_frames(num_frames)
    if fmt == "onnx":
        require_onnx()
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--output {path} is a directory; give a file name")
    model = copy.deepcopy(model).float().cpu().eval()
    model.frame_chunk = None  # one spatial pass: a traced chunk loop would fix the batch size
    if num_frames is not None:
        model.set_frames(num_frames)
    size, num_frames = model.config.img_size, model.config.frames
    meta = json.dumps(export_metadata(model))
    module = _Exported(model, check=fmt == "torchscript").eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:  # renamed into place only once written and verified
            with _quiet_export(), _standard_ops(), torch.no_grad():
                if fmt == "torchscript":
                    _export_torchscript(module, _example(TRACE_BATCH, num_frames, size, 0), tmp, meta)
                else:
                    _export_onnx(module, _example(TRACE_BATCH, num_frames, size, 0), tmp, meta, opset)
            diff = None
            if verify:
                videos = _example(1, num_frames, size, 1)
                with torch.no_grad():
                    expected = model(videos)
                diff = (run_exported(tmp, videos, fmt) - expected).abs().max().item()
                if not diff <= VERIFY_ATOL:
                    raise StamError(f"the exported {fmt} model does not match PyTorch (max abs logit difference "
                                    f"{diff:.3g} > {VERIFY_ATOL:g}); not written")
    except StamError:
        raise
    except Exception as err:  # exporter failures are long and technical: one line for the user
        raise StamError(f"{fmt} export failed: {_first_line(err)} (run with --debug for details)") from err
    return ExportResult(path, fmt, num_frames, size, diff)


def run_export(job: ExportJob) -> ExportResult:
    """``stam export``: the format checked (and ONNX's packages) before the model is loaded or
    downloaded, then :func:`export_model`."""
    fmt = format_for_export(job.output, job.format)
    if fmt == "onnx":
        require_onnx()
    _check_num_frames(job.num_frames)
    return export_model(job.load_model(), job.output, fmt, num_frames=job.num_frames, opset=job.opset,
                        verify=job.verify)


def read_export_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """The ``stamcli`` document of an exported file (labels, config, preprocessing, input/output)."""
    path = Path(path)
    if not path.is_file():
        raise StamError(f"exported model not found: {path}")
    fmt = format_for_export(path)
    try:
        if fmt == "torchscript":
            extra = {EXTRA_FILE: ""}
            with _quiet_export():
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            raw = extra[EXTRA_FILE]
        else:
            require_onnx()
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            raw = props.get(METADATA_KEY, "")
    except StamError:
        raise
    except Exception as err:
        raise StamError(f"cannot read {path} as a {fmt} model: {_first_line(err)}") from None
    if not raw:
        raise StamError(f"{path} has no stamcli metadata (not exported by stam export)")
    return json.loads(raw)
