"""Section ``e2e``: ``stam predict``'s pipeline over many videos vs the model alone, and vs the
authors'-style pipeline (serial PyAV full decode + PIL, then the same model run the authors' way,
in a process of its own: :mod:`benchmarks.baseline`), on 10 s clips and on 1-minute videos.

For the small backbone it also gives the bound of the machine: the rate with every core busy,
the model at the matmul ceiling and decoding perfectly hidden; no pipeline can beat it.

Ours runs :func:`stamcli.tagging.run_tagging` (what ``stam predict`` calls) on a checkpoint in
the authors' format, writing JSONL; its rate counts from the first video to the last record,
model loading excluded. Model-only figures come from the ``model`` section of the same run.
"""

from __future__ import annotations

import statistics
import time

from stamcli.jobs import PredictOptions
from stamcli.parallel import cpu_cores
from stamcli.decode import read_clip
from stamcli.jobs import TaggingJob
from stamcli.tagging import run_tagging

from . import baseline
from .common import Context, ModelSpec, duration_text, median_time, save_authors_checkpoint
from .model import ceiling, model_only


def checkpoint(ctx: Context, spec: ModelSpec):
    """``spec`` with random peaked weights saved in the authors' format (cached)."""
    slug = "".join(c if c.isalnum() else "_" for c in spec.title).strip("_")
    path = ctx.cache / f"random_{slug}.pth"
    if not path.exists():
        save_authors_checkpoint(spec.build(), path)
    return path


def predict_rate(ctx: Context, spec: ModelSpec, videos: list, repeats: int, streams: int | None = None) -> float:
    """Median videos/s of ``stam predict`` (run_tagging) over ``videos`` (``--streams``: the default unless given)."""
    rates = []
    job_output = ctx.out / "e2e_predictions.jsonl"

    def once():
        job_output.unlink(missing_ok=True)
        summary = run_tagging(TaggingJob(
            paths=[str(v) for v in videos], model=str(checkpoint(ctx, spec)), output=str(job_output),
            options=PredictOptions(batch_size=ctx.profile.batch_size, device="cpu", streams=streams),
        ))
        assert summary.ok == len(videos), f"{summary.failed} videos failed"
        rates.append(summary.videos_per_s)

    median_time(once, repeats)
    job_output.unlink(missing_ok=True)
    return sorted(rates)[len(rates) // 2]


def decode_core_seconds(spec: ModelSpec, videos: list) -> float:
    """CPU seconds per video of stamcli's decode + preprocessing (one decode thread, as in
    ``stam predict`` with several workers), the median over ``videos``."""
    times = []
    for video in videos:
        started = time.process_time()
        read_clip(video, spec.frames, spec.img_size, threads=1)
        times.append(time.process_time() - started)
    return statistics.median(times)


def bound(ctx: Context, spec: ModelSpec, gflop_per_video: float, videos: list) -> dict:
    """The fastest end-to-end rate this machine allows: every core busy, the model at the matmul
    ceiling, decoding perfectly overlapped: ``1 / (decode_core_s / cores + GFLOP / ceiling)``;
    with the parts it is made of."""
    decode_core_s, ceiling_gflops = decode_core_seconds(spec, videos), ceiling(ctx)
    return {"bound_videos_per_s": 1 / (decode_core_s / cpu_cores() + gflop_per_video / ceiling_gflops),
            "bound_decode_core_s": decode_core_s, "bound_gflop_per_video": gflop_per_video,
            "bound_ceiling_gflops": ceiling_gflops}


def run(ctx: Context) -> dict:
    p = ctx.profile
    rows = []
    for which, spec, seconds, repeats, authors in (("big", p.big, p.short_s, 1, False),
                                                   ("small", p.small, p.short_s, p.repeats, True),
                                                   ("small", p.small, p.minute_s, 1, True)):
        videos = ctx.clip_videos(seconds)
        alone = model_only(ctx, spec, 3 if spec is p.big and not ctx.quick else p.repeats)
        model_rate = alone["videos_per_s"]
        ours = predict_rate(ctx, spec, videos, repeats)
        row = {"model": spec.title, "video": duration_text(seconds), "videos": len(videos), "repeats": repeats,
               "model_only_videos_per_s": model_rate, "end_to_end_videos_per_s": ours, "of_model_only": ours / model_rate}
        if authors:
            row["one_stream_videos_per_s"] = predict_rate(ctx, spec, videos, repeats, streams=1)
            row["authors_videos_per_s"] = baseline.measure(ctx, "pipeline", which, seconds=seconds)
            row["speedup_vs_authors"] = ours / row["authors_videos_per_s"]
            row.update(bound(ctx, spec, alone["gflop_per_video"], videos))
            row["bound_speedup_vs_authors"] = row["bound_videos_per_s"] / row["authors_videos_per_s"]
        rows.append(row)
    return {"batch_size": p.batch_size, "video": p.video_text, "cores": cpu_cores(), "rows": rows}


def markdown(r: dict) -> str:
    lines = [f"End to end, `stam predict` over {r['rows'][0]['videos']} videos ({r['video']}) per row, batch "
             f"{r['batch_size']}, fp32 on the CPU, vs the model alone and the authors'-style pipeline; bound: the "
             f"fastest rate {r['cores']} cores allow (model at the matmul ceiling, decoding fully overlapped):", "",
             "| model | videos | model only, videos/s | `stam predict`, videos/s | of model only | `--streams 1`, videos/s | authors'-style, videos/s | speed-up | bound, videos/s | bound's speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        authors = (f"{row['one_stream_videos_per_s']:.3f} | {row['authors_videos_per_s']:.2f} | "
                   f"{row['speedup_vs_authors']:.1f}x | {row['bound_videos_per_s']:.2f} | {row['bound_speedup_vs_authors']:.1f}x"
                   if "authors_videos_per_s" in row else "- | - | - | - | -")
        lines.append(f"| {row['model']} | {row['video']} | {row['model_only_videos_per_s']:.3f} | "
                     f"{row['end_to_end_videos_per_s']:.3f} | {100 * row['of_model_only']:.0f}% | {authors} |")
    return "\n".join(lines)
