"""``--engine ray`` against the local engine on this machine, on the same clips, in one run.

    sudo python -m benchmarks.ray_engine            # ViT-Ti/16 x 16 (1,024 inputs) and stam_16 (128), 10 s clips (~40 min)
    sudo python -m benchmarks.ray_engine --quick    # tiny stand-ins, 1 s clips (a minute or two)

Ray binds to the machine's interface address, so this runs as root in a loopback-only network
namespace (``tests/ray_cluster.py``): a ``ray start --head`` with every core of the machine, and
this script again inside the namespace, which measures:

* videos/s of both engines over the same inputs, interleaved (local, Ray, local, Ray): over the
  whole run, from the call of :func:`stamcli.tagging.run_tagging` to its return (model loading
  excluded, Ray's connection and actor start-up included), and steady, from the first model
  batch's records to the last record (:func:`steady_rate`);
* each engine's start-up (the whole-run time the steady rate does not explain, :func:`startup_s`)
  and from both, the number of inputs above which the Ray engine's whole-run rate is at least 0.9
  of the local engine's (:func:`break_even`);
* the time to the first record: in the same runs, and for a whole command (a new process: imports,
  model loading and, for Ray, starting a local Ray for the run);
* the driver's peak memory listing and planning 1,000 and 100,000 input paths (an ``@list`` of
  paths that do not exist, so the run's first records come at once), to the first 100 records.

The inputs are the profile's distinct clips, hard-linked as often as needed (:func:`inputs`): the
same bytes decoded again cost what they cost the first time, and archive-sized runs need no
hours of video generation. Prints a Markdown table and writes ``OUT/ray_engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
#: inputs per model in a full run: enough that the Ray engine's start-up (tens of seconds on 2 cores) is not
#: most of the run; about 5 minutes per engine and run for either model on 2 cores
INPUTS = {"small": 1024, "big": 128}
#: a steady part shorter than this share of the run is a burst, not a rate (:func:`steady_rate`)
BURST = 0.25
QUICK_INPUTS = {"small": 8, "big": 4}
#: the head's object store: a real node's size (Ray's default is 30% of the memory), not the tests' 400 MB, which
#: stam_16's model (350 MB, put there once for the actors) would nearly fill, so that decoded clips were spilled to disk
OBJECT_STORE_BYTES = 4 << 30


def inputs(ctx: Context, count: int) -> list[Path]:
    """``count`` input files: the profile's distinct clips, hard-linked (copied where links cannot be made)
    under ``OUT/cache/inputs`` as ``input_0000.mp4`` ... (distinct paths, so each is a video of its own)."""
    clips = ctx.clip_videos()
    folder = ctx.cache / "inputs"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"input_{i:04d}{clips[i % len(clips)].suffix}"
        if not path.exists():
            try:
                os.link(clips[i % len(clips)], path)
            except OSError:
                shutil.copyfile(clips[i % len(clips)], path)
        paths.append(path)
    return paths


def steady_rate(arrivals: list[float], batch: int) -> float | None:
    """Videos/s from the first model batch's records to the last record (records arrive a batch at a
    time, so the first ``batch`` arrivals only mark where the steady part starts); None for a run of
    fewer than two batches after the first, or one whose later batches all came within the last
    :data:`BURST` of it (a rate over such a span measures the delivery, not the work)."""
    span = arrivals[-1] - arrivals[batch - 1] if len(arrivals) >= 3 * batch else 0.0
    if span < BURST * arrivals[-1]:  # the records came in a burst at the end: the run never streamed
        return None
    return (len(arrivals) - batch) / span


def startup_s(run: dict, videos: int) -> float | None:
    """Seconds of the whole run its steady rate does not explain: ``elapsed - videos / steady``."""
    steady = run["steady_videos_per_s"]
    return None if not steady else videos / run["videos_per_s"] - videos / steady


def break_even(local: dict, ray: dict, videos: int, share: float = 0.9) -> float | None:
    """The number of inputs above which Ray's whole-run rate is at least ``share`` of the local engine's, with
    each run as start-up + inputs / steady rate (:func:`startup_s`). 0 when Ray is ahead from the start; None
    when Ray's steady rate is below ``share`` of the local one (no size reaches it) or a run has no steady part."""
    a_local, a_ray = startup_s(local, videos), startup_s(ray, videos)
    if a_local is None or a_ray is None:
        return None
    per_local, per_ray = 1 / local["steady_videos_per_s"], 1 / ray["steady_videos_per_s"]
    gap = per_local - share * per_ray  # seconds per input the local engine spends beyond share x Ray's
    if gap <= 0:
        return None
    return max(0.0, (share * a_ray - a_local) / gap)


def timed_run(ctx: Context, spec, videos: list, engine: dict) -> dict:
    """One ``run_tagging`` over ``videos`` with the engine ``engine`` (PredictOptions fields: :data:`LOCAL`, or
    ``engine="ray"`` and its address): videos/s over the whole run and steady, seconds to the first record."""
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
    arrivals = [t - started for t in times]
    return {"videos_per_s": len(videos) / elapsed, "elapsed_s": elapsed, "first_record_s": arrivals[0],
            "steady_videos_per_s": steady_rate(arrivals, ctx.profile.batch_size),
            "arrivals_s": [round(t, 3) for t in arrivals]}


def summarise(model: str, videos: int, runs: dict) -> dict:
    """A table row from both engines' runs: each engine's better run (by whole-run rate) and the ratios."""
    best = {engine: max(rs, key=lambda r: r["videos_per_s"]) for engine, rs in runs.items()}
    local, ray = best["local"], best["ray"]
    steady = (ray["steady_videos_per_s"] / local["steady_videos_per_s"]
              if local["steady_videos_per_s"] and ray["steady_videos_per_s"] else None)
    return {"model": model, "videos": videos, "runs": runs, "local_videos_per_s": local["videos_per_s"],
            "ray_videos_per_s": ray["videos_per_s"], "ratio": ray["videos_per_s"] / local["videos_per_s"],
            "local_steady_videos_per_s": local["steady_videos_per_s"],
            "ray_steady_videos_per_s": ray["steady_videos_per_s"], "steady_ratio": steady,
            "local_startup_s": startup_s(local, videos), "ray_startup_s": startup_s(ray, videos),
            "break_even_videos": break_even(local, ray, videos)}


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
    for size, spec in (("small", profile.small), ("big", profile.big)):
        if size not in args.models:
            continue
        videos = inputs(ctx, (QUICK_INPUTS if args.quick else INPUTS)[size] if args.inputs is None else args.inputs)
        checkpoint(ctx, spec)
        runs = {"local": [], "ray": []}
        for _ in range(2):
            runs["local"].append(timed_run(ctx, spec, videos, LOCAL))
            runs["ray"].append(timed_run(ctx, spec, videos, ray))
        rows.append(summarise(spec.title, len(videos), runs))
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


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(r: dict) -> str:
    lines = [f"`--engine ray` vs the local engine, {r['video']} clips of {r['clip_s']:g} s, batch {r['batch_size']}, "
             f"fp32 on the CPU ({machine_text(r['machine'])}). Ray: `ray start --head` on this machine, all cores; "
             "each engine's better of 2 interleaved runs, model loading excluded, Ray's connection and actor start-up "
             "included. Steady: from the first batch's records to the last record. Start-up: the whole run's time "
             "beyond inputs / steady rate.",
             "", "| model | inputs | local videos/s | Ray videos/s | Ray / local | steady: local | steady: Ray | "
             "steady: Ray / local | start-up local / Ray (s) | first record local / Ray (s) | inputs for Ray >= 0.9 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        first = {engine: min(x["first_record_s"] for x in runs) for engine, runs in row["runs"].items()}
        even = row["break_even_videos"]
        lines.append(f"| {row['model']} | {row['videos']} | {row['local_videos_per_s']:.2f} | "
                     f"{row['ray_videos_per_s']:.2f} | {row['ratio']:.2f} | {_number(row['local_steady_videos_per_s'])} | "
                     f"{_number(row['ray_steady_videos_per_s'])} | {_number(row['steady_ratio'])} | "
                     f"{_number(row['local_startup_s'], 1)} / {_number(row['ray_startup_s'], 1)} | "
                     f"{first['local']:.1f} / {first['ray']:.1f} | {'-' if even is None else f'{even:,.0f}'} |")
    f = r["first_record"]
    lines += ["", f"A whole command to its first record (new process, imports, model loading), small model: local "
              f"engine {f['local_command_s']:.1f} s, Ray engine with a running cluster "
              f"{f['ray_command_with_cluster_s']:.1f} s, Ray engine starting a local Ray for the run "
              f"{f['ray_command_starting_ray_s']:.1f} s.",
              "", "Driver peak RSS, listing and planning N input paths up to the first 100 records: " +
              ", ".join(f"{int(k):,} paths {v:.0f} MiB" for k, v in r["driver_peak_rss_mb"].items()) + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny stand-in models and 1 s clips")
    parser.add_argument("--out", default="benchmark-results", help="folder for the clips, models and results")
    parser.add_argument("--inputs", type=int, help="inputs per model (default: 1024 for the small model and 128 for "
                                                   "stam_16; --quick: 8 and 4)")
    parser.add_argument("--models", nargs="+", choices=("small", "big"), default=["small", "big"],
                        help="which models to measure (default: both)")
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
        head = RayHead(namespace, num_cpus=os.cpu_count() or 1, object_store_bytes=OBJECT_STORE_BYTES)
        try:
            command = namespace.command([sys.executable, "-m", "benchmarks.ray_engine", "--inner", "--out", out,
                                         *(["--quick"] if args.quick else []),
                                         *([] if args.inputs is None else ["--inputs", str(args.inputs)]),
                                         "--models", *args.models])
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
