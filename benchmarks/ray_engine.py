"""``--engine ray`` against the local engine on this machine, on the same clips, in one run.

    sudo python -m benchmarks.ray_engine            # ViT-Ti/16 x 16 and stam_16 (random weights), 10 s clips
    sudo python -m benchmarks.ray_engine --quick    # tiny stand-ins, 1 s clips (a minute or two)

Ray binds to the machine's interface address, so this runs as root in a loopback-only network
namespace (``tests/ray_cluster.py``): a ``ray start --head`` with every core of the machine, and
this script again inside the namespace, which measures:

* videos/s of both engines over the same clips, interleaved (local, Ray, local, Ray), both from
  the call of :func:`stamcli.tagging.run_tagging` to its return (model loading excluded, Ray's
  connection and actor start-up included), and the Ray engine's steady rate (first record to last);
* the time to the first record: in the same runs, and for a whole command (a new process: imports,
  model loading and, for Ray, starting a local Ray for the run);
* the driver's peak memory listing and planning 1,000 and 100,000 input paths (an ``@list`` of
  paths that do not exist, so the run's first records come at once), to the first 100 records.

Prints a Markdown table and writes ``OUT/ray_engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/ray_engine.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import FULL, QUICK, Context, machine, machine_text  # noqa: E402
from benchmarks.e2e import checkpoint  # noqa: E402
from benchmarks.memory import peak_rss_mb  # noqa: E402

from stamcli.jobs import PredictOptions, TaggingJob  # noqa: E402
from stamcli.tagging import run_tagging  # noqa: E402

LOCAL: dict = {}  #: PredictOptions fields of the local engine (its defaults)


def timed_run(ctx: Context, spec, videos: list, engine: dict) -> dict:
    """One ``run_tagging`` over ``videos`` with the engine ``engine`` (PredictOptions fields: :data:`LOCAL`, or
    ``engine="ray"`` and its address): videos/s, seconds to the first record, the steady rate."""
    out = ctx.out / "ray_bench.jsonl"
    out.unlink(missing_ok=True)
    times: list[float] = []
    started = time.perf_counter()
    summary = run_tagging(TaggingJob(paths=[str(v) for v in videos], model=str(checkpoint(ctx, spec)), output=str(out),
                                     options=PredictOptions(batch_size=ctx.profile.batch_size, device="cpu", **engine)),
                          on_record=lambda record: times.append(time.perf_counter()))
    elapsed = time.perf_counter() - started
    out.unlink(missing_ok=True)
    assert summary.ok == len(videos), f"{summary.failed} videos failed"
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    return {"videos_per_s": len(videos) / elapsed, "first_record_s": times[0] - started, "steady_videos_per_s": steady}


def command_first_record_s(args: list[str], out: Path, env: dict) -> float:
    """Seconds from starting ``stam ARGS -o OUT`` to its first record in OUT (the process then runs on)."""
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "stamcli", "predict", *args, "-o", str(out), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not (out.exists() and out.read_bytes().count(b"\n") >= 1):
            if proc.poll() is not None:
                raise RuntimeError(f"stam {' '.join(args)} ended early: {proc.stderr.read().decode()[-800:]}")
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        proc.wait()
        out.unlink(missing_ok=True)


def plan_only(count: int, model: str) -> None:
    """Child process: list ``count`` paths from an @list, plan the Ray run, take its first 100 records."""
    import tempfile

    from stamcli import load_model
    from stamcli.inputs import collect_videos
    from stamcli.ray_engine import RayPredictor

    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "videos.txt"
        listing.write_text("".join(f"/nonexistent/bucket/folder/video_{i:07d}.mp4\n" for i in range(count)))
        videos = collect_videos([f"@{listing}"])
        predictor = RayPredictor(load_model(model), PredictOptions(batch_size=8, device="cpu", engine="ray"))
        taken = 0
        for batch, _ in predictor.compute_batches(videos, predictor.probabilities):
            taken += len(batch)
            if taken >= 100:
                break
    assert taken >= 100


def inner(args) -> dict:
    """Inside the namespace, with ``RAY_ADDRESS`` set to the head."""
    profile = QUICK if args.quick else FULL
    ctx = Context(profile, Path(args.out), args.quick, log=lambda text: print(text, file=sys.stderr))
    env = dict(os.environ)
    ray = {"engine": "ray", "ray_address": env["RAY_ADDRESS"]}
    rows = []
    for spec in (profile.small, profile.big):
        videos = ctx.clip_videos()
        checkpoint(ctx, spec)
        runs = {"local": [], "ray": []}
        for _ in range(2):
            runs["local"].append(timed_run(ctx, spec, videos, LOCAL))
            runs["ray"].append(timed_run(ctx, spec, videos, ray))
        best = {engine: max(r["videos_per_s"] for r in rs) for engine, rs in runs.items()}
        rows.append({"model": spec.title, "videos": len(videos), "runs": runs, "local_videos_per_s": best["local"],
                     "ray_videos_per_s": best["ray"], "ratio": best["ray"] / best["local"],
                     "ray_steady_videos_per_s": max(r["steady_videos_per_s"] or 0 for r in runs["ray"])})
    model = str(checkpoint(ctx, profile.small))
    video = str(ctx.clip_videos()[0])
    local_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    first = {
        "local_command_s": command_first_record_s([str(video), "--model", model, "--device", "cpu"],
                                                  ctx.out / "first.jsonl", env),
        "ray_command_with_cluster_s": command_first_record_s(
            [str(video), "--model", model, "--device", "cpu", "--engine", "ray"], ctx.out / "first.jsonl", env),
        "ray_command_starting_ray_s": command_first_record_s(
            [str(video), "--model", model, "--device", "cpu", "--engine", "ray"], ctx.out / "first.jsonl", local_env),
    }
    plan = {count: peak_rss_mb(["-m", "benchmarks.ray_engine", "--plan", str(count), "--model", model])
            for count in (1_000, 100_000)}
    return {"machine": machine(), "quick": args.quick, "batch_size": profile.batch_size, "video": profile.video_text,
            "clip_s": profile.short_s, "rows": rows, "first_record": first,
            "driver_peak_rss_mb": {str(k): v for k, v in plan.items()}}


def markdown(r: dict) -> str:
    lines = [f"`--engine ray` vs the local engine, {r['video']} clips of {r['clip_s']:g} s, batch {r['batch_size']}, "
             f"fp32 on the CPU ({machine_text(r['machine'])}). Ray: `ray start --head` on this machine, all cores; "
             "best of 2 interleaved runs each, model loading excluded, Ray's connection and actor start-up included.",
             "", "| model | videos | local videos/s | Ray videos/s | Ray / local | Ray steady videos/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} | {row['videos']} | {row['local_videos_per_s']:.2f} | "
                     f"{row['ray_videos_per_s']:.2f} | {row['ratio']:.2f} | {row['ray_steady_videos_per_s']:.2f} |")
    f = r["first_record"]
    first_runs = "; ".join(f"{row['model']}: local {min(x['first_record_s'] for x in row['runs']['local']):.1f} s, "
                           f"Ray {min(x['first_record_s'] for x in row['runs']['ray']):.1f} s" for row in r["rows"])
    lines += ["", f"Time to the first record, in the runs above: {first_runs}. A whole command (new process, "
              f"imports, model loading), small model: local engine {f['local_command_s']:.1f} s, Ray engine with "
              f"a running cluster {f['ray_command_with_cluster_s']:.1f} s, Ray engine starting a local Ray for the run "
              f"{f['ray_command_starting_ray_s']:.1f} s.",
              "", "Driver peak RSS, listing and planning N input paths up to the first 100 records: " +
              ", ".join(f"{int(k):,} paths {v:.0f} MiB" for k, v in r["driver_peak_rss_mb"].items()) + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny stand-in models and 1 s clips")
    parser.add_argument("--out", default="benchmark-results", help="folder for the clips, models and results")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plan:
        return plan_only(args.plan, args.model)
    if args.inner:
        print(json.dumps(inner(args)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ray_cluster import LoopbackNamespace, RayHead, skip_reason

    reason = skip_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with LoopbackNamespace() as namespace:
        head = RayHead(namespace, num_cpus=os.cpu_count() or 1)
        try:
            command = namespace.command([sys.executable, "-m", "benchmarks.ray_engine", "--inner", "--out", out,
                                         *(["--quick"] if args.quick else [])])
            result = subprocess.run(command, env=head.env(RAY_ADDRESS=head.address), stdout=subprocess.PIPE,
                                    text=True, cwd=Path(__file__).resolve().parents[1])
            if result.returncode != 0:
                sys.exit(f"the measurement failed ({result.returncode})")
        finally:
            head.close()
    data = json.loads(result.stdout.strip().splitlines()[-1])
    (out / "ray_engine.json").write_text(json.dumps(data, indent=2))
    print(markdown(data))


if __name__ == "__main__":
    main()
