"""The ``stam`` command: a thin Typer layer over the Python API.

Each command parses its options, calls the API and renders the result with rich. User errors
(:class:`~stamcli.errors.StamError`) are printed on one line with exit code 1; ``--debug`` shows
the traceback instead. Usage errors exit with 2 (Click's convention).
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import StamError, UsageError

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

WeightsDirOption = Annotated[
    Optional[Path],
    typer.Option("--weights-dir", help="Where zoo checkpoints live (default: $STAM_WEIGHTS_DIR or ./weights)."),
]
MirrorOption = Annotated[
    Optional[str],
    typer.Option("--mirror", help="Fetch URL/<file name> instead of the authors' host (env: STAM_MIRROR)."),
]

ClipsOption = Annotated[
    int, typer.Option("--clips", min=1, help="Temporal views per video, softmax averaged (model cost x clips).")
]
CropsOption = Annotated[
    int, typer.Option("--crops", help="Spatial views per clip: 1 (centre) or 3 (left/centre/right).")
]


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
    names: Annotated[Optional[List[str]], typer.Argument(help="Zoo models to fetch (default: stam_16).")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Fetch every zoo model.")] = False,
    weights_dir: WeightsDirOption = None,
    mirror: MirrorOption = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if present.")] = False,
) -> None:
    """Fetch the authors' pretrained Kinetics-400 checkpoints (resumable, verified)."""
    from .weights import download_weights
    from .zoo import available_models, get_model_info

    wanted = available_models() if all_models else (names or ["stam_16"])
    for name in wanted:
        get_model_info(name)  # unknown names fail before any download starts
    for name in wanted:
        path = download_weights(name, weights_dir, mirror=mirror, force=force)
        stderr.print(f"[green]{name}[/]: {escape(str(path))}", highlight=False)


# --------------------------------------------------------------------------- predict

# Options shared by predict and embed (same names, meanings and help).
PathsArgument = Annotated[List[str], typer.Argument(help="Video files, folders, glob patterns or @list.txt files.")]
FramesOption = Annotated[
    Optional[int], typer.Option("--frames", "-f", min=1, help="Frames per video; alone, picks stam_<N>.")
]
ModelOption = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Zoo name or checkpoint file (default: stam_16).")
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Videos per forward pass.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOption = Annotated[
    str, typer.Option("--precision", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
]
RecursiveOption = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk folders recursively.")]
ExtOption = Annotated[
    Optional[str], typer.Option("--ext", help="Video extensions to pick up in folders, e.g. mp4,avi.")
]
WorkersOption = Annotated[
    Optional[int], typer.Option("--workers", "-w", min=1, help="Decode threads (default: min(4, CPUs); CPUs - 1 with a GPU).")
]
StreamsOption = Annotated[
    Optional[int],
    typer.Option("--streams", min=1, help="Batches computed at once, each on CPUs/streams threads (default: "
                                          "min(4, CPUs) on the CPU; 1 on a GPU)."),
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Skip videos already done in --output; retry failed ones.")
]
ShardOption = Annotated[Optional[str], typer.Option("--shard", help="I/N: process every N-th video starting at I.")]
ArchOption = Annotated[
    Optional[Path], typer.Option("--arch", help="Architecture JSON for an authors'-format checkpoint.")
]
OfflineOption = Annotated[
    Optional[bool], typer.Option("--offline/--online", help="Never download weights (env: STAM_OFFLINE).")
]
TrustCheckpointOption = Annotated[
    bool, typer.Option("--trust-checkpoint", help="Allow a checkpoint that needs full unpickling.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
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


@app.command("predict")
@user_errors
def predict_command(
    paths: PathsArgument,
    frames: FramesOption = None,
    model: ModelOption = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per video.")] = 5,
    batch_size: BatchSizeOption = 8,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Results file (default: a table on stdout).")
    ] = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="csv, json, jsonl, srt or vtt (default: from --output's extension).")
    ] = None,
    recursive: RecursiveOption = True,
    ext: ExtOption = None,
    workers: WorkersOption = None,
    streams: StreamsOption = None,
    resume: ResumeOption = False,
    shard_spec: ShardOption = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Label names, one per line.")] = None,
    arch: ArchOption = None,
    weights_dir: WeightsDirOption = None,
    mirror: MirrorOption = None,
    offline: OfflineOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    quiet: QuietOption = False,
    preview: Annotated[
        Optional[Path], typer.Option("--preview", help="Folder for a PNG contact sheet per video, with its labels.")
    ] = None,
    window: Annotated[
        Optional[float], typer.Option("--window", help="Timeline: tag sliding windows of this many seconds.")
    ] = None,
    stride: Annotated[
        Optional[float], typer.Option("--stride", help="Timeline: seconds between window starts (--window).")
    ] = None,
    clips: ClipsOption = 1,
    crops: CropsOption = 1,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    ray_actors: RayActorsOption = None,
) -> None:
    """Tag videos with their top-k action labels.

    Example: stam predict ./videos --frames 16 --output tags.csv
    """
    from .engine import PredictOptions
    from .tagging import TaggingJob, run_tagging

    job = TaggingJob(
        **_video_job_fields(paths, model, recursive, ext, resume, shard_spec, arch, weights_dir, mirror, offline,
                            trust_checkpoint),
        output=str(output) if output else None, format=fmt, labels=str(labels) if labels else None,
        preview=str(preview) if preview is not None else None, window=window, stride=stride,
        ray=_ray_options(engine, ray_address, ray_actors),
        options=PredictOptions(
            frames=frames, top_k=top_k, batch_size=batch_size, device=device, precision=precision, workers=workers,
            streams=streams, clips=clips, crops=crops,
        ),
    )
    _run_video_job(run_tagging, job, quiet, console=Console())


def _video_job_fields(paths, model, recursive, ext, resume, shard_spec, arch, weights_dir, mirror, offline,
                      trust_checkpoint) -> dict:
    """The :class:`~stamcli.tagging.VideoJob` fields from the input and model options predict and embed share."""
    from .inputs import DEFAULT_EXTENSIONS, parse_extensions

    return dict(
        paths=paths, model=model, recursive=recursive, extensions=parse_extensions(ext) if ext else DEFAULT_EXTENSIONS,
        resume=resume, shard=shard_spec, arch=str(arch) if arch else None,
        weights_dir=str(weights_dir) if weights_dir else None, mirror=mirror, offline=offline,
        trust_checkpoint=trust_checkpoint,
    )


def _ray_options(engine: str, address: Optional[str], actors: Optional[str]):
    """``--engine`` and its ``--ray-*`` options: :class:`~stamcli.ray_engine.RayOptions`, or None for local."""
    engine = engine.strip().lower()
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine must be local or ray, got {engine!r}")
    if engine == "local":
        if address is not None or actors is not None:
            raise UsageError("--ray-address and --ray-actors need --engine ray")
        return None
    from .ray_engine import RayOptions, parse_actors

    return RayOptions(address=address, actors=parse_actors(actors) if actors is not None else None)


def _run_video_job(run: Callable, job, quiet: bool, verb: tuple[str, str] = ("tagging", "tagged"), **kwargs) -> None:
    """``run(job)`` behind a progress bar, then its summary; exit 0, 1 (a video failed) or 130 (interrupted)."""
    from .progress import TaggingProgress

    with TaggingProgress(stderr, enabled=not quiet, verb=verb) as progress:
        summary = run(job, on_start=progress.start, on_record=progress.advance, **kwargs)
    if not quiet:
        progress.print_summary(summary)
    if summary.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(1 if summary.failed else 0)


# --------------------------------------------------------------------------- embed

@app.command("embed")
@user_errors
def embed_command(
    paths: PathsArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Embeddings file: .npy or .safetensors (+ an index .csv beside it).")
    ],
    per_frame: Annotated[bool, typer.Option("--per-frame", help="Also write every frame's embedding.")] = False,
    frames: FramesOption = None,
    model: ModelOption = None,
    batch_size: BatchSizeOption = 8,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    recursive: RecursiveOption = True,
    ext: ExtOption = None,
    workers: WorkersOption = None,
    streams: StreamsOption = None,
    resume: ResumeOption = False,
    shard_spec: ShardOption = None,
    arch: ArchOption = None,
    weights_dir: WeightsDirOption = None,
    mirror: MirrorOption = None,
    offline: OfflineOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    quiet: QuietOption = False,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    ray_actors: RayActorsOption = None,
) -> None:
    """Write each video's embedding (the temporal class token), row i for video i of an index CSV.

    Example: stam embed ./videos --output emb.npy --per-frame
    """
    from .embedding import EmbedJob, run_embedding
    from .engine import PredictOptions

    job = EmbedJob(
        **_video_job_fields(paths, model, recursive, ext, resume, shard_spec, arch, weights_dir, mirror, offline,
                            trust_checkpoint),
        output=str(output), per_frame=per_frame, ray=_ray_options(engine, ray_address, ray_actors),
        options=PredictOptions(frames=frames, batch_size=batch_size, device=device, precision=precision, workers=workers,
                               streams=streams),
    )
    _run_video_job(run_embedding, job, quiet, verb=("embedding", "embedded"))


# --------------------------------------------------------------------------- finetune / evaluate

@app.command("finetune")
@user_errors
def finetune_command(
    data: Annotated[Optional[str], typer.Argument(help="CSV of path,label or a folder of class folders.")] = None,
    val: Annotated[Optional[str], typer.Option("--val", help="Validation data (default: a split of DATA).")] = None,
    val_split: Annotated[Optional[float], typer.Option("--val-split", help="Held-out fraction (0.1).")] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Zoo name, checkpoint file or timm ViT name (stam_16).")
    ] = None,
    backbone_weights: Annotated[
        Optional[str], typer.Option("--backbone-weights", help="Local timm weights for a new model's ViT.")
    ] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", "-f", help="Frames per clip (model's own).")] = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", help="Input size (model's own).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs (10).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Clips per batch (8).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (1e-4).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay (0.05).")] = None,
    warmup: Annotated[Optional[float], typer.Option("--warmup", help="Warm-up epochs (1).")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option("--label-smoothing", help="(0.1).")] = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help="Batches per optimiser step (1).")] = None,
    clip_grad: Annotated[Optional[float], typer.Option("--clip-grad", help="Max gradient norm (1.0; 0: off).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto, fp32, bf16 or fp16.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", help="Data loading processes (2).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (0).")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", help="Early stop after N flat epochs (0: off).")] = None,
    freeze_backbone: Annotated[
        Optional[bool], typer.Option("--freeze-backbone/--train-backbone", help="Train only the temporal part.")
    ] = None,
    hflip: Annotated[Optional[bool], typer.Option("--hflip/--no-hflip", help="Random horizontal flips (off).")] = None,
    skip_bad: Annotated[Optional[bool], typer.Option("--skip-bad", help="Drop bad examples instead of stopping.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Run folder (runs/finetune/<name>).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (DATA's name).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options; flags win.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run folder.")] = None,
    weights_dir: WeightsDirOption = None,
    mirror: MirrorOption = None,
    offline: Annotated[Optional[bool], typer.Option("--offline/--online", help="Never download weights.")] = None,
) -> None:
    """Fine-tune STAM on your labelled clips.

    Example: stam finetune clips.csv --model stam_16 --epochs 5 --frames 16
    """
    from .train.config import resolve_config
    from .train.finetune import finetune

    flags = {key: value for key, value in locals().items() if key not in ("config", "resume", "finetune", "resolve_config")}
    flags["weights_dir"] = str(weights_dir) if weights_dir else None
    if resume:
        given = [key for key, value in flags.items() if value is not None]
        if given:
            raise UsageError(f"--resume continues a run with its saved options; drop: {', '.join(given)}")
        result = finetune(resume=resume, on_epoch=_print_epoch)
    else:
        result = finetune(resolve_config(flags, config), on_epoch=_print_epoch)
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
    model: Annotated[str, typer.Option("--model", "-m", help="Checkpoint file or zoo name.")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Report JSON (+ confusion CSV/PNG, misclassified CSV).")
    ] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", "-f", min=1, help="Frames per clip (model's own).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Videos per forward pass.")] = 8,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto, fp32, bf16 or fp16.")] = "auto",
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Decode threads.")] = None,
    streams: StreamsOption = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Drop bad examples instead of stopping.")] = False,
    weights_dir: WeightsDirOption = None,
    offline: Annotated[Optional[bool], typer.Option("--offline/--online", help="Never download weights.")] = None,
    clips: ClipsOption = 1,
    crops: CropsOption = 1,
) -> None:
    """Measure a model on labelled clips: top-1, top-5, per-class accuracy, confusion matrix.

    Example: stam evaluate val.csv --model runs/finetune/clips/best.safetensors -o report.json
    """
    from . import load_model
    from .engine import PredictOptions
    from .train.evaluate import evaluate

    options = PredictOptions(frames=frames, batch_size=batch_size, device=device, precision=precision, workers=workers,
                             streams=streams, clips=clips, crops=crops)
    options.check()
    loaded = load_model(model, weights_dir=weights_dir, offline=offline)
    report = evaluate(data, loaded, options, output=output, skip_bad=skip_bad)
    table = Table(title=f"{escape(loaded.name)} on {escape(str(data))}")
    for column in ("videos", "top-1", "top-5", "mean class accuracy", "unreadable"):
        table.add_column(column, justify="right")
    table.add_row(str(report["videos"]), f"{100 * report['top1']:.2f}%", f"{100 * report['top5']:.2f}%",
                  f"{100 * report['mean_class_accuracy']:.2f}%", str(len(report["failed"])))
    Console().print(table)
    if output:
        stderr.print(f"report: {escape(str(output))}", highlight=False)


# --------------------------------------------------------------------------- export

@app.command("export")
@user_errors
def export_command(
    model: Annotated[str, typer.Argument(help="Zoo name or checkpoint file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (.pt/.ts: TorchScript, .onnx: ONNX).")],
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="torchscript or onnx (default: from --output's extension).")
    ] = None,
    frames: Annotated[
        Optional[int], typer.Option("--frames", "-f", min=1, help="Fixed frame count of the export (model's own).")
    ] = None,
    opset: Annotated[int, typer.Option("--opset", min=14, help="ONNX opset (14 or later).")] = 17,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Run the exported file and compare it with PyTorch.")
    ] = True,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Label names, one per line.")] = None,
    arch: Annotated[
        Optional[Path], typer.Option("--arch", help="Architecture JSON for an authors'-format checkpoint.")
    ] = None,
    weights_dir: WeightsDirOption = None,
    mirror: MirrorOption = None,
    offline: Annotated[
        Optional[bool], typer.Option("--offline/--online", help="Never download weights (env: STAM_OFFLINE).")
    ] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow a checkpoint that needs full unpickling.")
    ] = False,
) -> None:
    """Export a model as TorchScript or ONNX: fixed frame count, dynamic batch, labels inside.

    Example: stam export stam_16 --format onnx --output stam_16.onnx
    """
    from . import load_model
    from .export import export_model, format_for_export, require_onnx

    kind = format_for_export(output, fmt)
    if kind == "onnx":
        require_onnx()  # before a model is loaded or downloaded
    loaded = load_model(model, weights_dir=weights_dir, labels=labels, arch=arch, trust_checkpoint=trust_checkpoint,
                        offline=offline, mirror=mirror)
    result = export_model(loaded, output, kind, frames=frames, opset=opset, verify=verify)
    checked = "" if result.max_abs_diff is None else f"; max abs logit difference from PyTorch {result.max_abs_diff:.2g}"
    stderr.print(f"[green]{result.format}[/]: {escape(str(result.path))} (input: batch x {result.frames} x 3 x "
                 f"{result.img_size} x {result.img_size}{checked})", highlight=False)


def main() -> None:
    """Console-script entry point (``stam``)."""
    app(prog_name="stam")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
