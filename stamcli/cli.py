"""The ``stam`` command: a thin Typer layer over the Python API.

Every command has the same shape: it builds the job object of its library call from its options
(:mod:`stamcli.jobs`; :class:`~stamcli.train.config.FinetuneConfig` for finetune), calls that one
function and renders the result with rich. Options that several commands share are declared once
below, with one help text each, and every default ``--help`` shows is read from the job classes.
User errors (:class:`~stamcli.errors.StamError`) are printed on one line with exit code 1;
``--debug`` shows the traceback instead. Usage errors exit with 2 (Click's convention).
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import StamError, UsageError
from .inputs import parse_extensions
from .jobs import (DEFAULT_EVENT_GAP_S, DEFAULT_MAX_SHOT_S, DEFAULT_MIN_EVENT_S, DEFAULT_MODEL, EmbedJob, EvaluationJob,
                   ExportJob, PredictOptions, TaggingJob, parse_window)
from .jobs import DEFAULT_MIN_EXAMPLES, DEFAULT_TARGET_PRECISION  # stam evaluate --calibrate
from .train.config import FinetuneConfig

app = typer.Typer(
    name="stam",
    help="Tag videos with action labels using STAM (Space Time Attention Model).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stderr = Console(stderr=True)
_state = {"debug": False}

# The defaults each command shows and uses: those of its job class (placeholders for required fields).
PREDICT = PredictOptions()
TAGGING = TaggingJob(paths=())
EMBEDDING = EmbedJob(paths=(), output="")
EVALUATION = EvaluationJob(data="", model="")
EXPORT = ExportJob(model="", output="")
FINETUNE = FinetuneConfig()

# --------------------------------------------------------------------------- shared options
# Declared once: an option means the same, and says the same in --help, in every command that has it.

WeightsDirOption = Annotated[
    Optional[Path],
    typer.Option("--weights-dir", help="Where zoo checkpoints live (default: $STAM_WEIGHTS_DIR or ./weights)."),
]
MirrorOption = Annotated[
    Optional[str],
    typer.Option("--mirror", help="Fetch URL/<file name> instead of the authors' host (env: STAM_MIRROR)."),
]
OfflineOption = Annotated[
    Optional[bool], typer.Option("--offline/--online", help="Never download weights (env: STAM_OFFLINE).")
]
ArchOption = Annotated[
    Optional[Path], typer.Option("--arch", help="Architecture JSON for an authors'-format checkpoint.")
]
TrustCheckpointOption = Annotated[
    bool, typer.Option("--trust-checkpoint", help="Allow a checkpoint that needs full unpickling.")
]
LabelsOption = Annotated[Optional[Path], typer.Option("--labels", help="Label names, one per line.")]
ModelOption = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help=f"Zoo name or checkpoint file (finetune: also a timm ViT name, for a new "
                                       f"model). predict and embed run {DEFAULT_MODEL}, or stam_<N> for --frames N."),
]
FramesOption = Annotated[
    Optional[int], typer.Option("--frames", "-f", min=1, help="Frames sampled per video (default: the model's own).")
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Videos per batch.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOption = Annotated[
    str, typer.Option("--precision", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
]
DecoderOption = Annotated[
    Optional[str],
    typer.Option("--decoder", help="auto (PyAV, else OpenCV), pyav or opencv (default: $STAM_DECODER or auto)."),
]
WorkersOption = Annotated[
    Optional[int],
    typer.Option("--workers", "-w", min=1, help="Decode threads (default: min(4, CPUs); CPUs - 1 with a GPU)."),
]
StreamsOption = Annotated[
    Optional[int],
    typer.Option("--streams", min=1, help="Batches computed at once, each on CPUs/streams threads (default: "
                                          "min(4, CPUs) on the CPU; 1 on a GPU)."),
]
ClipsOption = Annotated[
    int, typer.Option("--clips", min=1, help="Temporal views per video, softmax averaged (model cost x clips).")
]
CropsOption = Annotated[
    int, typer.Option("--crops", help="Spatial views per clip: 1 (centre) or 3 (left/centre/right).")
]
SkipBadOption = Annotated[bool, typer.Option("--skip-bad", help="Drop bad examples instead of stopping.")]
# the inputs of the per-video commands (predict, embed)
PathsArgument = Annotated[
    List[str], typer.Argument(help="Video files, folders, glob patterns, @list.txt files, or s3://, gs://, az:// "
                                   "prefixes and http(s):// URLs.")
]
RecursiveOption = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.")]
ExtOption = Annotated[
    Optional[str], typer.Option("--ext", help="Video extensions to pick up in folders, e.g. mp4,avi.")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Skip videos already done in --output; retry failed ones.")
]
ShardOption = Annotated[Optional[str], typer.Option("--shard", help="I/N: process every N-th video starting at I.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
# where predict and embed run (stamcli.ray_engine)
EngineOption = Annotated[
    str, typer.Option("--engine", help="local (this machine) or ray (a Ray cluster: decode tasks + model actors).")
]
RayAddressOption = Annotated[
    Optional[str],
    typer.Option("--ray-address", help="Ray cluster for --engine ray (default: $RAY_ADDRESS; none: a local Ray "
                                       "for the run)."),
]
RayActorsOption = Annotated[
    Optional[str],
    typer.Option("--ray-actors", help="Model workers for --engine ray: N, or MIN-MAX to autoscale (default: one "
                                      "per GPU; on CPUs, one per model stream)."),
]
# the user's own tags (predict, evaluate)
LabelMapOption = Annotated[
    Optional[str],
    typer.Option("--label-map", help="Your tags: a YAML (tag: list of labels) or CSV (label,tag) file, or a packaged "
                                     "map (kinetics400-coarse). A tag scores the sum of its labels' probabilities."),
]
ThresholdsOption = Annotated[
    Optional[Path], typer.Option("--thresholds", help="Per-class thresholds from stam evaluate --calibrate.")
]


def _text(value: Any) -> Any:
    """Paths as text (job fields hold strings); anything else as it is."""
    return str(value) if isinstance(value, Path) else value


def _model_fields(*, model, labels=None, arch=None, weights_dir=None, mirror=None, offline=None,
                  trust_checkpoint=False) -> dict:
    """The :class:`~stamcli.jobs.ModelJob` fields: which model, and how it is found."""
    return dict(model=model, labels=_text(labels), arch=_text(arch), weights_dir=_text(weights_dir), mirror=mirror,
                offline=offline, trust_checkpoint=trust_checkpoint)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stamcli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr, show_time=False, show_path=False)],
        force=True,
    )


def user_errors(command: Callable) -> Callable:
    """Turn :class:`StamError` into one red line and exit code 1, or 2 for a :class:`UsageError`
    (a traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StamError as err:
            if _state["debug"]:
                raise
            stderr.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2 if isinstance(err, UsageError) else 1) from None
        except KeyboardInterrupt:
            stderr.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


# --------------------------------------------------------------------------- models / weights

@app.command("models")
@user_errors
def models_command(weights_dir: WeightsDirOption = None) -> None:
    """List the published STAM checkpoints and whether each is downloaded."""
    from .weights import is_present, weights_dir as resolve_weights_dir
    from .zoo import available_models, get_model_info

    folder = resolve_weights_dir(weights_dir)
    table = Table(title=f"STAM model zoo (weights: {folder})")
    for column in ("name", "frames", "input", "labels", "top-1 (K400)", "GFLOPs", "local"):
        table.add_column(column, justify="right" if column in ("frames", "top-1 (K400)", "GFLOPs") else "left")
    for name in available_models():
        info = get_model_info(name)
        table.add_row(
            name, str(info.frames), f"{info.img_size}x{info.img_size}", info.labels, f"{info.top1:.2f}",
            "-" if info.gflops is None else f"{info.gflops:g}",
            "[green]yes[/]" if is_present(name, folder) else "no",
        )
    Console().print(table)


@app.command("download-weights")
@user_errors
def download_weights_command(
    names: Annotated[Optional[List[str]], typer.Argument(help=f"Zoo models to fetch (default: {DEFAULT_MODEL}).")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Fetch every zoo model.")] = False,
    weights_dir: WeightsDirOption = None,
    mirror: MirrorOption = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if present.")] = False,
) -> None:
    """Fetch the authors' pretrained Kinetics-400 checkpoints (resumable, verified)."""
    from .weights import download_weights
    from .zoo import available_models, get_model_info

    wanted = available_models() if all_models else (names or [DEFAULT_MODEL])
    for name in wanted:
        get_model_info(name)  # unknown names fail before any download starts
    for name in wanted:
        path = download_weights(name, weights_dir, mirror=mirror, force=force)
        stderr.print(f"[green]{name}[/]: {escape(str(path))}", highlight=False)


# --------------------------------------------------------------------------- predict / embed

def _extensions(ext: Optional[str]) -> tuple[str, ...]:
    return parse_extensions(ext) if ext else tuple(TAGGING.extensions)


def _run_video_job(run: Callable, job, *, quiet: bool, verb: tuple[str, str]) -> None:
    """``run(job)`` behind a progress bar, then its summary; exit 0, 1 (a video failed) or 130 (interrupted)."""
    from .progress import RunProgress

    with RunProgress(stderr, enabled=not quiet, verb=verb) as progress:
        summary = run(job, on_start=progress.start, on_record=progress.advance)
    if not quiet:
        progress.print_summary(summary)
    if summary.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(1 if summary.failed else 0)


@app.command("predict")
@user_errors
def predict_command(
    paths: PathsArgument,
    num_frames: FramesOption = PREDICT.num_frames,
    model: ModelOption = TAGGING.model,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per video.")] = PREDICT.top_k,
    batch_size: BatchSizeOption = PREDICT.batch_size,
    device: DeviceOption = PREDICT.device,
    precision: PrecisionOption = PREDICT.precision,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="Results file, or an s3://, gs://, az:// URL for jsonl "
                                                           "and parquet (default: a table on stdout).")
    ] = TAGGING.output,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="csv, json, jsonl, parquet; per video: srt, vtt, otio, edl, "
                                                     "fcp7xml, chapters, ffmetadata (default: from --output's "
                                                     "extension).")
    ] = TAGGING.format,
    recursive: RecursiveOption = TAGGING.recursive,
    ext: ExtOption = None,
    workers: WorkersOption = PREDICT.workers,
    streams: StreamsOption = PREDICT.streams,
    decoder: DecoderOption = PREDICT.decoder,
    resume: ResumeOption = TAGGING.resume,
    shard: ShardOption = TAGGING.shard,
    labels: LabelsOption = TAGGING.labels,
    arch: ArchOption = TAGGING.arch,
    weights_dir: WeightsDirOption = TAGGING.weights_dir,
    mirror: MirrorOption = TAGGING.mirror,
    offline: OfflineOption = TAGGING.offline,
    trust_checkpoint: TrustCheckpointOption = TAGGING.trust_checkpoint,
    quiet: QuietOption = False,
    preview: Annotated[
        Optional[Path], typer.Option("--preview", help="Folder for a PNG contact sheet per video, with its labels.")
    ] = TAGGING.preview,
    window: Annotated[
        Optional[str], typer.Option("--window", help="Timeline: tag sliding windows of this many seconds, or "
                                                     "'shots' to tag each camera shot.")
    ] = TAGGING.window,
    stride: Annotated[
        Optional[float], typer.Option("--stride", help="Timeline: seconds between window starts (--window).")
    ] = TAGGING.stride,
    max_shot: Annotated[
        Optional[float], typer.Option("--max-shot", help="--window shots: cut longer shots into equal parts of at "
                                                         f"most this many seconds (default: {DEFAULT_MAX_SHOT_S:g}).")
    ] = TAGGING.max_shot,
    events: Annotated[
        bool, typer.Option("--events", help="Timeline: merge each video's windows into labelled events.")
    ] = TAGGING.events,
    event_gap: Annotated[
        Optional[float], typer.Option("--event-gap", help="--events: bridge gaps of up to this many seconds between "
                                                          f"windows of one label (default: {DEFAULT_EVENT_GAP_S:g}).")
    ] = TAGGING.event_gap,
    min_event: Annotated[
        Optional[float], typer.Option("--min-event", help="--events: drop events shorter than this many seconds "
                                                          f"(default: {DEFAULT_MIN_EVENT_S:g}).")
    ] = TAGGING.min_event,
    clips: ClipsOption = PREDICT.clips,
    crops: CropsOption = PREDICT.crops,
    label_map: LabelMapOption = PREDICT.label_map,
    min_score: Annotated[
        Optional[float], typer.Option("--min-score", help="Leave out labels scoring below this (0-1); a video with "
                                                          "none left is 'unsure'.")
    ] = PREDICT.min_score,
    thresholds: ThresholdsOption = PREDICT.thresholds,
    engine: EngineOption = PREDICT.engine,
    ray_address: RayAddressOption = PREDICT.ray_address,
    ray_actors: RayActorsOption = PREDICT.ray_actors,
) -> None:
    """Tag videos with their top-k action labels.

    Example: stam predict ./videos --frames 16 --output tags.csv
    """
    from .tagging import run_tagging

    job = TaggingJob(
        **_model_fields(model=model, labels=labels, arch=arch, weights_dir=weights_dir, mirror=mirror, offline=offline,
                        trust_checkpoint=trust_checkpoint),
        paths=paths, recursive=recursive, extensions=_extensions(ext), resume=resume, shard=shard,
        output=_text(output), format=fmt, preview=_text(preview), window=parse_window(window), stride=stride,
        max_shot=max_shot, events=events, event_gap=event_gap, min_event=min_event,
        options=PredictOptions(num_frames=num_frames, top_k=top_k, batch_size=batch_size, device=device,
                               precision=precision, workers=workers, streams=streams, clips=clips, crops=crops,
                               decoder=decoder, label_map=label_map, min_score=min_score,
                               thresholds=_text(thresholds), engine=engine, ray_address=ray_address,
                               ray_actors=ray_actors),
    )
    # without --output the table goes to stdout
    _run_video_job(functools.partial(run_tagging, console=Console()), job, quiet=quiet, verb=("tagging", "tagged"))


@app.command("embed")
@user_errors
def embed_command(
    paths: PathsArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Embeddings file: .npy or .safetensors (+ an index .csv beside it).")
    ],
    per_frame: Annotated[
        bool, typer.Option("--per-frame", help="Also write every frame's embedding.")
    ] = EMBEDDING.per_frame,
    num_frames: FramesOption = PREDICT.num_frames,
    model: ModelOption = EMBEDDING.model,
    batch_size: BatchSizeOption = PREDICT.batch_size,
    device: DeviceOption = PREDICT.device,
    precision: PrecisionOption = PREDICT.precision,
    recursive: RecursiveOption = EMBEDDING.recursive,
    ext: ExtOption = None,
    workers: WorkersOption = PREDICT.workers,
    streams: StreamsOption = PREDICT.streams,
    decoder: DecoderOption = PREDICT.decoder,
    resume: ResumeOption = EMBEDDING.resume,
    shard: ShardOption = EMBEDDING.shard,
    arch: ArchOption = EMBEDDING.arch,
    weights_dir: WeightsDirOption = EMBEDDING.weights_dir,
    mirror: MirrorOption = EMBEDDING.mirror,
    offline: OfflineOption = EMBEDDING.offline,
    trust_checkpoint: TrustCheckpointOption = EMBEDDING.trust_checkpoint,
    quiet: QuietOption = False,
    engine: EngineOption = PREDICT.engine,
    ray_address: RayAddressOption = PREDICT.ray_address,
    ray_actors: RayActorsOption = PREDICT.ray_actors,
) -> None:
    """Write each video's embedding (the temporal class token), row i for video i of an index CSV.

    Example: stam embed ./videos --output emb.npy --per-frame
    """
    from .embedding import run_embedding

    job = EmbedJob(
        **_model_fields(model=model, arch=arch, weights_dir=weights_dir, mirror=mirror, offline=offline,
                        trust_checkpoint=trust_checkpoint),
        paths=paths, recursive=recursive, extensions=_extensions(ext), resume=resume, shard=shard,
        output=str(output), per_frame=per_frame,
        options=PredictOptions(num_frames=num_frames, batch_size=batch_size, device=device, precision=precision,
                               workers=workers, streams=streams, decoder=decoder, engine=engine,
                               ray_address=ray_address, ray_actors=ray_actors),
    )
    _run_video_job(run_embedding, job, quiet=quiet, verb=("embedding", "embedded"))


# --------------------------------------------------------------------------- finetune / evaluate

LoaderWorkersOption = Annotated[
    int, typer.Option("--workers", "-w", help="Data loading processes (0: in the training process).")
]


def _given_options(ctx: typer.Context, *, leave_out: tuple[str, ...]) -> dict:
    """The options given on the command line (not left at their defaults), by parameter name, in
    declaration order; paths as text."""
    # by name: Typer carries its own copy of Click, whose ParameterSource is another enum
    return {param.name: _text(ctx.params[param.name]) for param in ctx.command.params
            if param.name not in leave_out and ctx.get_parameter_source(param.name).name == "COMMANDLINE"}


@app.command("finetune")
@user_errors
def finetune_command(
    ctx: typer.Context,
    data: Annotated[Optional[str], typer.Argument(help="CSV of path,label or a folder of class folders.")] = None,
    val: Annotated[
        Optional[str], typer.Option("--val", help="Validation data (default: a split of DATA).")
    ] = FINETUNE.val,
    val_split: Annotated[
        float, typer.Option("--val-split", help="Held-out fraction of DATA without --val.")
    ] = FINETUNE.val_split,
    model: ModelOption = FINETUNE.model,
    backbone_weights: Annotated[
        Optional[str], typer.Option("--backbone-weights", help="Local timm weights for a new model's ViT.")
    ] = FINETUNE.backbone_weights,
    frames: FramesOption = FINETUNE.frames,
    img_size: Annotated[
        Optional[int], typer.Option("--img-size", help="Input size (default: the model's own).")
    ] = FINETUNE.img_size,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs.")] = FINETUNE.epochs,
    batch_size: BatchSizeOption = FINETUNE.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = FINETUNE.lr,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = FINETUNE.weight_decay,
    warmup: Annotated[float, typer.Option("--warmup", help="Warm-up epochs.")] = FINETUNE.warmup,
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", help="Label smoothing of the loss.")
    ] = FINETUNE.label_smoothing,
    grad_accum: Annotated[
        int, typer.Option("--grad-accum", help="Batches per optimiser step.")
    ] = FINETUNE.grad_accum,
    clip_grad: Annotated[
        float, typer.Option("--clip-grad", help="Max gradient norm (0: off).")
    ] = FINETUNE.clip_grad,
    precision: PrecisionOption = FINETUNE.precision,
    device: DeviceOption = FINETUNE.device,
    workers: LoaderWorkersOption = FINETUNE.workers,
    decoder: DecoderOption = FINETUNE.decoder,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = FINETUNE.seed,
    patience: Annotated[
        int, typer.Option("--patience", help="Early stop after N epochs without improvement (0: off).")
    ] = FINETUNE.patience,
    freeze_backbone: Annotated[
        bool, typer.Option("--freeze-backbone/--train-backbone", help="Train only the temporal part.")
    ] = FINETUNE.freeze_backbone,
    hflip: Annotated[bool, typer.Option("--hflip/--no-hflip", help="Random horizontal flips.")] = FINETUNE.hflip,
    skip_bad: SkipBadOption = FINETUNE.skip_bad,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="Run folder (default: runs/finetune/<name>).")
    ] = FINETUNE.output,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (default: DATA's name).")] = FINETUNE.name,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options; flags win.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run folder.")] = None,
    weights_dir: WeightsDirOption = FINETUNE.weights_dir,
    mirror: MirrorOption = FINETUNE.mirror,
    offline: OfflineOption = FINETUNE.offline,
) -> None:
    """Fine-tune STAM on your labelled clips.

    Options come from the defaults, then --config FILE.yaml, then the flags given.

    Example: stam finetune clips.csv --model stam_16 --epochs 5 --frames 16
    """
    from .train.config import resolve_config
    from .train.finetune import finetune

    given = _given_options(ctx, leave_out=("config", "resume"))
    if resume:
        if given:
            raise UsageError(f"--resume continues a run with its saved options; drop: {', '.join(given)}")
        result = finetune(resume=resume, on_epoch=_print_epoch)
    else:
        result = finetune(resolve_config(given, config), on_epoch=_print_epoch)
    if result.interrupted:
        stderr.print(f"[yellow]interrupted[/]: saved {result.run_dir}/last.safetensors; continue with: "
                     f"stam finetune --resume {escape(str(result.run_dir))}", highlight=False)
        raise typer.Exit(130)
    best = "-" if result.best_top1 is None else f"{100 * result.best_top1:.1f}%"
    stderr.print(f"[green]done[/]: {result.epochs_done} epochs{' (stopped early)' if result.stopped_early else ''}, "
                 f"best val top-1 {best} (epoch {result.best_epoch}); model: {escape(str(result.run_dir))}/best.safetensors",
                 highlight=False)


def _print_epoch(row: dict) -> None:
    stderr.print(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
        f"val top-1 {100 * row['val_top1']:.1f}%, top-5 {100 * row['val_top5']:.1f}%, lr {row['lr']:.2e}, "
        f"{row['seconds']:.1f} s", highlight=False,
    )


@app.command("evaluate")
@user_errors
def evaluate_command(
    data: Annotated[str, typer.Argument(help="CSV of path,label or a folder of class folders.")],
    model: ModelOption,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Report JSON (+ confusion CSV/PNG, misclassified CSV).")
    ] = EVALUATION.output,
    num_frames: FramesOption = PREDICT.num_frames,
    batch_size: BatchSizeOption = PREDICT.batch_size,
    device: DeviceOption = PREDICT.device,
    precision: PrecisionOption = PREDICT.precision,
    workers: WorkersOption = PREDICT.workers,
    streams: StreamsOption = PREDICT.streams,
    decoder: DecoderOption = PREDICT.decoder,
    skip_bad: SkipBadOption = EVALUATION.skip_bad,
    arch: ArchOption = EVALUATION.arch,
    weights_dir: WeightsDirOption = EVALUATION.weights_dir,
    mirror: MirrorOption = EVALUATION.mirror,
    offline: OfflineOption = EVALUATION.offline,
    trust_checkpoint: TrustCheckpointOption = EVALUATION.trust_checkpoint,
    clips: ClipsOption = PREDICT.clips,
    crops: CropsOption = PREDICT.crops,
    label_map: LabelMapOption = PREDICT.label_map,
    calibrate: Annotated[
        Optional[Path], typer.Option("--calibrate", help="Write per-class thresholds reaching --target-precision "
                                                         "on DATA to this YAML file.")
    ] = EVALUATION.calibrate,
    target_precision: Annotated[
        Optional[float],
        typer.Option("--target-precision", help=f"Precision each class's threshold must reach "
                                                f"({DEFAULT_TARGET_PRECISION:g}; with --calibrate)."),
    ] = EVALUATION.target_precision,
    min_examples: Annotated[
        Optional[int], typer.Option("--min-examples", help=f"Examples a class needs for a threshold "
                                                           f"({DEFAULT_MIN_EXAMPLES}; with --calibrate).")
    ] = EVALUATION.min_examples,
    thresholds: ThresholdsOption = PREDICT.thresholds,
) -> None:
    """Measure a model on labelled clips: top-1, top-5, per-class accuracy, confusion matrix.

    With --label-map, DATA's labels are your tags. Example: stam evaluate val.csv --model
    runs/finetune/clips/best.safetensors -o report.json
    """
    from .train.evaluate import run_evaluation

    report = run_evaluation(EvaluationJob(
        **_model_fields(model=model, arch=arch, weights_dir=weights_dir, mirror=mirror, offline=offline,
                        trust_checkpoint=trust_checkpoint),
        data=data, output=_text(output), skip_bad=skip_bad, calibrate=_text(calibrate),
        target_precision=target_precision, min_examples=min_examples,
        options=PredictOptions(num_frames=num_frames, batch_size=batch_size, device=device, precision=precision,
                               workers=workers, streams=streams, clips=clips, crops=crops, decoder=decoder,
                               label_map=label_map, thresholds=_text(thresholds)),
    ))
    tags = f" (tags of {escape(report['label_map'])})" if "label_map" in report else ""
    table = Table(title=f"{escape(report['model'])} on {escape(str(data))}{tags}")
    for column in ("videos", "top-1", "top-5", "mean class accuracy", "unreadable"):
        table.add_column(column, justify="right")
    table.add_row(str(report["videos"]), f"{100 * report['top1']:.2f}%", f"{100 * report['top5']:.2f}%",
                  f"{100 * report['mean_class_accuracy']:.2f}%", str(len(report["failed"])))
    Console().print(table)
    _print_thresholds(report)
    if output:
        stderr.print(f"report: {escape(str(output))}", highlight=False)


def _print_thresholds(report: dict) -> None:
    """evaluate's lines on --thresholds (precision/recall at them) and --calibrate (the file written)."""
    def percent(value: Optional[float]) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    at = report.get("at_thresholds")
    if at:
        stderr.print(f"at the thresholds of {escape(at['file'])} ({at['classes']} classes, calibrated to precision "
                     f"{at['target_precision']:g}): mean precision {percent(at['mean_precision'])}, mean recall "
                     f"{percent(at['mean_recall'])}, {at['unsure']} of {report['videos']} videos unsure",
                     highlight=False)
    calibration = report.get("calibration")
    if calibration:
        stderr.print(f"thresholds for {calibration['calibrated']} of {calibration['classes']} classes at precision "
                     f"{calibration['target_precision']:g}: {escape(calibration['file'])}", highlight=False)


# --------------------------------------------------------------------------- export

@app.command("export")
@user_errors
def export_command(
    model: Annotated[str, typer.Argument(help="Zoo name or checkpoint file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.pt/.ts: TorchScript, .onnx: ONNX).")],
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="torchscript or onnx (default: from --output's extension).")
    ] = EXPORT.format,
    num_frames: FramesOption = EXPORT.num_frames,
    opset: Annotated[int, typer.Option("--opset", min=14, help="ONNX opset (14 or later).")] = EXPORT.opset,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Run the exported file and compare it with PyTorch.")
    ] = EXPORT.verify,
    labels: LabelsOption = EXPORT.labels,
    arch: ArchOption = EXPORT.arch,
    weights_dir: WeightsDirOption = EXPORT.weights_dir,
    mirror: MirrorOption = EXPORT.mirror,
    offline: OfflineOption = EXPORT.offline,
    trust_checkpoint: TrustCheckpointOption = EXPORT.trust_checkpoint,
) -> None:
    """Export a model as TorchScript or ONNX: fixed frame count, dynamic batch, labels inside.

    Example: stam export stam_16 --format onnx --output stam_16.onnx
    """
    from .export import run_export

    result = run_export(ExportJob(
        **_model_fields(model=model, labels=labels, arch=arch, weights_dir=weights_dir, mirror=mirror, offline=offline,
                        trust_checkpoint=trust_checkpoint),
        output=str(output), format=fmt, num_frames=num_frames, opset=opset, verify=verify,
    ))
    checked = "" if result.max_abs_diff is None else f"; max abs logit difference from PyTorch {result.max_abs_diff:.2g}"
    stderr.print(f"[green]{result.format}[/]: {escape(str(result.path))} (input: batch x {result.num_frames} x 3 x "
                 f"{result.img_size} x {result.img_size}{checked})", highlight=False)


def main() -> None:
    """Console-script entry point (``stam``)."""
    app(prog_name="stam")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
