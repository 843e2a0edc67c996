"""What each command is asked to do, as dataclasses: one job object per command, one library call per job.

``stam predict`` builds a :class:`TaggingJob` and calls :func:`stamcli.tagging.run_tagging`,
``stam embed`` an :class:`EmbedJob` for :func:`stamcli.embedding.run_embedding`, ``stam evaluate``
an :class:`EvaluationJob` for :func:`stamcli.train.evaluate.run_evaluation`, ``stam export`` an
:class:`ExportJob` for :func:`stamcli.export.run_export` (``stam finetune`` has its own
:class:`~stamcli.train.config.FinetuneConfig`). Python users build the same objects.

The defaults live here, and ``stam <command> --help`` shows them from here. This module imports
no torch, so that the command line starts fast: what needs torch is imported where it is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from .errors import UsageError
from .inputs import DEFAULT_EXTENSIONS, collect_videos, parse_shard, shard
from .zoo import model_for_frames

__all__ = ["DEFAULT_MODEL", "DEFAULT_OPSET", "PredictOptions", "ModelJob", "VideoJob", "TaggingJob", "EmbedJob",
           "EvaluationJob", "ExportJob"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stam_16"  #: the model of predict and embed when neither --model nor --frames is given
DEFAULT_OPSET = 17  #: first ONNX opset with a LayerNormalization operator


@dataclass
class PredictOptions:
    """How a :class:`~stamcli.engine.Predictor` runs. ``num_frames=None`` uses the frame count the
    model was trained for; ``workers``/``streams`` None: chosen for the device
    (:mod:`stamcli.parallel`).

    ``clips`` x ``crops`` test-time views per video (:func:`stamcli.decode.read_views`): the model
    sees every view and the softmax is averaged over them.
    """

    num_frames: Optional[int] = None
    top_k: int = 5
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    workers: Optional[int] = None
    streams: Optional[int] = None
    clips: int = 1
    crops: int = 1
    decoder: Optional[str] = None  #: auto, pyav or opencv; None: $STAM_DECODER, else auto

    @property
    def views(self) -> int:
        """Views per video the model runs on."""
        return self.clips * self.crops

    def resolve(self) -> "PredictOptions":
        """A checked copy with ``device`` and ``precision`` resolved (``auto`` -> ``cpu``, ``fp32``, ...).

        This is where the options are checked, once per run and before a model is loaded; ``self``
        is never changed. A copy this method returned is returned as it is (not checked again).
        """
        if getattr(self, "_resolved", False):
            return self
        from .device import resolve_device, resolve_precision
        from .decode import CROPS, resolve_decoder

        for name, value in (("--batch-size", self.batch_size), ("--top-k", self.top_k),
                            ("--frames", self.num_frames), ("--workers", self.workers), ("--streams", self.streams),
                            ("--clips", self.clips)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.crops not in CROPS:
            raise UsageError(f"--crops must be {' or '.join(map(str, CROPS))}, got {self.crops}")
        decoder = resolve_decoder(self.decoder)  # a bad --decoder / STAM_DECODER stops the run here
        device = resolve_device(self.device)
        streams = self.streams
        if device.type == "cuda" and streams is not None and streams > 1:
            log.warning("--streams %d is for the CPU: on a GPU one stream at a larger --batch-size does the same "
                        "work with less memory; using 1", streams)
            streams = 1
        resolved = replace(self, device=str(device), precision=resolve_precision(self.precision, device),
                           streams=streams, decoder=decoder)
        resolved._resolved = True
        return resolved


@dataclass(kw_only=True)
class ModelJob:
    """How a command finds its model: a zoo name (fetched into ``weights_dir`` when missing, unless
    ``offline``) or a checkpoint file (:func:`stamcli.load_model`). Each job declares its ``model``
    field itself (required for evaluate and export, optional for predict and embed)."""

    model: Optional[str]  #: zoo name or checkpoint file
    labels: Optional[str] = None  #: label names, one per line (default: the checkpoint's)
    arch: Optional[str] = None  #: architecture JSON for an authors'-format checkpoint
    weights_dir: Optional[str] = None  #: None: $STAM_WEIGHTS_DIR or ./weights
    mirror: Optional[str] = None  #: None: $STAM_MIRROR or the authors' host
    offline: Optional[bool] = None  #: None: $STAM_OFFLINE
    trust_checkpoint: bool = False  #: allow a checkpoint that needs full unpickling

    def model_name(self) -> str:
        """The zoo name or checkpoint file to load."""
        return self.model or DEFAULT_MODEL

    def load_model(self, progress: bool = True):
        """The model, downloaded if it is a zoo model that is missing."""
        from . import load_model

        return load_model(
            self.model_name(), weights_dir=self.weights_dir, labels=self.labels, arch=self.arch,
            trust_checkpoint=self.trust_checkpoint, offline=self.offline, mirror=self.mirror, progress=progress,
        )


@dataclass(kw_only=True)
class VideoJob(ModelJob):
    """What every per-video command (``predict``, ``embed``) is asked: which videos, which model, how to run it."""

    paths: Sequence[str]  #: video files, folders, glob patterns or @list files
    model: Optional[str] = None  #: None: the zoo model for ``options.num_frames``, else stam_16
    recursive: bool = True
    extensions: Sequence[str] = DEFAULT_EXTENSIONS
    resume: bool = False
    shard: Optional[str] = None  #: "I/N": every N-th video starting at I
    options: PredictOptions = field(default_factory=PredictOptions)

    def model_name(self) -> str:
        """``model`` when given, else the zoo model trained for ``options.num_frames`` (stam_16 by default)."""
        if self.model:
            return self.model
        if self.options.num_frames:
            return model_for_frames(self.options.num_frames).name
        return DEFAULT_MODEL

    def videos(self) -> list[str]:
        """The input videos, in order, and only this machine's ``--shard`` of them."""
        videos = collect_videos(self.paths, recursive=self.recursive, extensions=tuple(self.extensions))
        return shard(videos, parse_shard(self.shard)) if self.shard else videos


@dataclass(kw_only=True)
class TaggingJob(VideoJob):
    """Everything ``stam predict`` was asked to do."""

    output: Optional[str] = None  #: None: a table on stdout
    format: Optional[str] = None  #: None: from the output's extension
    preview: Optional[str] = None  #: folder for a contact sheet per ok video (stamcli.preview)
    window: Optional[float] = None  #: timeline: seconds per window (None: one record per video)
    stride: Optional[float] = None  #: timeline: seconds between window starts (None: the window)


@dataclass(kw_only=True)
class EmbedJob(VideoJob):
    """Everything ``stam embed`` was asked to do (the input and model options mean what they do for predict)."""

    output: str  #: .npy or .safetensors, with an index .csv beside it
    per_frame: bool = False


@dataclass(kw_only=True)
class EvaluationJob(ModelJob):
    """Everything ``stam evaluate`` was asked to do."""

    data: str  #: CSV of path,label or a folder of class folders
    model: str
    output: Optional[str] = None  #: report JSON (+ confusion CSV/PNG, misclassified CSV beside it)
    skip_bad: bool = False  #: drop bad examples instead of stopping
    options: PredictOptions = field(default_factory=PredictOptions)


@dataclass(kw_only=True)
class ExportJob(ModelJob):
    """Everything ``stam export`` was asked to do."""

    model: str
    output: str  #: .pt/.ts: TorchScript, .onnx: ONNX
    format: Optional[str] = None  #: torchscript or onnx; None: from the output's extension
    num_frames: Optional[int] = None  #: fixed frame count of the export; None: the model's own
    opset: int = DEFAULT_OPSET
    verify: bool = True  #: run the exported file and compare it with PyTorch
