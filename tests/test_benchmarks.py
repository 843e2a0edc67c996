"""The benchmark suite runs (in its quick mode) and reports every figure, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from conftest import CHILD_ENV, REPO
from stamcli.decode import SEEK_MIN_GAP
from stamcli.parallel import default_streams
from stamcli.timeline import plan_windows



def test_the_quick_suite_measures_every_section_and_writes_its_tables(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=CHILD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text() == result.stdout
    m = data["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["torch"] == torch.__version__ and data["quick"] is True
    s = data["sections"]
    assert list(s) == ["decode", "model", "e2e", "memory", "cuda"]

    assert [row["video"] for row in s["decode"]["rows"]] == ["1 s", "3 s", "6 s"]
    for row in s["decode"]["rows"]:
        assert row["ours_ms"] > 0 and row["opencv_ms"] > 0 and row["full_decode_ms"] > 0
        assert row["speedup"] == pytest.approx(row["full_decode_ms"] / row["ours_ms"])
        assert row["speedup_vs_opencv"] == pytest.approx(row["opencv_ms"] / row["ours_ms"])
    timelines = s["decode"]["timelines"]
    assert [(t["video"], t["window_s"], t["stride_s"]) for t in timelines] == [
        ("3 s", 1.0, 0.5), ("3 s", 0.2, 3.0), ("6 s", 1.0, 0.5), ("6 s", 0.2, 3.0)]
    for t, n in zip(timelines, (75, 75, 150, 150)):
        assert t["windows"] == len(plan_windows(n, 25, t["window_s"], t["stride_s"]))
        assert (t["ours"]["decoder"], t["opencv"]["decoder"]) == ("pyav", "opencv")
        assert t["ours"]["frame_count"] == t["opencv"]["frame_count"] == t["opencv"]["decoded"] == n
        assert 0 < t["ours"]["decoded"] < n  # x264's unsampled B-frames are skipped
        assert t["speedup_vs_opencv"] == pytest.approx(t["opencv_ms"] / t["ours_ms"])
    seeks = s["decode"]["seeks"]
    assert [row["video"] for row in seeks] == ["MJPEG (all key frames)", "mp4v (GOP 12)", "H.264 (GOP 25)",
                                               "H.264 (GOP 250)"]
    assert s["decode"]["seek_min_gap"] == SEEK_MIN_GAP
    for row in seeks:
        assert row["frames"] == 150 and row["grab_ms"] > 0 and row["seek_ms"] > 0
        assert row["grabs_per_seek"] == pytest.approx(row["seek_ms"] / row["grab_ms"])
    assert "| a seek in grabs |" in (tmp_path / "results.md").read_text()

    assert s["model"]["matmul_gflops"] > 0
    for row in s["model"]["rows"]:
        assert row["batch_size"] == 2 and row["videos_per_s"] > 0 and row["gflop_per_video"] > 0
        # measured as stam predict runs it (its default streams), and with one stream beside it
        assert row["streams"] == default_streams(torch.device("cpu")) and row["one_stream_videos_per_s"] > 0
        assert row["gflops"] == pytest.approx(row["gflop_per_video"] * row["videos_per_s"])
        # one timed pass in --quick: the fraction is that pass's GFLOP/s over the ceiling measured before it
        assert row["ceiling_gflops"] > 0 and row["ceiling_fraction"] == pytest.approx(row["gflops"] / row["ceiling_gflops"])
        assert row["plain_videos_per_s"] > 0
        assert row["speedup_vs_plain"] == pytest.approx(row["videos_per_s"] / row["plain_videos_per_s"])
        q = row["int8"]
        assert q["videos_per_s"] > 0 and 0 <= q["agreement"] <= 1 and 0 <= q["agreement_centred"] <= 1
        assert 1 <= q["distinct_top1"] <= q["videos"] and 1 <= q["distinct_top1_centred"] <= q["videos"]
    assert [row["int8"]["videos"] for row in s["model"]["rows"]] == [2, 3]  # a batch; every e2e video

    big, small, longer = s["e2e"]["rows"]
    assert [row["video"] for row in (big, small, longer)] == ["1 s", "1 s", "3 s"]
    assert big["videos"] == small["videos"] == longer["videos"] == 3 and "authors_videos_per_s" not in big
    for row in (big, small, longer):
        assert row["end_to_end_videos_per_s"] > 0
        assert row["of_model_only"] == pytest.approx(row["end_to_end_videos_per_s"] / row["model_only_videos_per_s"])
    for row in (small, longer):
        assert row["one_stream_videos_per_s"] > 0
        assert row["speedup_vs_authors"] == pytest.approx(row["end_to_end_videos_per_s"] / row["authors_videos_per_s"])
        assert row["bound_speedup_vs_authors"] == pytest.approx(row["bound_videos_per_s"] / row["authors_videos_per_s"])
        # the bound (the machine's limit) is made of the small model's exact FLOPs, the measured
        # ceiling and decode CPU time, over the cores: checked by its formula, never against a timing
        model_row = next(r for r in s["model"]["rows"] if r["model"] == row["model"])
        assert row["bound_gflop_per_video"] == pytest.approx(model_row["gflop_per_video"])
        assert row["bound_decode_core_s"] > 0 and row["bound_ceiling_gflops"] > 0
        assert row["bound_videos_per_s"] == pytest.approx(1 / (
            row["bound_decode_core_s"] / s["e2e"]["cores"] + row["bound_gflop_per_video"] / row["bound_ceiling_gflops"]))

    short, long = s["memory"]["rows"]
    assert 50 < short["peak_rss_mb"] < 20_000 and long["peak_rss_mb"] > 50
    assert s["memory"]["growth_mb"] == pytest.approx(long["peak_rss_mb"] - short["peak_rss_mb"])
    if torch.cuda.is_available():
        assert s["cuda"]["batches"][0]["videos_per_s"] > 0
    else:
        assert "no CUDA GPU" in s["cuda"]["skipped"]
        assert "CUDA: skipped (no CUDA GPU" in result.stdout
    assert "| 6 s | " in result.stdout and "of ceiling" in result.stdout and "authors'-style" in result.stdout
    assert "as the authors run it" in result.stdout and "bound's speed-up" in result.stdout
    assert "stamcli, 1 stream" in result.stdout and "`--streams 1`, videos/s" in result.stdout
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert "h264_160x90_25fps_6s_seed0.mp4" in cached and "h264_160x90_25fps_3s_seed2.mp4" in cached and len([n for n in cached if n.endswith(".pth")]) == 2


def test_only_runs_the_chosen_sections(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only", "cuda",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, env=CHILD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(json.loads((tmp_path / "results.json").read_text())["sections"]) == ["cuda"]


def test_the_authors_style_pipeline_gives_the_frames_stamcli_gives(tmp_path):
    """The reference pipeline of the comparisons is right: PyAV + PIL ~ OpenCV + antialiased resize."""
    sys.path.insert(0, str(REPO))
    from benchmarks.common import write_clip
    from benchmarks.decode import authors_clip
    from stamcli.decode import read_clip

    video = write_clip(tmp_path / "v.mp4", 2.0, 160, 96, seed=3)
    theirs, ours = authors_clip(video, 8, 64), read_clip(video, 8, 64).frames
    assert theirs.shape == ours.shape == (8, 3, 64, 64) and theirs.dtype == torch.uint8
    assert (theirs.float() - ours.float()).abs().mean() < 2.0  # grey levels (decoders' rounding)


def test_peak_rss_is_read_for_the_child_alone(tmp_path, monkeypatch):
    """The child allocates 300 MiB and frees it while the poller waits, and exits only after a
    reading taken since: what is read must be the peak, not the RSS of the moment."""
    sys.path.insert(0, str(REPO))
    from benchmarks import memory

    ready, go, freed, seen = (tmp_path / name for name in ("ready", "go", "freed", "seen"))
    read_hwm = memory._hwm_kib

    def sampled(pid: int) -> int:
        if ready.exists() and not go.exists():  # let the child allocate and free, and read nothing meanwhile
            go.touch()
            for _ in range(6000):
                if freed.exists():
                    break
                time.sleep(0.01)
        after = freed.exists()
        kib = read_hwm(pid)
        if after:
            seen.touch()  # the child may exit now
        return kib

    def child(allocate: str) -> list[str]:
        def when(path):
            return f"while not pathlib.Path({str(path)!r}).exists(): time.sleep(0.01)\n"
        return ["-c", f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\n{when(go)}{allocate}\n"
                      f"pathlib.Path({str(freed)!r}).touch()\n{when(seen)}"]

    monkeypatch.setattr(memory, "_hwm_kib", sampled)
    small = memory.peak_rss_mb(child("pass"))  # the parent (pytest + torch) is far bigger
    for path in (ready, go, freed, seen):
        path.unlink()
    big = memory.peak_rss_mb(child("b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); del b"))
    assert 1 < small < 100 and big > small + 250
    with pytest.raises(RuntimeError, match="failed"):
        memory.peak_rss_mb(["-c", "raise SystemExit(3)"])


def test_bench_finetune_quick_mode_measures_both_ways_of_training(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_finetune.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=CHILD_ENV,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    for mode in ("full", "frozen"):
        assert data[mode]["first"] > 0 and data[mode]["later"] > 0 and data[mode]["total"] > data[mode]["first"]
    assert data["clips"] == 4 and data["epochs"] == 2
    assert "| `--freeze-backbone` (set-up builds the cache) |" in result.stdout


def test_the_cuda_section_measures_on_any_device(tmp_path):
    """The CUDA section cannot run here without a GPU; its measurement runs on the CPU instead."""
    sys.path.insert(0, str(REPO))
    from benchmarks import cuda
    from benchmarks.common import QUICK, Context

    ctx = Context(QUICK, tmp_path, quick=True)
    r = cuda.measure(ctx, torch.device("cpu"))
    assert [row["batch_size"] for row in r["batches"]] == [1, 2] and r["precision"] == "bf16"
    assert all(row["videos_per_s"] > 0 for row in r["batches"])
    assert r["best_batch_size"] in (1, 2) and r["gpu"] == "cpu"
    assert [row["workers"] for row in r["end_to_end"]][0] == 1
    assert all(row["videos_per_s"] > 0 and row["decode_only_videos_per_s"] > 0 for row in r["end_to_end"])
    table = cuda.markdown(r)
    assert "| 2 | " in table and "decode alone, videos/s" in table


def test_the_shot_cost_benchmark_times_every_step(tmp_path):
    from benchmarks.shots import cost

    text = cost(tmp_path, seconds=4, shot_s=2, width=160, height=90, quick=True, log=lambda *_: None)
    assert (tmp_path / "shots_cost.md").read_text() == text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3 + 2 * 4 and "(2 shots)" in text
    assert [r[0].lstrip("| ").split(",")[0].split(":")[0] for r in rows[3:7]] == [
        "fixed 2 s windows", "--window shots", "--window shots", "model on the shot windows"]
    assert all(float(r[1].rstrip(" |")) > 0 for r in rows)


def test_the_ray_benchmark_starts_and_renders_its_table(capsys):
    """``python -m benchmarks.ray_engine`` needs root and minutes (it is not run here): its command line
    and its table from runs of the shape ``timed_run`` returns."""
    from benchmarks.ray_engine import main, markdown, summarise

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    usage = capsys.readouterr().out
    assert exited.value.code == 0 and "--quick" in usage and "--inputs" in usage
    local = {"videos_per_s": 100 / 30, "first_record_s": 5.0, "steady_videos_per_s": 4.0}  # start-up 30 - 25 = 5 s
    ray = {"videos_per_s": 100 / 40, "first_record_s": 15.0, "steady_videos_per_s": 4.0}  # start-up 15 s
    row = summarise("tiny", 100, {"local": [local], "ray": [ray]})
    assert row["ratio"] == pytest.approx(0.75) and row["steady_ratio"] == pytest.approx(1.0)
    assert row["local_startup_s"] == pytest.approx(5.0) and row["ray_startup_s"] == pytest.approx(15.0)
    # 0.9 (15 + n/4) <= 5 + n/4  <=>  n >= (13.5 - 5) / (0.25 - 0.225) = 340
    assert row["break_even_videos"] == pytest.approx(340.0)
    result = {"machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 2, "torch": "2.14.1", "gpu": None,
                          "date": "2026-12-03"},
              "quick": True, "batch_size": 2, "video": "160x90 H.264", "clip_s": 1.0, "rows": [row],
              "first_record": {"local_command_s": 3.0, "ray_command_with_cluster_s": 5.0,
                               "ray_command_starting_ray_s": 9.0},
              "driver_peak_rss_mb": {"1000": 700.0, "100000": 704.0}}
    table = markdown(result)
    assert "| tiny | 100 | 3.33 | 2.50 | 0.75 | 4.00 | 4.00 | 1.00 | 5.0 / 15.0 | 5.0 / 15.0 | 340 |" in table
    assert "1,000 paths 700 MiB, 100,000 paths 704 MiB" in table


def test_the_ray_benchmark_measures_the_steady_rate_after_the_first_batch_and_its_break_even():
    from benchmarks.ray_engine import break_even, steady_rate

    # records arrive a batch (2) at a time: the first batch at 4 s, then one batch every 2 s
    arrivals = [4.0, 4.0, 6.0, 6.0, 8.0, 8.0, 10.0, 10.0]
    assert steady_rate(arrivals, 2) == pytest.approx(6 / 6.0)
    assert steady_rate(arrivals[:5], 2) is None  # fewer than two batches after the first
    assert steady_rate([3.0] * 8, 2) is None  # one burst: no steady part
    # every batch came within the last quarter of the run (first at 10 s, the last at 10.4 s): a burst too
    assert steady_rate([10.0, 10.0, 10.1, 10.1, 10.2, 10.2, 10.4, 10.4], 2) is None
    slow = {"videos_per_s": 1.0, "steady_videos_per_s": 1.0}
    fast = {"videos_per_s": 2.0, "steady_videos_per_s": 2.0}
    assert break_even(slow, fast, 10) == 0.0  # Ray ahead from the first input
    assert break_even(fast, slow, 10) is None  # Ray's steady rate below 0.9 of the local one: never
    assert break_even({"videos_per_s": 1.0, "steady_videos_per_s": None}, fast, 10) is None


def test_the_ray_benchmark_inputs_are_distinct_paths_to_the_same_clips(tmp_path):
    from benchmarks.common import QUICK, Context
    from benchmarks.ray_engine import inputs

    ctx = Context(QUICK, tmp_path, True, log=lambda text: None)
    paths = inputs(ctx, 7)
    clips = ctx.clip_videos()
    assert [p.name for p in paths] == [f"input_{i:04d}.mp4" for i in range(7)] and len(clips) == QUICK.videos == 3
    assert [p.read_bytes() for p in paths] == [clips[i % 3].read_bytes() for i in range(7)]
    assert [p.stat().st_ino for p in paths[:3]] == [c.stat().st_ino for c in clips]  # hard links, not copies
    assert inputs(ctx, 7) == paths  # made once
