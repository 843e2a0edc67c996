"""Section ``cuda`` (runs only where a CUDA GPU is at hand; skipped with a note elsewhere).

stam_16 model only in bf16 autocast at batch sizes 1..64 (videos/s, peak GPU memory per batch),
optionally compiled (``--compile``: ``torch.compile`` at the best batch size), and end to end
(:class:`stamcli.engine.Predictor`, bf16) with W decode workers next to the decode-only rate of
W threads, which says when decoding, not the GPU, is the bottleneck.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch

from stamcli.device import autocast_for
from stamcli.engine import PredictOptions, Predictor
from stamcli.parallel import cpu_cores, default_workers
from stamcli.decode import read_clip

from .common import Context, ModelSpec

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_rate(model: torch.nn.Module, spec: ModelSpec, batch: int, device: torch.device, iterations=None) -> dict:
    """videos/s of ``model`` in bf16 at ``batch`` and the peak GPU memory of those passes
    (the measurement also runs on the CPU, for the tests: memory is then 0)."""
    x = torch.rand(batch, spec.frames, 3, spec.img_size, spec.img_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    iterations = iterations or max(3, 128 // batch)
    with torch.inference_mode(), autocast_for(device, "bf16"):
        for _ in range(2):  # warm-up (and compilation, when compiled)
            model(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iterations):
            model(x)
        _sync(device)
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"batch_size": batch, "videos_per_s": batch * iterations / seconds, "peak_memory_mib": memory}


def batch_sweep(model, spec: ModelSpec, sizes, device, iterations=None) -> list[dict]:
    rows = []
    for batch in sizes:
        try:
            rows.append(gpu_rate(model, spec, batch, device, iterations))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({"batch_size": batch, "error": "out of memory"})
            break
    return rows


def decode_rate(videos: list, spec: ModelSpec, workers: int) -> float:
    """videos/s of ``workers`` threads doing nothing but stamcli's decoding."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda v: read_clip(v, spec.frames, spec.img_size, threads=1 if workers > 1 else 0), videos))
    return len(videos) / (time.perf_counter() - start)


def run(ctx: Context) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine, so the CUDA section did not run"}
    return measure(ctx, torch.device("cuda"))


def measure(ctx: Context, device: torch.device) -> dict:
    """The section's figures on ``device`` (a CUDA GPU; the tests run it on the CPU)."""
    spec, quick = ctx.profile.big, ctx.quick
    model = spec.build().to(device)
    sizes = BATCH_SIZES[:2] if quick else BATCH_SIZES
    rows = batch_sweep(model, spec, sizes, device, iterations=1 if quick else None)
    best = max((r for r in rows if "videos_per_s" in r), key=lambda r: r["videos_per_s"])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    result = {"gpu": gpu, "model": spec.title, "precision": "bf16",
              "batches": rows, "best_batch_size": best["batch_size"]}
    if ctx.compile:
        try:
            started = time.perf_counter()
            compiled = torch.compile(model)
            result["compiled"] = gpu_rate(compiled, spec, best["batch_size"], device, iterations=1 if quick else None)
            result["compiled"]["seconds_incl_compile"] = time.perf_counter() - started
        except Exception as err:  # report, do not fail the suite
            result["compiled"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    videos = [str(v) for v in ctx.clip_videos()] * (1 if quick else 2)
    e2e = []
    for workers in sorted({1, 2, 4, 8, 16, default_workers(device)} & set(range(1, cpu_cores() + 1))):
        predictor = Predictor(model, PredictOptions(batch_size=best["batch_size"], device=str(device),
                                                    precision="bf16", workers=workers))
        list(predictor.scores(videos[: best["batch_size"]]))  # warm-up
        start = time.perf_counter()
        list(predictor.scores(videos))
        rate = len(videos) / (time.perf_counter() - start)
        e2e.append({"workers": workers, "videos_per_s": rate, "decode_only_videos_per_s": decode_rate(videos, spec, workers)})
    result["end_to_end"] = e2e
    return result


def markdown(r: dict) -> str:
    if "skipped" in r:
        return f"CUDA: skipped ({r['skipped']})."
    lines = [f"CUDA, {r['gpu']}, {r['model']}, {r['precision']} autocast, model only:", "",
             "| batch | videos/s | peak GPU memory (MiB) |", "| --- | --- | --- |"]
    for row in r["batches"]:
        if "error" in row:
            lines.append(f"| {row['batch_size']} | {row['error']} | |")
        else:
            lines.append(f"| {row['batch_size']} | {row['videos_per_s']:.1f} | {row['peak_memory_mib']:.0f} |")
    if "compiled" in r:
        c = r["compiled"]
        lines.append(f"| {r['best_batch_size']}, `torch.compile` | "
                     + (c["error"] if "error" in c else f"{c['videos_per_s']:.1f} | {c['peak_memory_mib']:.0f}") + " |")
    lines += ["", f"End to end (`Predictor`, batch {r['best_batch_size']}) with W decode threads:", "",
              "| W | videos/s | decode alone, videos/s |", "| --- | --- | --- |"]
    lines += [f"| {row['workers']} | {row['videos_per_s']:.1f} | {row['decode_only_videos_per_s']:.1f} |"
              for row in r["end_to_end"]]
    return "\n".join(lines)
