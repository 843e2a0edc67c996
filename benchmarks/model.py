"""Section ``model``: the model alone, videos/s and achieved GFLOP/s, against the machine's ceiling.

The ceiling is the best of a few large fp32 matmuls measured in the same run. FLOPs per video
are counted exactly with :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, attention,
the patch convolution: 2 FLOPs per multiply-add). Inputs are real clips of the suite's videos.
It also measures int8 dynamic quantisation of the backbone's Linear layers (speed and top-1
agreement with fp32); ``--precision int8`` is not in the product unless it wins here.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from stamcli.allocator import keep_freed_memory
from stamcli.parallel import ModelStreams, cpu_cores, default_streams
from stamcli.decode import read_clip

from . import baseline
from .common import Context, ModelSpec, median_time

MATMUL_SIZES = (2048, 3072, 4096)


def matmul_gflops(sizes=MATMUL_SIZES, repeats: int = 3, streams: int = 1) -> float:
    """Best fp32 GFLOP/s of square matmuls on the CPU: one matmul on every thread, or with
    ``streams`` > 1 that many single-threaded matmuls at once (one per core)."""
    best = 0.0
    with ModelStreams(streams, threads_each=1) as pool:
        for n in sizes:
            pairs = [(torch.rand(n, n), torch.rand(n, n)) for _ in range(streams)]

            def once():
                list(pool.map(lambda ab: ab[0] @ ab[1], pairs))

            once()  # warm-up
            seconds = min(median_time(once, 1) for _ in range(repeats))
            best = max(best, streams * 2 * n**3 / seconds / 1e9)
    return best


def ceiling_sizes(ctx: Context) -> tuple[int, ...]:
    return (256, 512) if ctx.quick else MATMUL_SIZES


def measure_ceiling(ctx: Context, repeats: int = 1) -> float:
    """The machine's practical compute ceiling now, GFLOP/s: the better of one matmul over every
    core and one single-threaded matmul per core at once."""
    sizes = ceiling_sizes(ctx)
    return max(matmul_gflops(sizes, repeats), matmul_gflops(sizes, repeats, streams=cpu_cores()))


def ceiling(ctx: Context) -> float:
    """The run's matmul ceiling, GFLOP/s (memoised)."""
    if "ceiling" not in ctx.memo:
        ctx.memo["ceiling"] = measure_ceiling(ctx, repeats=3)
    return ctx.memo["ceiling"]


def pass_seconds(forward, streams: int, repeats: int = 1) -> float:
    """Median seconds of ``streams`` calls of ``forward`` at once, as ``stam predict`` runs its model
    streams (:class:`stamcli.parallel.ModelStreams`); each call under ``torch.inference_mode``."""

    def call(_):
        with torch.inference_mode():
            return forward()

    with ModelStreams(streams) as pool:
        return median_time(lambda: list(pool.map(call, range(streams))), repeats)


def count_flops(model: torch.nn.Module, videos: torch.Tensor) -> int:
    """FLOPs of one forward pass over ``videos`` (2 per multiply-add)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(videos)
    return counter.get_total_flops()


def clips_tensor(ctx: Context, spec: ModelSpec, count: int) -> torch.Tensor:
    """``(count, F, 3, S, S)`` float clips of the suite's first ``count`` short videos."""
    clips = [read_clip(ctx.short_video(seed), spec.frames, spec.img_size).frames for seed in range(count)]
    return torch.stack(clips).float().div_(255.0)


def quantized(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantisation of the spatial ViT's Linear layers (the temporal encoder's fused
    fast path cannot take quantised Linear layers, and it is 1% of the FLOPs)."""
    model = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch >= 2.10 deprecates eager-mode quantisation (for torchao)
        warnings.simplefilter("ignore")
        model.spatial = torch.ao.quantization.quantize_dynamic(model.spatial, {torch.nn.Linear}, dtype=torch.qint8)
    return model


def centred_top1(model, embeddings: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Top-1 of the (peaked, random) head on embeddings centred on the suite's mean embedding.

    A random STAM gives every video almost the same embedding, so its raw top-1 is one class for
    all; centring makes the top-1 depend on what differs between videos, which is what int8 could
    change."""
    return ((embeddings - centre) @ model.head.weight.T).argmax(-1)


def model_only(ctx: Context, spec: ModelSpec, repeats: int, streams: int | None = None) -> dict:
    """videos/s and GFLOP/s of ``spec`` at the profile's batch size, run as ``stam predict`` runs it
    on the CPU (freed memory kept, the ViT on chunks of frames, ``streams`` batches at once: the
    product's default unless given); memoised for the run."""
    streams = streams or default_streams(torch.device("cpu"))
    key = ("model_only", spec.title, streams)
    if key in ctx.memo:
        return ctx.memo[key]
    keep_freed_memory()
    batch = ctx.profile.batch_size
    model, videos = ctx.memo.get(("model", spec.title), (None, None, None))[:2]
    if model is None:
        model = spec.build()
        videos = clips_tensor(ctx, spec, batch)
    flops = count_flops(model, videos[:1])  # also the warm-up
    outputs = {}

    def forward():
        outputs["logits"], outputs["embeddings"] = model.forward_with_embedding(videos)

    # each round measures the ceiling right before the model, so that a shared machine's drifts
    # (tens of percent within minutes: benchmarks/README.md) cancel out of the ratio
    rounds = []
    for _ in range(max(1, repeats)):
        ceiling_now = measure_ceiling(ctx)
        rounds.append((pass_seconds(forward, streams), ceiling_now))
    seconds = statistics.median(s for s, _ in rounds)
    videos_per_pass = batch * streams
    result = {"model": spec.title, "batch_size": batch, "streams": streams, "repeats": repeats,
              "gflop_per_video": flops / 1e9, "videos_per_s": videos_per_pass / seconds}
    result["gflops"] = result["gflop_per_video"] * result["videos_per_s"]
    result["ceiling_gflops"] = statistics.median(c for _, c in rounds)
    result["ceiling_fraction"] = statistics.median(flops * videos_per_pass / s / 1e9 / c for s, c in rounds)
    ctx.memo[key] = result
    ctx.memo[("model", spec.title)] = (model, videos, outputs["embeddings"])
    return result


def int8_check(ctx: Context, spec: ModelSpec, fp32_rate: float, agreement_videos: int, streams: int) -> dict:
    """int8 speed at the same batch and streams (one timed pass) and top-1 agreement with fp32 on real clips."""
    model, videos, embeddings = ctx.memo[("model", spec.title)]
    qmodel = quantized(model)
    outputs = {}

    def forward():
        outputs["embeddings"] = qmodel.forward_with_embedding(videos)[1]

    with torch.inference_mode():
        qmodel(videos[:1])
    seconds = pass_seconds(forward, streams)
    with torch.inference_mode():
        quantized_embeddings = outputs["embeddings"]
        if agreement_videos > len(videos):
            videos = clips_tensor(ctx, spec, agreement_videos)
            embeddings, quantized_embeddings = model.forward_embedding(videos), qmodel.forward_embedding(videos)
        centre = embeddings.mean(0)
        ref = centred_top1(model, embeddings, centre)
        got = centred_top1(model, quantized_embeddings, centre)
        raw_ref, raw_got = model.head(embeddings).argmax(-1), model.head(quantized_embeddings).argmax(-1)
    rate = ctx.profile.batch_size * streams / seconds
    return {"videos_per_s": rate, "speedup": rate / fp32_rate,
            "agreement": (raw_ref == raw_got).float().mean().item(), "distinct_top1": len(set(raw_ref.tolist())),
            "agreement_centred": (ref == got).float().mean().item(), "distinct_top1_centred": len(set(ref.tolist())),
            "videos": len(ref)}


def compiled_check(ctx: Context, spec: ModelSpec, eager_rate: float, repeats: int) -> dict:
    """``torch.compile`` on the CPU: the seconds of the first three calls (compilation and warm-up:
    the second and third are still slow) and the rate after them."""
    model, videos, _ = ctx.memo[("model", spec.title)]
    try:
        compiled = torch.compile(model)
        with torch.inference_mode():
            started = time.perf_counter()
            for _ in range(3):
                compiled(videos)
            first = time.perf_counter() - started
            seconds = median_time(lambda: compiled(videos), repeats)
    except Exception as err:  # report, do not fail the suite
        return {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"}
    return {"first_call_s": first, "videos_per_s": len(videos) / seconds,
            "speedup": len(videos) / seconds / eager_rate}


def run(ctx: Context) -> dict:
    p = ctx.profile
    ceiling(ctx)
    rows = []
    for which, spec, repeats, agreement in (("big", p.big, 3 if not ctx.quick else 1, p.batch_size),
                                            ("small", p.small, p.repeats, p.videos)):
        # the authors' way, in a process of its own (stamcli's CPU tuning is process-wide)
        plain = baseline.measure(ctx, "model", which, repeats=repeats)
        one = model_only(ctx, spec, repeats, streams=1)  # one batch at a time over every core
        row = dict(model_only(ctx, spec, repeats))  # as stam predict runs it: the default streams
        row["one_stream_videos_per_s"] = one["videos_per_s"]
        row["plain_videos_per_s"], row["speedup_vs_plain"] = plain, row["videos_per_s"] / plain
        row["int8"] = int8_check(ctx, spec, row["videos_per_s"], agreement, row["streams"])
        if ctx.compile:
            row["compiled"] = compiled_check(ctx, spec, one["videos_per_s"], repeats)
        rows.append(row)
        ctx.memo.pop(("model", spec.title))  # free the model and its clips
    return {"matmul_gflops": ceiling(ctx), "rows": rows}  # the run's ceiling; each row has its own too


def markdown(r: dict) -> str:
    lines = [f"Model only, fp32 on the CPU, random clips of the suite's videos as input; ceiling: the better of "
             f"one large fp32 matmul over every core and one single-threaded matmul per core at once "
             f"({r['matmul_gflops']:.0f} GFLOP/s at the start; measured again before each timed pass, and \"of "
             "ceiling\" is the median of the passes' ratios). \"As the authors run it\": one ViT pass over all "
             "frames of the batch, glibc's default allocator (a separate process). stamcli with 1 stream: one "
             "batch at a time over every core; with its default streams: that many batches at once, as "
             "`stam predict` runs (the GFLOP/s and ceiling columns are for this one):", "",
             "| model | batch | GFLOP/video | as the authors run it, videos/s | stamcli, 1 stream | stamcli, streams | videos/s | speed-up | GFLOP/s | ceiling GFLOP/s | of ceiling | int8 (dynamic) videos/s | int8 speed-up | int8 top-1 = fp32 (classes) | centred (classes) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        q = row["int8"]
        lines.append(f"| {row['model']} | {row['batch_size']} | {row['gflop_per_video']:.1f} | "
                     f"{row['plain_videos_per_s']:.3f} | {row['one_stream_videos_per_s']:.3f} | {row['streams']} | "
                     f"{row['videos_per_s']:.3f} | {row['speedup_vs_plain']:.2f}x | "
                     f"{row['gflops']:.0f} | {row['ceiling_gflops']:.0f} | {100 * row['ceiling_fraction']:.0f}% | "
                     f"{q['videos_per_s']:.3f} | {q['speedup']:.2f}x | {100 * q['agreement']:.0f}% of {q['videos']} ({q['distinct_top1']}) | "
                     f"{100 * q['agreement_centred']:.0f}% ({q['distinct_top1_centred']}) |")
    compiled = [row for row in r["rows"] if "compiled" in row]
    if compiled:
        lines += ["", "| model | `torch.compile` (1 stream): first 3 calls (s) | then videos/s | speed-up over 1 stream |",
                  "| --- | --- | --- | --- |"]
        for row in compiled:
            c = row["compiled"]
            lines.append(f"| {row['model']} | {c['error']} | | |" if "error" in c else
                         f"| {row['model']} | {c['first_call_s']:.1f} | {c['videos_per_s']:.3f} | {c['speedup']:.2f}x |")
    return "\n".join(lines)
