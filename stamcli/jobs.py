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

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional, Sequence, Union

from .errors import UsageError
from .inputs import DEFAULT_EXTENSIONS, collect_videos, parse_shard, shard
from .zoo import model_for_frames

if TYPE_CHECKING:
    from .labelmap import LabelMap
    from .thresholds import Thresholds

__all__ = ["DEFAULT_MODEL", "DEFAULT_OPSET", "DEFAULT_MAX_SHOT_S", "DEFAULT_EVENT_GAP_S", "DEFAULT_MIN_EVENT_S",
           "ENGINES", "parse_window", "PredictOptions", "parse_actors", "ModelJob", "VideoJob", "TaggingJob",
           "EmbedJob", "EvaluationJob", "ExportJob"]

DEFAULT_MODEL = "stam_16"  #: the model of predict and embed when neither --model nor --frames is given
DEFAULT_OPSET = 17  #: first ONNX opset with a LayerNormalization operator
DEFAULT_TARGET_PRECISION = 0.9  #: stam evaluate --calibrate: the precision each class's threshold must reach
DEFAULT_MIN_EXAMPLES = 10  #: stam evaluate --calibrate: true examples a class needs for a threshold
ENGINES = ("local", "ray")  #: where predict and embed run: this process, or a Ray cluster (stamcli.ray_engine)
#: ``--max-shot``: shots longer than this many seconds are tagged in equal parts no longer than it.
#: 10 s is the length of the Kinetics clips the zoo's models were trained on, so the frames a
#: window samples are spaced as in training (16 frames: one every 0.63 s).
DEFAULT_MAX_SHOT_S = 10.0
#: ``--event-gap``: bridge up to this many seconds between two stretches of the same label (a
#: window of 2 s windows, or a short shot, that flickers to another label).
DEFAULT_EVENT_GAP_S = 2.0
DEFAULT_MIN_EVENT_S = 1.0  #: ``--min-event``: drop events shorter than this many seconds


def parse_window(text) -> Union[float, str, None]:
    """``--window``: seconds (a float), or ``"shots"``; None stays None.  UsageError otherwise."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    value = str(text).strip().lower()
    if value == "shots":
        return "shots"
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--window takes a number of seconds or 'shots', got '{text}'") from None


@dataclass
class PredictOptions:
    """How a :class:`~stamcli.engine.Predictor` runs. ``num_frames=None`` uses the frame count the
    model was trained for; ``workers``/``streams`` None: chosen for the device
    (:mod:`stamcli.parallel`).

    ``clips`` x ``crops`` test-time views per video (:func:`stamcli.decode.read_views`): the model
    sees every view and the softmax is averaged over them.

    The user's own tags (:mod:`stamcli.labelmap`, :mod:`stamcli.thresholds`): ``label_map`` (a file,
    a packaged name or a :class:`~stamcli.labelmap.LabelMap`) turns the model's labels into tags
    before top-k; ``min_score`` and ``thresholds`` (a file from ``stam evaluate --calibrate`` or a
    :class:`~stamcli.thresholds.Thresholds`) leave out predictions scoring below them.

    ``engine="ray"`` runs the model in Ray actors and decodes in Ray tasks (:mod:`stamcli.ray_engine`):
    on the cluster at ``ray_address`` (None: ``$RAY_ADDRESS``, else a local Ray for the run), with
    ``ray_actors`` model actors (``"N"``, or ``"MIN-MAX"`` to autoscale; None: one per GPU, on CPUs
    one per model stream). ``device`` and ``precision`` then stay as given: each actor resolves
    them on its node.
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
    label_map: Union[None, str, "LabelMap"] = None  #: resolved: a LabelMap (read, not yet bound to a model)
    min_score: Optional[float] = None  #: leave out predictions below this score
    thresholds: Union[None, str, "Thresholds"] = None  #: resolved: a Thresholds
    engine: str = "local"  #: local (this process) or ray (a Ray cluster)
    ray_address: Optional[str] = None  #: engine ray: the cluster; None: $RAY_ADDRESS, else a local Ray for the run
    ray_actors: Optional[str] = None  #: engine ray: model actors, "N" or "MIN-MAX"; None: one per GPU / model stream

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

        engine = str(self.engine).strip().lower()
        if engine not in ENGINES:
            raise UsageError(f"--engine must be {' or '.join(ENGINES)}, got {self.engine!r}")
        if engine == "local" and (self.ray_address is not None or self.ray_actors is not None):
            raise UsageError("--ray-address and --ray-actors need --engine ray")
        for name, value in (("--batch-size", self.batch_size), ("--top-k", self.top_k),
                            ("--frames", self.num_frames), ("--workers", self.workers), ("--streams", self.streams),
                            ("--clips", self.clips)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1")
        if self.crops not in CROPS:
            raise UsageError(f"--crops must be {' or '.join(map(str, CROPS))}, got {self.crops}")
        decoder = resolve_decoder(self.decoder)  # a bad --decoder / STAM_DECODER stops the run here
        label_map, thresholds = self._own_tags()
        if engine == "ray":
            placement = self._checked_for_ray()
        else:
            device = resolve_device(self.device)
            placement = {"device": str(device), "precision": resolve_precision(self.precision, device)}
        resolved = replace(self, engine=engine, decoder=decoder, label_map=label_map, thresholds=thresholds,
                           **placement)
        resolved._resolved = True
        return resolved

    def _own_tags(self) -> tuple[Optional["LabelMap"], Optional["Thresholds"]]:
        """``label_map`` and ``thresholds`` read from their files and checked with ``min_score``: a bad
        file stops the run before a model is loaded (whether the map's labels are the model's is
        checked when it is bound to the model: :class:`~stamcli.engine.Predictor`)."""
        from .labelmap import LabelMap
        from .thresholds import Thresholds, check_min_score, score_floors

        check_min_score(self.min_score)
        label_map = self.label_map
        if label_map is not None and not isinstance(label_map, LabelMap):
            label_map = LabelMap.read(label_map)
        thresholds = self.thresholds
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            thresholds = Thresholds.read(thresholds)
        if thresholds is not None and label_map is not None:
            score_floors(label_map.tags, self.min_score, thresholds)  # thresholds of other classes than the tags
        return label_map, thresholds

    def _checked_for_ray(self) -> dict:
        """``engine="ray"``: usage errors for what cannot run there; ``device`` and ``precision`` checked
        but not resolved (this machine may have no GPU; each model actor resolves them on its node)."""
        from .device import PRECISIONS
        from .ray_engine import require_ray

        if self.workers is not None or self.streams is not None:
            raise UsageError("--workers and --streams set the local engine's threads; with --engine ray decoding "
                             "runs as Ray tasks and --ray-actors sets the model workers")
        device = (self.device or "auto").strip().lower()
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"with --engine ray --device is auto, cpu or cuda (each model worker gets its own GPU), "
                             f"got {self.device!r}")
        precision = (self.precision or "auto").strip().lower()
        if precision not in PRECISIONS:
            raise UsageError(f"invalid precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.ray_actors is not None:
            parse_actors(self.ray_actors)
        require_ray()  # Ray Data installed (a one-line error naming the extra otherwise)
        return {"device": device, "precision": precision}

    @property
    def actor_range(self) -> Optional[tuple[int, int]]:
        """``ray_actors`` as ``(min, max)`` (None: the default)."""
        return None if self.ray_actors is None else parse_actors(self.ray_actors)


def parse_actors(text: str) -> tuple[int, int]:
    """``--ray-actors``: ``"4"`` -> ``(4, 4)``; ``"1-8"`` -> ``(1, 8)`` (Ray Data scales the pool between them)."""
    low, sep, high = str(text).strip().partition("-")
    try:
        actors = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise UsageError(f"--ray-actors must be N or MIN-MAX (e.g. 4 or 1-8), got {text!r}") from None
    if actors[0] < 1 or actors[1] < actors[0]:
        raise UsageError(f"--ray-actors needs 1 <= MIN <= MAX, got {text!r}")
    return actors


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
    window: Union[float, str, None] = None  #: timeline: seconds per window, or "shots" (None: a record per video)
    stride: Optional[float] = None  #: timeline: seconds between window starts (None: the window)
    max_shot: Optional[float] = None  #: --window shots: longest window in seconds (None: DEFAULT_MAX_SHOT_S)
    events: bool = False  #: timeline: merge each video's windows into events
    event_gap: Optional[float] = None  #: --events: bridge gaps up to this many seconds (None: DEFAULT_EVENT_GAP_S)
    min_event: Optional[float] = None  #: --events: drop shorter events (None: DEFAULT_MIN_EVENT_S)

    def timeline_options(self):
        """``(window_s, shots)`` for :class:`~stamcli.timeline.TimelinePredictor` (``shots``: a
        :class:`~stamcli.timeline.ShotWindows` with ``--window shots``, else None), checked (UsageError)."""
        from .timeline import ShotWindows, check_timeline

        window = parse_window(self.window)
        shots = window == "shots"
        if self.max_shot is not None and not shots:
            raise UsageError("--max-shot needs --window shots")
        check_timeline(None if shots else window, self.stride, shots=shots)
        if not shots:
            return window, None
        found = ShotWindows(max_shot_s=DEFAULT_MAX_SHOT_S if self.max_shot is None else self.max_shot)
        found.check()
        return None, found

    def event_options(self):
        """``--events`` as :class:`~stamcli.events.EventOptions` (None without it), checked (UsageError)."""
        from .events import EventOptions

        if not self.events:
            if self.event_gap is not None or self.min_event is not None:
                raise UsageError("--event-gap and --min-event need --events")
            return None
        if self.window is None:
            raise UsageError("--events needs --window (events are made of a video's windows)")
        options = EventOptions(gap_s=DEFAULT_EVENT_GAP_S if self.event_gap is None else self.event_gap,
                               min_event_s=DEFAULT_MIN_EVENT_S if self.min_event is None else self.min_event)
        options.check()
        return options


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
    calibrate: Optional[str] = None  #: write per-class thresholds reaching ``target_precision`` to this YAML file
    target_precision: Optional[float] = None  #: with ``calibrate``; None: DEFAULT_TARGET_PRECISION
    min_examples: Optional[int] = None  #: with ``calibrate``; None: DEFAULT_MIN_EXAMPLES
    options: PredictOptions = field(default_factory=PredictOptions)  #: label_map: DATA is labelled with tags

    def calibration(self) -> tuple[float, int]:
        """``(target_precision, min_examples)`` with their defaults, checked; a :class:`UsageError` when
        they are given without ``calibrate`` or out of range."""
        if self.calibrate is None and (self.target_precision is not None or self.min_examples is not None):
            raise UsageError("--target-precision and --min-examples need --calibrate FILE")
        from .thresholds import check_calibration

        target = DEFAULT_TARGET_PRECISION if self.target_precision is None else self.target_precision
        min_examples = DEFAULT_MIN_EXAMPLES if self.min_examples is None else self.min_examples
        check_calibration(target, min_examples)
        return target, min_examples


@dataclass(kw_only=True)
class ExportJob(ModelJob):
    """Everything ``stam export`` was asked to do."""

    model: str
    output: str  #: .pt/.ts: TorchScript, .onnx: ONNX
    format: Optional[str] = None  #: torchscript or onnx; None: from the output's extension
    num_frames: Optional[int] = None  #: fixed frame count of the export; None: the model's own
    opset: int = DEFAULT_OPSET
    verify: bool = True  #: run the exported file and compare it with PyTorch
