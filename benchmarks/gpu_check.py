"""Every check that needs a CUDA GPU, in one prepared run: ``python -m benchmarks.gpu_check --out DIR``.

No CUDA path of stamcli can be tried on a machine without a GPU; this script is what to run the
first time one is at hand (issue 16). In at most :data:`TOTAL_BUDGET_S` seconds on one GPU it runs
these sections, each within a time budget of its own, each guarded so that one failing does not
stop the others:

* ``parity`` - CPU fp32 against CUDA fp32, bf16 and fp16: the authors' tiny fixture model on its
  fixture inputs (``../shared/fixtures``) and a random 400-class model with a peaked softmax, as a
  trained model's: top-1 agreement, identical top-5 order, the largest score and logit difference.
* ``throughput`` - stam_16's architecture (random weights) in bf16 at batch 1-64: videos/s and peak
  GPU memory, eager, and with ``torch.compile`` (default mode, and ``reduce-overhead``: CUDA graphs).
* ``predict`` - ``stam predict`` (:func:`stamcli.tagging.run_tagging`) end to end on generated
  H.264 clips with W decode workers, next to W threads only decoding; and the real command once.
* ``finetune`` - a tiny model fine-tuned for 2 epochs in bf16 and in fp16: finite losses, the fp16
  loss scale, and a run interrupted and resumed against an uninterrupted one (and against a second
  uninterrupted one, which tells GPU nondeterminism from a resume bug).
* ``export`` - TorchScript and ONNX exports of the fixture model loaded and run on the GPU
  (ONNX needs onnxruntime-gpu's CUDA provider) against CPU fp32.
* ``tests`` - the GPU-relevant test files (:data:`GPU_TESTS`) on this machine, where CUDA is
  available: the suite must hold there too.

It writes ``gpu_check.md`` and ``gpu_check.json`` to ``--out`` after every section (so a run cut
short keeps what it measured) and prints the Markdown. Exit status: 0 when every section ran and
passed its checks, 1 when one failed or raised, 2 without CUDA (one line, nothing written), 3 when
the whole run ran past its budget and was stopped.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .common import REPO, child_env, machine

TOTAL_BUDGET_S = 480.0  #: the whole run: 8 minutes
MIN_SECTION_S = 10.0  #: a section with less time left than this is skipped
COMPILE_S = 40.0  #: time a torch.compile of stam_16 is allowed to need: not started with less left
FIXTURES = REPO.parent / "shared" / "fixtures"
#: Test files that exercise devices, precision, process groups and the model paths a GPU changes.
GPU_TESTS = ("tests/test_device.py", "tests/test_distributed.py", "tests/test_model.py", "tests/test_parallel.py",
             "tests/test_checkpoints.py", "tests/test_predict.py")


class OutOfTime(Exception):
    """A section's budget is spent; what it measured so far is kept."""


@dataclass
class Budget:
    """A section's time budget; :meth:`check` between steps stops the section once it is spent."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def check(self, next_step: str, need_s: float = 0.0) -> None:
        """Stop the section unless ``need_s`` seconds (a step that cannot be cut short) are left."""
        if self.left() <= need_s:
            raise OutOfTime(f"its {self.seconds:.0f} s budget was spent before {next_step}")


@dataclass
class Check:
    """One run: where it writes, the device it checks, and its deadline."""

    out: Path
    device: torch.device
    deadline: float  #: time.monotonic() by which every section must have ended
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)

    @property
    def cache(self) -> Path:
        path = self.out / "cache"
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Section:
    """``run(check, budget, result)`` fills ``result`` as it goes (tables: ``result["tables"][caption]``
    is a list of rows; ``result["failed"]``: the checks that did not hold; ``result["notes"]``)."""

    name: str
    title: str
    budget_s: float
    run: Callable[[Check, Budget, dict], None]


# ---------------------------------------------------------------------------- running sections


def run_section(section: Section, check: Check) -> dict:
    """Run one section within its budget (and the run's deadline): its entry for the report, with
    ``status`` ok, failed (a check did not hold), partial (out of time), error (it raised) or skipped."""
    entry: dict = {"title": section.title, "budget_s": section.budget_s}
    left = check.deadline - time.monotonic()
    if left < MIN_SECTION_S:
        entry.update(status="skipped", reason=f"out of time: {max(0.0, left):.0f} s of the run's budget left")
        return entry
    budget = Budget(min(section.budget_s, left))
    result: dict = {}
    check.log(f"gpu_check: {section.name} (up to {budget.seconds:.0f} s)")
    try:
        section.run(check, budget, result)
        entry["status"] = "failed" if result.get("failed") else "ok"
    except OutOfTime as stop:
        entry.update(status="partial", reason=str(stop))
    except Exception as err:  # one section's failure must not stop the others
        entry.update(status="error", reason=f"{type(err).__name__}: {first_line(err)}",
                     traceback=traceback.format_exc()[-4000:])
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    entry["seconds"] = round(time.monotonic() - budget.started, 1)
    entry["result"] = result
    if entry["status"] == "partial" and result.get("failed"):
        entry["status"] = "failed"
    return entry


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


# ---------------------------------------------------------------------------- the report


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: list[dict]) -> list[str]:
    """A Markdown table of ``rows``: a column for every key, in the order they first appear."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def report_markdown(report: dict) -> str:
    """The Markdown report: the machine, a line per section, then each section's tables and notes."""
    m = report["machine"]
    lines = ["# GPU check", "",
             f"{m.get('gpu') or 'no GPU'}; CUDA {m.get('cuda') or '-'}; torch {m['torch']}; {m['cpu']}, "
             f"{m['cores']} cores; {m['date']}. {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget.", ""]
    if report.get("stopped"):
        lines += [f"**Stopped:** {report['stopped']}", ""]
    lines += markdown_table([{"section": name, "status": s["status"], "seconds": s.get("seconds"),
                              "note": s.get("reason", "; ".join(s.get("result", {}).get("failed", [])))}
                             for name, s in report["sections"].items()])
    for name, s in report["sections"].items():
        lines += ["", f"## {s['title']} (`{name}`): {s['status']}"]
        result = s.get("result", {})
        for caption, rows in result.get("tables", {}).items():
            lines += ["", caption + ":", ""] + markdown_table(rows)
        for note in result.get("notes", []):
            lines += ["", note]
        for failure in result.get("failed", []):
            lines += ["", f"- FAILED: {failure}"]
        if "reason" in s:
            lines += ["", f"{s['status']}: {s['reason']}"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> str:
    """Write ``gpu_check.json`` and ``gpu_check.md`` to ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = report_markdown(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "gpu_check.md").write_text(text, encoding="utf-8")
    return text


# ---------------------------------------------------------------------------- parity


def compare(reference: torch.Tensor, logits: torch.Tensor) -> dict:
    """How far ``logits`` (float, any device) are from the CPU fp32 ``reference``: top-1 agreement,
    share of videos with the same top-5 order, largest score (softmax) and logit difference, and
    videos with exactly tied top-5 scores."""
    logits = logits.float().cpu()
    scores, expected = logits.softmax(-1), reference.float().softmax(-1)
    k = min(5, reference.shape[-1])
    top, expected_top = scores.topk(k), expected.topk(k)
    return {
        "videos": len(reference),
        "finite": bool(torch.isfinite(logits).all()),
        "top1_agreement": (top.indices[:, 0] == expected_top.indices[:, 0]).float().mean().item(),
        "top5_same_order": (top.indices == expected_top.indices).all(-1).float().mean().item(),
        "max_score_diff": (scores - expected).abs().max().item(),
        "max_logit_diff": (logits - reference.float()).abs().max().item(),
        "tied_top5": int((top.values[:, :-1] == top.values[:, 1:]).any(-1).sum()),
    }


def _logits(model, videos: torch.Tensor, device: torch.device, precision: str, batch: int = 16) -> torch.Tensor:
    from stamcli.device import autocast_for

    model = model.to(device).eval()
    chunks = []
    with torch.inference_mode(), autocast_for(device, precision):
        for start in range(0, len(videos), batch):
            chunks.append(model(videos[start : start + batch].to(device)).float().cpu())
    return torch.cat(chunks)


def parity_models(size: int = 112, videos: int = 64) -> list[tuple[str, object, torch.Tensor]]:
    """(name, model, videos in [0, 1]): the authors' fixture model on its inputs, and a random
    ViT-Ti-sized model with 400 classes and a peaked softmax on random videos."""
    from stamcli import create_model, load_checkpoint

    models = []
    official = FIXTURES / "stam_tiny_official.pth"
    if official.exists():
        io = torch.load(FIXTURES / "stam_tiny_official_io.pt", weights_only=True)
        clip = torch.load(FIXTURES / "clip_400x300_75f_expected.pt", weights_only=True)["frames_uint8"]
        inputs = torch.cat([io["frames_uint8"], clip[None]]).float() / 255
        models.append(("authors' tiny fixture (10 classes)", load_checkpoint(official), inputs))
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", frames=8, img_size=size, num_classes=400, depth=4).eval()
    with torch.no_grad():
        model.head.weight.mul_(30.0)  # peaked, as a trained model's softmax
    inputs = torch.rand(videos, 8, 3, size, size, generator=torch.Generator().manual_seed(1))
    models.append(("random ViT-Ti/16, 4 blocks, 400 classes", model, inputs))
    return models


def parity(check: Check, budget: Budget, result: dict, *, precisions=("fp32", "bf16", "fp16"),
           models: Optional[list] = None) -> None:
    rows = result.setdefault("tables", {}).setdefault(
        f"CPU fp32 against {check.device.type.upper()} per precision (scores: softmax)", [])
    failed = result.setdefault("failed", [])
    for name, model, videos in models or parity_models():
        reference = _logits(model, videos, torch.device("cpu"), "fp32")
        for precision in precisions:
            budget.check(f"{name} in {precision}")
            row = {"model": name, "precision": precision,
                   **compare(reference, _logits(model, videos, check.device, precision))}
            rows.append(row)
            if not row["finite"]:
                failed.append(f"{name}, {precision}: scores not finite")
            elif precision == "fp32" and row["top1_agreement"] < 1.0:
                failed.append(f"{name}, fp32: top-1 differs from the CPU's on "
                              f"{round((1 - row['top1_agreement']) * row['videos'])} videos")
        model.cpu()
    result.setdefault("notes", []).append(
        f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32} "
        "(torch's defaults: the patch embedding's convolution may use TF32 in fp32).")


# ---------------------------------------------------------------------------- throughput


def throughput(check: Check, budget: Budget, result: dict, *, spec=None, batch_sizes=None,
               compile_modes=("default", "reduce-overhead"), iterations=None) -> None:
    """``spec`` (stam_16 by default) in bf16 at ``batch_sizes`` (1-64) eager, then compiled in
    ``compile_modes``: the default mode at the best batch size, reduce-overhead at 1 and the best."""
    from .common import FULL
    from .cuda import BATCH_SIZES, batch_sweep, gpu_rate

    spec = spec or FULL.big
    model = spec.build().to(check.device)
    tables = result.setdefault("tables", {})
    rows = tables.setdefault(f"{spec.title}, random weights, bf16 autocast, eager", [])
    for batch in batch_sizes or BATCH_SIZES:
        budget.check(f"eager batch {batch}")
        rows += batch_sweep(model, spec, [batch], check.device, iterations)
        if "error" in rows[-1]:
            break
    best = max((r for r in rows if "videos_per_s" in r), key=lambda r: r["videos_per_s"])["batch_size"]
    result["best_batch_size"] = best
    compiled = tables.setdefault("compiled (the first two passes, compilation included, are not timed)", [])
    for mode in compile_modes:
        for batch in dict.fromkeys((best,) if mode == "default" else (1, best)):
            budget.check(f"torch.compile {mode} at batch {batch}", need_s=COMPILE_S)
            torch._dynamo.reset()
            started = time.perf_counter()
            row = {"mode": mode + (" (CUDA graphs)" if mode == "reduce-overhead" else ""), "batch_size": batch}
            try:
                fn = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
                row.update(gpu_rate(fn, spec, batch, check.device, iterations))
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {first_line(err)}"
            row["seconds_incl_compile"] = time.perf_counter() - started
            compiled.append(row)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------- predict end to end


def predict(check: Check, budget: Budget, result: dict, *, spec=None, clips: int = 32, seconds: float = 10.0,
            size: tuple[int, int] = (640, 360)) -> None:
    """``spec`` (stam_16 by default, random weights) tagging ``clips`` generated H.264 clips."""
    from stamcli.jobs import PredictOptions, TaggingJob
    from stamcli.parallel import cpu_cores, default_workers
    from stamcli.tagging import run_tagging

    from stamcli import save_checkpoint

    from .common import FULL, write_clip
    from .cuda import decode_rate

    spec = spec or FULL.big
    folder = check.cache / "clips"
    folder.mkdir(exist_ok=True)
    videos = [folder / f"clip_{seed:02d}.mp4" for seed in range(clips)]
    with ThreadPoolExecutor(8) as pool:  # the encoder lets go of the GIL
        list(pool.map(lambda seed: videos[seed].exists() or write_clip(videos[seed], seconds, *size, 25, seed),
                      range(clips)))
    videos = [str(v) for v in videos]
    checkpoint = check.cache / "random_model.safetensors"
    if not checkpoint.exists():
        save_checkpoint(spec.build(), checkpoint)
    output = check.out / "predict.jsonl"
    rows = result.setdefault("tables", {}).setdefault(
        f"`stam predict` (run_tagging, model loading excluded) on {clips} generated {seconds:g} s "
        f"{size[0]}x{size[1]} H.264 clips, {spec.title} with random weights, bf16, batch 16, W decode workers", [])
    failed = result.setdefault("failed", [])
    workers = sorted({1, 4, default_workers(check.device)} & set(range(1, cpu_cores() + 1)))
    for i, w in enumerate([workers[-1]] + workers):  # the first run warms up (CUDA, cuDNN, page cache)
        budget.check(f"predict with {w} workers")
        output.unlink(missing_ok=True)
        summary = run_tagging(TaggingJob(paths=videos, model=str(checkpoint), output=str(output), options=PredictOptions(
            batch_size=16, device=str(check.device), precision="bf16", workers=w)))
        if summary.ok != len(videos):
            failed.append(f"predict with {w} workers: {summary.failed} of {len(videos)} videos failed")
        if i:
            rows.append({"workers": w, "videos_per_s": summary.videos_per_s,
                         "decode_alone_videos_per_s": decode_rate(videos, spec, w)})
    budget.check("the stam command")
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "stamcli", "predict", str(folder), "--model", str(checkpoint), "-o", str(output),
               "-q", "--device", str(check.device)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(10.0, budget.left()), env=child_env())
    records = len(output.read_text().splitlines()) if output.exists() else 0
    result.setdefault("notes", []).append(
        f"`stam predict FOLDER --device {check.device}` with its defaults (precision auto, default workers): exit "
        f"{done.returncode}, {records} records, {time.perf_counter() - started:.1f} s including start-up and model loading.")
    if done.returncode != 0 or records != len(videos):
        failed.append(f"stam predict --device {check.device}: exit {done.returncode}, {records} records; "
                      + done.stderr.strip()[-300:])


# ---------------------------------------------------------------------------- fine-tuning


def _final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "last.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def finetune_check(check: Check, budget: Budget, result: dict, *, precisions=("bf16", "fp16"),
                   per_class: int = 8, workers: int = 2) -> None:
    """2 epochs of a tiny model per precision: uninterrupted twice, and interrupted + resumed."""
    from tests.synthetic import write_motion_dataset

    from stamcli import create_model, save_checkpoint
    from stamcli.train.config import FinetuneConfig
    from stamcli.train.finetune import finetune

    root = check.cache / "motion"
    if not (root / "labels.csv").exists():
        write_motion_dataset(root, per_class=per_class, frames=8, size=48, seed=1)
    torch.manual_seed(0)
    base = save_checkpoint(create_model("vit_tiny_patch16_224", frames=8, num_classes=2, img_size=48, embed_dim=64,
                                        depth=2, num_heads=2, temporal_layers=2, temporal_heads=4,
                                        temporal_ff=128, labels=["a", "b"]), check.cache / "motion_base.safetensors")
    rows = result.setdefault("tables", {}).setdefault(
        f"a tiny STAM (48 px, 8 frames) fine-tuned for 2 epochs on {6 * per_class} clips, batch 8, "
        f"on {check.device}", [])
    failed = result.setdefault("failed", [])

    def stop_in_epoch_two(run):
        if run.epoch == 1 and run.batches_done == 1:
            run.request_stop()

    for precision in precisions:
        def config(name: str) -> FinetuneConfig:
            return FinetuneConfig(data=str(root / "labels.csv"), val_split=0.25, model=str(base), epochs=2,
                                  batch_size=8, lr=2e-3, warmup=0.5, workers=workers, seed=0, device=str(check.device),
                                  precision=precision, output=str(check.out / "finetune" / f"{precision}-{name}"))

        budget.check(f"fine-tuning in {precision}")
        whole = finetune(config("whole"))
        budget.check(f"the repeated run in {precision}")
        again = finetune(config("again"))
        budget.check(f"the interrupted run in {precision}")
        interrupted = finetune(config("resumed"), on_step=stop_in_epoch_two)
        resumed = finetune(resume=interrupted.run_dir)
        with open(whole.run_dir / "metrics.csv", newline="") as handle:
            losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
        state = torch.load(whole.run_dir / "last_state.pt", map_location="cpu", weights_only=True)
        a, b, c = (_final_weights(r.run_dir) for r in (whole, again, resumed))
        row = {"precision": precision, "train_losses": " ".join(f"{x:.4f}" for x in losses),
               "finite": all(math.isfinite(x) for x in losses) and all(torch.isfinite(w).all() for w in a.values()),
               "loss_scale": (state.get("scaler") or {}).get("scale"), "interrupted_then": interrupted.epochs_done,
               "repeat_equal": all(torch.equal(a[k], b[k]) for k in a), "repeat_max_diff": _max_diff(a, b),
               "resume_equal": all(torch.equal(a[k], c[k]) for k in a), "resume_max_diff": _max_diff(a, c)}
        rows.append(row)
        if not row["finite"]:
            failed.append(f"{precision}: losses or weights not finite")
        if row["repeat_equal"] and not row["resume_equal"]:
            failed.append(f"{precision}: the resumed run differs from the uninterrupted one "
                          f"(max {row['resume_max_diff']:.3g}) although two uninterrupted runs agree")
    result.setdefault("notes", []).append(
        "repeat_equal: two uninterrupted runs give the same weights (no GPU nondeterminism); resume is "
        "only expected to be bit-exact where they do.")


# ---------------------------------------------------------------------------- exports


def export_check(check: Check, budget: Budget, result: dict) -> None:
    from stamcli import load_checkpoint
    from stamcli.export import export_model

    model = load_checkpoint(FIXTURES / "stam_tiny_official.pth")
    io = torch.load(FIXTURES / "stam_tiny_official_io.pt", weights_only=True)
    videos = io["frames_uint8"].float() / 255
    with torch.inference_mode():
        reference = model(videos)
    rows = result.setdefault("tables", {}).setdefault(
        f"the authors' tiny fixture exported (float32) and run on {check.device}, against CPU fp32", [])
    failed = result.setdefault("failed", [])
    for fmt, name in (("torchscript", "model.pt"), ("onnx", "model.onnx")):
        budget.check(f"the {fmt} export")
        path = check.out / "export" / name
        row: dict = {"format": fmt}
        try:
            export_model(model, path, fmt)
            if fmt == "torchscript":
                loaded = torch.jit.load(str(path), map_location=check.device)
                with torch.no_grad():
                    logits = loaded(videos.to(check.device)).float().cpu()
                row["runtime"] = f"torch.jit on {check.device}"
            else:
                import onnxruntime

                provider = "CUDAExecutionProvider" if check.device.type == "cuda" else "CPUExecutionProvider"
                if provider not in onnxruntime.get_available_providers():
                    row["runtime"] = f"not run: onnxruntime {onnxruntime.__version__} has no {provider} " \
                                     "(pip install onnxruntime-gpu)"
                    rows.append(row)
                    continue
                session = onnxruntime.InferenceSession(str(path), providers=[provider])
                row["runtime"] = f"onnxruntime {', '.join(session.get_providers())}"
                logits = torch.from_numpy(session.run(["logits"], {"videos": videos.numpy()})[0])
            row.update(compare(reference, logits))
            if not row["max_logit_diff"] <= 1e-2 or row["top1_agreement"] < 1.0:
                failed.append(f"{fmt} on {check.device}: logits off by {row['max_logit_diff']:.3g}")
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {first_line(err)}"
            failed.append(f"{fmt}: {row['error']}")
        rows.append(row)


# ---------------------------------------------------------------------------- the test suite


def tests_check(check: Check, budget: Budget, result: dict, *, files=GPU_TESTS) -> None:
    present = [f for f in files if (REPO / f).exists()]
    if not present:
        result.setdefault("notes", []).append("the tests/ folder is not in this checkout")
        return
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *present]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=child_env(),
                              timeout=max(5.0, budget.left()))
    except subprocess.TimeoutExpired:
        raise OutOfTime(f"pytest ran past the {budget.seconds:.0f} s budget") from None
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-300:]
    result.setdefault("tables", {})["pytest " + " ".join(present)] = [{"exit": done.returncode, "summary": summary}]
    if done.returncode != 0:
        failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        result.setdefault("failed", []).append(f"pytest exit {done.returncode}: {summary}")
        result.setdefault("notes", []).extend(failures[:20])


SECTIONS = (
    Section("parity", "CPU fp32 against CUDA fp32, bf16 and fp16", 40, parity),
    Section("throughput", "stam_16 in bf16, batch 1-64, eager and compiled", 130, throughput),
    Section("predict", "stam predict end to end with decode workers", 90, predict),
    Section("finetune", "fine-tuning in bf16 and fp16, resume", 80, finetune_check),
    Section("export", "TorchScript and ONNX on the GPU", 30, export_check),
    Section("tests", "the GPU-relevant tests", 110, tests_check),
)


# ---------------------------------------------------------------------------- main


def gpu_machine(device: torch.device) -> dict:
    m = machine()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        m.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                 gpu_memory_gib=round(props.total_memory / 2**30, 1), compute_capability=f"{props.major}.{props.minor}")
    return m


def new_report(device: torch.device, budget_s: float) -> dict:
    return {"machine": gpu_machine(device), "budget_s": budget_s, "seconds": 0.0, "sections": {}}


def run_check(check: Check, sections, report: dict) -> dict:
    """Run ``sections`` into ``report``, writing it after each one; returns ``report``."""
    started = time.monotonic()
    for section in sections:
        report["sections"][section.name] = run_section(section, check)
        report["seconds"] = round(time.monotonic() - started, 1)
        write_report(check.out, report)
    return report


def exit_status(report: dict) -> int:
    return 1 if any(s["status"] in ("failed", "error") for s in report["sections"].values()) else 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md, gpu_check.json and files")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SECTIONS], help="run only these sections")
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for the whole run (480)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing was checked",
              file=sys.stderr)
        return 2
    sections = [s for s in SECTIONS if not args.only or s.name in args.only]
    check = Check(args.out, torch.device("cuda"), time.monotonic() + args.budget)
    report = new_report(check.device, args.budget)

    def stop() -> None:
        """A section stuck inside one CUDA call cannot be stopped between steps: a minute past the
        budget the report is written as it stands and the process ends."""
        stuck = next((s.name for s in sections if s.name not in report["sections"]), "?")
        report["stopped"] = f"still in section {stuck} {args.budget + 60:.0f} s after the start"
        print(write_report(args.out, report), flush=True)
        os._exit(3)

    watchdog = threading.Timer(args.budget + 60, stop)
    watchdog.daemon = True
    watchdog.start()
    run_check(check, sections, report)
    watchdog.cancel()
    print(report_markdown(report), end="")
    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
