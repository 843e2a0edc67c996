"""The baselines, each measured in a fresh child process, as a user's own script would run.

    python -m benchmarks.baseline model    --profile full --model small --out DIR
    python -m benchmarks.baseline pipeline --profile full --model small --out DIR --seconds 10

``model``: the model alone as the authors' code runs it: one spatial pass over every frame of
the batch and glibc's default allocator (stamcli's CPU tuning, :mod:`stamcli.allocator` and
:data:`stamcli.model.CPU_FRAME_CHUNK`, is process-wide, hence the separate process).
``pipeline``: the authors'-style end-to-end run: each video decoded fully and serially with
PyAV + PIL (:func:`benchmarks.decode.authors_clip`), then that model, batch after batch.
Either prints one JSON line: ``{"videos_per_s": ...}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import FULL, QUICK, REPO, Context, ModelSpec, child_env, median_time


def authors_model(spec: ModelSpec):
    """``spec`` with its random peaked weights, run the authors' way (one pass over all frames)."""
    model = spec.build()
    model.frame_chunk = None
    return model


def model_rate(ctx: Context, spec: ModelSpec, repeats: int) -> float:
    from benchmarks.model import clips_tensor

    model, videos = authors_model(spec), clips_tensor(ctx, spec, ctx.profile.batch_size)
    with torch.inference_mode():
        model(videos)  # warm-up
        return len(videos) / median_time(lambda: model(videos), repeats)


def pipeline_rate(ctx: Context, spec: ModelSpec, videos: list) -> float:
    from benchmarks.decode import authors_clip

    model, batch = authors_model(spec), ctx.profile.batch_size

    def once():
        with torch.inference_mode():
            for start in range(0, len(videos), batch):
                clips = [authors_clip(v, spec.frames, spec.img_size) for v in videos[start : start + batch]]
                model(torch.stack(clips).float().div_(255.0)).softmax(-1)

    return len(videos) / median_time(once, 1)


def measure(ctx: Context, mode: str, model: str, *, repeats: int = 1, seconds: float | None = None) -> float:
    """videos/s of a baseline (``mode`` "model" or "pipeline"; ``model`` "big" or "small"), measured
    in a child process on the videos of ``ctx`` (``seconds``: their length, the short clip by default)."""
    args = [sys.executable, "-m", "benchmarks.baseline", mode, "--profile", "quick" if ctx.quick else "full",
            "--model", model, "--out", str(ctx.out), "--repeats", str(repeats)]
    if seconds is not None:
        args += ["--seconds", str(seconds)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"baseline {mode} {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["videos_per_s"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["model", "pipeline"])
    parser.add_argument("--profile", choices=["full", "quick"], default="full")
    parser.add_argument("--model", choices=["big", "small"], default="small")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=None, help="length of the videos (pipeline)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    quick = args.profile == "quick"
    ctx = Context(QUICK if quick else FULL, args.out, quick, log=lambda s: print(s, file=sys.stderr))
    spec = getattr(ctx.profile, args.model)
    if args.mode == "model":
        rate = model_rate(ctx, spec, args.repeats)
    else:
        rate = pipeline_rate(ctx, spec, ctx.clip_videos(args.seconds))
    print(json.dumps({"videos_per_s": rate}))


if __name__ == "__main__":
    main()
