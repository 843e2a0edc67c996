"""Section ``e2e``: ``stam predict``'s pipeline over many videos vs the model alone, and vs the
authors'-style pipeline (serial PyAV full decode + PIL, then the same model).

Ours runs :func:`stamcli.tagging.run_tagging` (what ``stam predict`` calls) on a checkpoint in
the authors' format, writing JSONL; its rate counts from the first video to the last record,
model loading excluded. Model-only figures come from the ``model`` section of the same run.
"""

from __future__ import annotations

import torch

from stamcli.engine import PredictOptions
from stamcli.tagging import TaggingJob, run_tagging

from .common import Context, ModelSpec, median_time, save_authors_checkpoint
from .decode import authors_clip
from .model import model_only


def checkpoint(ctx: Context, spec: ModelSpec):
    """``spec`` with random peaked weights saved in the authors' format (cached)."""
    slug = "".join(c if c.isalnum() else "_" for c in spec.title).strip("_")
    path = ctx.cache / f"random_{slug}.pth"
    if not path.exists():
        save_authors_checkpoint(spec.build(), path)
    return path


def predict_rate(ctx: Context, spec: ModelSpec, videos: list, repeats: int) -> float:
    """Median videos/s of ``stam predict`` (run_tagging) over ``videos``."""
    rates = []
    job_output = ctx.out / "e2e_predictions.jsonl"

    def once():
        job_output.unlink(missing_ok=True)
        summary = run_tagging(TaggingJob(
            paths=[str(v) for v in videos], model=str(checkpoint(ctx, spec)), output=str(job_output),
            options=PredictOptions(batch_size=ctx.profile.batch_size, device="cpu"),
        ))
        assert summary.ok == len(videos), f"{summary.failed} videos failed"
        rates.append(summary.videos_per_s)

    median_time(once, repeats)
    job_output.unlink(missing_ok=True)
    return sorted(rates)[len(rates) // 2]


def authors_rate(ctx: Context, spec: ModelSpec, videos: list) -> float:
    """videos/s of the authors'-style pipeline: decode each video fully, serially, then the model."""
    model = spec.build()
    batch = ctx.profile.batch_size

    def once():
        with torch.inference_mode():
            for start in range(0, len(videos), batch):
                clips = [authors_clip(v, spec.frames, spec.img_size) for v in videos[start : start + batch]]
                model(torch.stack(clips).float().div_(255.0)).softmax(-1)

    return len(videos) / median_time(once, 1)


def run(ctx: Context) -> dict:
    p = ctx.profile
    videos = ctx.clip_videos()
    rows = []
    for spec, repeats, authors in ((p.big, 1, False), (p.small, p.repeats, True)):
        model_rate = model_only(ctx, spec, 2 if spec is p.big and not ctx.quick else p.repeats)["videos_per_s"]
        ours = predict_rate(ctx, spec, videos, repeats)
        row = {"model": spec.title, "videos": len(videos), "repeats": repeats, "model_only_videos_per_s": model_rate,
               "end_to_end_videos_per_s": ours, "of_model_only": ours / model_rate}
        if authors:
            row["authors_videos_per_s"] = authors_rate(ctx, spec, videos)
            row["speedup_vs_authors"] = ours / row["authors_videos_per_s"]
        rows.append(row)
    return {"batch_size": p.batch_size, "video": f"{p.short_s:g} s {p.video_text}", "rows": rows}


def markdown(r: dict) -> str:
    lines = [f"End to end, `stam predict` over {r['rows'][0]['videos']} videos ({r['video']}), batch "
             f"{r['batch_size']}, fp32 on the CPU, vs the model alone and the authors'-style pipeline:", "",
             "| model | model only, videos/s | `stam predict`, videos/s | of model only | authors'-style, videos/s | speed-up |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        authors = (f"{row['authors_videos_per_s']:.2f} | {row['speedup_vs_authors']:.1f}x"
                   if "authors_videos_per_s" in row else "- | -")
        lines.append(f"| {row['model']} | {row['model_only_videos_per_s']:.3f} | {row['end_to_end_videos_per_s']:.3f}"
                     f" | {100 * row['of_model_only']:.0f}% | {authors} |")
    return "\n".join(lines)
