"""`stam predict` promises checked on real runs: separate output streams, --labels, a file no user
may read, subtitles of unreadable videos, --resume with previews, a real Ctrl-C (CSV and --window)
and --window under a real torchrun. Tiny model, generated videos, always on the CPU."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CHILD_ENV, TINY_LABELS
from gate import ctrl_c_at
from synthetic import write_index_video, write_text
from stamcli import load_checkpoint
from stamcli.cli import app
from stamcli.decode import read_clip
from stamcli.engine import PredictOptions, Predictor
from stamcli.errors import VideoError
from stamcli.writers import read_records

runner = CliRunner()
ENV = dict(CHILD_ENV, OMP_NUM_THREADS="1", COLUMNS="200")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    """Four 2-second index videos (25 fps, 48x64) that differ in length and content."""
    root = tmp_path_factory.mktemp("runs")
    return [write_index_video(root / f"v{i}.mp4", 44 + 4 * i, 48, 64, fps=25) for i in range(4)]


def _stam(*args, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "stamcli", *map(str, args)], capture_output=True, text=True,
                            env=ENV, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def _predict(*args):
    return runner.invoke(app, ["predict", *map(str, args)], catch_exceptions=False)


def _top1(checkpoint: Path, paths) -> list[str]:
    predictor = Predictor(load_checkpoint(checkpoint), PredictOptions(device="cpu", top_k=1, workers=1))
    return [record["predictions"][0]["label"] for record in predictor.predict([str(p) for p in paths])]


# ------------------------------------------------------------------ streams, labels

def test_progress_and_summary_go_to_stderr_and_the_table_to_stdout(videos, tiny_checkpoint):
    result = _stam("predict", *videos[:2], "--model", tiny_checkpoint, "--device", "cpu", "-k", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    top = _top1(tiny_checkpoint, videos[:2])
    # stdout: the table, one row per video with its top-1 label, and no other label (-k 1)
    for video, label in zip(videos[:2], top):
        assert any(video.name in line and label in line for line in result.stdout.splitlines()), result.stdout
    assert {label for label in TINY_LABELS if label in result.stdout} == set(top)
    assert "tagged" not in result.stdout
    # stderr: the progress bar and the summary, and no row of the table
    assert "tagging" in result.stderr and "2/2" in result.stderr
    assert "tagged 2, failed 0" in " ".join(result.stderr.split())
    assert not any(video.name in result.stderr for video in videos[:2])
    assert not any(label in result.stderr for label in TINY_LABELS)


def test_labels_file_names_the_model_s_classes(videos, tiny_checkpoint, tmp_path):
    names = ["one", "two", "three", "four", "five"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    plain, named = tmp_path / "plain.jsonl", tmp_path / "named.jsonl"
    assert _predict(*videos, "--model", tiny_checkpoint, "--device", "cpu", "-o", plain, "-q").exit_code == 0
    result = _predict(*videos, "--model", tiny_checkpoint, "--device", "cpu", "-o", named, "-q",
                      "--labels", tmp_path / "labels.txt")
    assert result.exit_code == 0, result.output
    for before, after in zip(read_records(plain), read_records(named)):
        assert [p["index"] for p in after["predictions"]] == [p["index"] for p in before["predictions"]]
        assert [p["score"] for p in after["predictions"]] == [p["score"] for p in before["predictions"]]
        assert [p["label"] for p in after["predictions"]] == [names[p["index"]] for p in after["predictions"]]
    (tmp_path / "four.txt").write_text("\n".join(names[:4]) + "\n", encoding="utf-8")
    result = _predict(videos[0], "--model", tiny_checkpoint, "--device", "cpu", "--labels", tmp_path / "four.txt")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "4" in result.output and "5" in result.output  # says which counts disagree


# ------------------------------------------------------------------ files that cannot be read

def _unreadable_by_anyone() -> Path:
    """A regular file that no user can open for reading, root included.

    ``chmod 0`` does not stop root (CAP_DAC_OVERRIDE), and tests run as root in CI. Write-only
    sysctl files are different: procfs checks their mode bits for every user, root too, so
    ``open(..., "rb")`` fails with EACCES. Reading them has no effect on the system.
    """
    for candidate in ("/proc/sys/vm/compact_memory", "/proc/sys/net/ipv4/route/flush", "/proc/sys/vm/drop_caches"):
        path = Path(candidate)
        if path.is_file():
            try:
                path.open("rb").close()
            except PermissionError:
                return path
    pytest.skip("no write-only /proc/sys file on this kernel")


def test_permission_denied_is_one_line_for_every_user_root_too(videos, tiny_checkpoint, tmp_path):
    locked = tmp_path / "locked.mp4"
    locked.symlink_to(_unreadable_by_anyone())
    for decoder in ("pyav", "opencv"):
        with pytest.raises(VideoError) as info:
            read_clip(locked, 4, 32, decoder=decoder)
        assert str(info.value) == f"cannot read video {locked}: permission denied"
    out = tmp_path / "tags.jsonl"
    result = _predict(videos[0], locked, "--model", tiny_checkpoint, "--device", "cpu", "-o", out, "-q")
    assert result.exit_code == 1
    records = read_records(out)
    assert [r["status"] for r in records] == ["ok", "error"]
    assert records[1]["error"] == f"cannot read video {locked}: permission denied"


def test_subtitles_are_written_only_for_readable_videos_and_a_failure_exits_1(videos, tiny_checkpoint, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    good = shutil.copy(videos[0], folder / "good.mp4")
    bad = write_text(folder / "bad.mp4")
    result = _predict(good, bad, "--model", tiny_checkpoint, "--device", "cpu", "--format", "srt", "--window", "0.5",
                      "-q")
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["bad.mp4", "good.mp4", "good.srt"]
    assert (folder / "good.srt").read_text(encoding="utf-8").startswith("1\n00:00:00,000 --> ")


# ------------------------------------------------------------------ resume

def test_resume_keeps_the_earlier_preview_sheets(videos, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sheet names are relative to the current folder
    out, sheets = tmp_path / "tags.csv", tmp_path / "sheets"
    args = ["--model", tiny_checkpoint, "--device", "cpu", "-o", out, "--preview", sheets, "-q"]
    assert _predict(*videos[:2], *args).exit_code == 0
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sheets.iterdir()}
    assert len(first) == 2
    result = _predict(*videos, *args, "--resume")
    assert result.exit_code == 0, result.output
    now = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sheets.iterdir()}
    assert len(now) == 4 and {k: now[k] for k in first} == first  # the earlier sheets untouched
    assert [r["path"] for r in read_records(out)] == [str(v) for v in videos]


# ------------------------------------------------------------------ a real Ctrl-C

def _complete_rows(path: Path) -> list[dict]:
    """The CSV rows written so far, up to the last complete line."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])))


@pytest.mark.parametrize("window", [None, "0.5"], ids=["per-video", "window"])
def test_real_ctrl_c_leaves_a_valid_csv_and_resume_completes_it_without_duplicates(videos, tiny_checkpoint, tmp_path,
                                                                                  window):
    folder = tmp_path / "v"
    folder.mkdir()
    names = ["a0.mp4", "a1.mp4", "a2.mp4", "a3_gate.mp4", "a4.mp4", "a5.mp4"]
    for i, name in enumerate(names):
        shutil.copy(videos[i % len(videos)], folder / name)
    paths = [str(folder / name) for name in names]
    out = tmp_path / "tags.csv"
    timeline = ["--window", window] if window else []
    args = ["predict", folder, "--model", tiny_checkpoint, "--device", "cpu", "-o", out, "-b", "1", "-w", "1",
            "--streams", "1", "-q", *timeline]

    def videos_done(rows) -> list[str]:
        return [r["path"] for r in rows if r.get("type", "video") == "video"]

    # paused before a3 is read: a0-a2 are written (with --window each video's own record too: it
    # comes with its last window, not once the next video's first window is read), then Ctrl-C
    ctrl_c_at("decode:a3_gate", tmp_path / "go", args, env=ENV,
              ready=lambda: len(videos_done(_complete_rows(out))) == 3)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))  # the whole file parses
    done = videos_done(rows)
    assert done == paths[:len(done)] and 3 <= len(done) < 6, done
    assert all(r["status"] == "ok" for r in rows)
    assert out.read_text(encoding="utf-8").endswith("\n")
    result = _predict(*args[1:], "--resume")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert videos_done(rows) == paths and all(r["status"] == "ok" for r in rows)
    if window:  # each video's windows once, before its own record
        per_video = [(r["path"], r["type"], r["start_s"]) for r in rows]
        assert len(per_video) == len(set(per_video))
        assert [p for p, kind, _ in per_video if kind == "video"] == paths
        windows = [sum(p == path and kind == "window" for p, kind, _ in per_video) for path in paths]
        assert min(windows) >= 3 and windows[4] == windows[0] and windows[5] == windows[1]  # copies of v0, v1


# ------------------------------------------------------------------ --window under torchrun

def _loopback_only() -> list[str]:
    """A prefix that runs a command in a new network namespace with only ``lo`` up (as root), so
    that torchrun's store and gloo, which listen on every interface, can only reach 127.0.0.1."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        probe = subprocess.run(["unshare", "-n", "--", "ip", "link", "set", "lo", "up"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return []


def test_window_under_torchrun_merges_every_rank_s_timeline_in_order(videos, tiny_checkpoint, tmp_path):
    out = tmp_path / "merged.jsonl"
    args = [str(v) for v in videos] + ["--model", str(tiny_checkpoint), "--device", "cpu", "--window", "0.5",
                                       "-o", str(out), "-q", "-w", "1"]
    # rendezvous and gloo on the loopback interface only
    command = [*_loopback_only(), sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "stamcli", "predict", *args]
    env = dict(ENV, GLOO_SOCKET_IFNAME="lo")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.jsonl"]  # the part files are gone
    single = tmp_path / "single.jsonl"
    assert _predict(*args[:-5], "-o", single, "-q", "-w", "1").exit_code == 0
    expected = read_records(single)
    by_video = {str(v): [r for r in expected if r["path"] == str(v)] for v in videos}
    merged = read_records(out)
    # rank 0 took videos 0 and 2, rank 1 videos 1 and 3; each video's windows, then its record
    order = [str(videos[i]) for i in (0, 2, 1, 3)]
    want = [r for path in order for r in by_video[path]]
    assert len(merged) == len(want) and sum(r["type"] == "window" for r in merged) >= 4 * 3
    for got, expect in zip(merged, want):
        assert {k: v for k, v in got.items() if k != "predictions"} == {k: v for k, v in expect.items() if k != "predictions"}
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expect["predictions"]]
        assert [p["score"] for p in got["predictions"]] == pytest.approx([p["score"] for p in expect["predictions"]],
                                                                         abs=1e-5)
