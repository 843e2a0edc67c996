"""`stam predict` end to end with a tiny model and generated videos."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO, SHARED, TINY_LABELS, interrupt_when, make_tiny_model
from synthetic import write_empty, write_text, write_truncated, write_video
from stamcli import StamError, UsageError, load_checkpoint, save_checkpoint
from stamcli.cli import app
from stamcli.decode import read_clip
from stamcli.device import resolve_device, resolve_precision
from stamcli.engine import PredictOptions, Predictor

runner = CliRunner()


def _frames(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A folder of good videos (several containers, sizes, orientations) in nested folders."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    write_video(root / "a.mp4", _frames(12, 48, 64, 1), fourcc="mp4v")
    write_video(root / "b, with comma.avi", _frames(9, 61, 97, 2), fourcc="MJPG")
    write_video(root / "sub" / "c portrait.mp4", _frames(7, 80, 48, 3), fourcc="mp4v")
    write_video(root / "sub" / "d_one_frame.mp4", _frames(1, 48, 64, 4), fourcc="mp4v")
    write_video(root / "sub" / "é \"quoted\".mp4", _frames(3, 48, 64, 5), fourcc="mp4v")
    (root / ".hidden.mp4").write_bytes(b"never read")
    (root / "notes.txt").write_text("not a video")
    return root


GOOD = ["a.mp4", "b, with comma.avi", "sub/c portrait.mp4", "sub/d_one_frame.mp4", 'sub/é "quoted".mp4']


def _predict(*args, cwd: Path | None = None):
    """``stam predict --device cpu ARGS`` (ARGS may name another device): CPU fp32 is the reference."""
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return runner.invoke(app, ["predict", "--device", "cpu", *map(str, args)], catch_exceptions=False)
    finally:
        os.chdir(old)


def _expected_scores(checkpoint: Path, paths: list[Path]) -> list[list[float]]:
    model = load_checkpoint(checkpoint)
    clips = [read_clip(p, model.config.frames, model.config.img_size) for p in paths]
    with torch.inference_mode():
        return model(torch.stack([c.frames for c in clips]).float() / 255).softmax(-1).tolist()


def test_csv_output_schema_order_quoting_and_scores(videos, tiny_checkpoint, tmp_path):
    out = tmp_path / "tags.csv"
    result = _predict(videos, "--model", tiny_checkpoint, "--top-k", 3, "--output", out, "--batch-size", 2, "-q")
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "status", "error", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3",
                       "frames", "model", "duration_s", "fps"]
    assert [r[0] for r in rows[1:]] == [str(videos / p) for p in GOOD]
    assert all(r[1] == "ok" and r[2] == "" for r in rows[1:])
    assert {r[3] for r in rows[1:]} <= set(TINY_LABELS)
    assert [int(r[9]) for r in rows[1:]] == [12, 9, 7, 1, 3]
    assert all(r[10] == "tiny.safetensors" for r in rows[1:])
    assert [float(r[11]) for r in rows[1:]] == pytest.approx([12 / 25, 9 / 25, 7 / 25, 1 / 25, 3 / 25])
    expected = _expected_scores(tiny_checkpoint, [videos / p for p in GOOD])
    for row, probs in zip(rows[1:], expected):
        top = sorted(range(5), key=lambda i: -probs[i])[:3]
        assert [row[3], row[5], row[7]] == [TINY_LABELS[i] for i in top]
        assert [float(row[4]), float(row[6]), float(row[8])] == pytest.approx([probs[i] for i in top], abs=1e-6)


def test_json_and_jsonl_records_follow_the_schema(videos, tiny_checkpoint, tmp_path):
    for name in ("tags.json", "tags.jsonl"):
        out = tmp_path / name
        result = _predict(videos / "a.mp4", videos / "sub", "--model", tiny_checkpoint, "-k", 2, "-o", out, "-q")
        assert result.exit_code == 0, result.output
        text = out.read_text(encoding="utf-8")
        records = json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]
        assert [r["path"] for r in records] == [str(videos / p) for p in GOOD if p.startswith(("a", "sub"))]
        for record in records:
            assert list(record) == ["path", "status", "error", "predictions", "frames", "model", "duration_s", "fps"]
            assert record["status"] == "ok" and record["error"] is None and record["fps"] == 25.0
            assert [list(p) for p in record["predictions"]] == [["label", "index", "score"]] * 2
            for p in record["predictions"]:
                assert TINY_LABELS[p["index"]] == p["label"] and 0 < p["score"] < 1
            assert record["predictions"][0]["score"] >= record["predictions"][1]["score"]


def test_bad_inputs_give_error_records_and_exit_1(videos, tiny_checkpoint, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(videos, folder)
    write_empty(folder / "empty.mp4")
    write_text(folder / "text.avi")
    write_truncated(folder / "a.mp4", folder / "truncated.mp4", 0.3)
    (folder / "folder.mp4").mkdir()
    out = tmp_path / "tags.jsonl"
    result = _predict(folder, "missing.mp4", "--model", tiny_checkpoint, "-o", out, "-q", cwd=tmp_path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    bad = {"empty.mp4", "text.avi", "truncated.mp4", "folder.mp4", "missing.mp4"}
    assert {name for name, r in records.items() if r["status"] == "error"} == bad
    assert {name for name, r in records.items() if r["status"] == "ok"} == {Path(p).name for p in GOOD}
    for name in bad:
        error = records[name]["error"]
        assert error and "\n" not in error and records[name]["predictions"] == []
    undecodable = "not a video file, no video stream, or a format/codec that cannot be decoded"
    assert records["missing.mp4"]["error"] == "cannot read video missing.mp4: no such file"
    assert records["empty.mp4"]["error"] == f"cannot read video {folder / 'empty.mp4'}: the file is empty (0 bytes)"
    assert records["folder.mp4"]["error"] == f"cannot read video {folder / 'folder.mp4'}: it is a directory, not a file"
    assert records["text.avi"]["error"] == f"cannot read video {folder / 'text.avi'}: {undecodable}"
    assert records["truncated.mp4"]["error"] == f"cannot read video {folder / 'truncated.mp4'}: {undecodable}"


def test_stdout_table_when_no_output(videos, tmp_path):
    labels = ["archery", "baking", "cycling", "diving", "juggling", "knitting", "rowing", "sailing", "skiing",
              "surfing", "swimming", "yodelling"]  # more labels than -k 3 shows
    # seed 5 ranks surfing, sailing, rowing: neither in the labels' order nor alphabetical
    checkpoint = save_checkpoint(make_tiny_model(seed=5, num_classes=12, labels=labels), tmp_path / "m.safetensors")
    paths = [videos / "a.mp4", videos / "sub" / "d_one_frame.mp4"]
    result = runner.invoke(app, ["predict", *map(str, paths), "--model", str(checkpoint), "-k", "3", "-q",
                                 "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["path", "status", "top-1", "score", "other", "labels"] and len(rows) == 2
    for path, row, probabilities in zip(paths, rows, _expected_scores(checkpoint, paths)):
        top = sorted(range(len(labels)), key=lambda i: -probabilities[i])[:3]
        (l1, l2, l3), (s1, s2, s3) = [labels[i] for i in top], [probabilities[i] for i in top]
        shown, *cells = row.split()
        assert shown.endswith(path.name) and str(path).endswith(shown.lstrip("…")), row
        assert cells == ["ok", l1, f"{s1:.3f}", l2, f"{s2:.2f},", l3, f"{s3:.2f}"], row  # best first


def test_resume_after_interrupt_has_no_duplicates_and_retries_failures(videos, tiny_checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "v"
    shutil.copytree(videos, folder)
    write_empty(folder / "zz_broken.mp4")
    out = tmp_path / "tags.json"
    original = Predictor.scores

    def interrupted(self, paths):
        for i, item in enumerate(original(self, paths)):
            if i == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Predictor, "scores", interrupted)
    result = _predict(folder, "--model", tiny_checkpoint, "-o", out, "--batch-size", 1)
    assert result.exit_code == 130
    assert "--resume" in result.output
    first = json.loads(out.read_text(encoding="utf-8"))  # valid JSON although interrupted
    assert [r["path"] for r in first] == [str(folder / p) for p in GOOD[:2]]
    monkeypatch.setattr(Predictor, "scores", original)
    # a failed video is retried on resume: fix it, then resume
    result = _predict(folder, "--model", tiny_checkpoint, "-o", out, "--resume", "-q")
    assert result.exit_code == 1  # zz_broken.mp4 fails
    records = json.loads(out.read_text(encoding="utf-8"))
    assert [r["path"] for r in records] == [str(folder / p) for p in GOOD] + [str(folder / "zz_broken.mp4")]
    assert records[:2] == first
    write_video(folder / "zz_broken.mp4", _frames(5, 48, 64, 9))
    result = _predict(folder, "--model", tiny_checkpoint, "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "tagged 1, failed 0, 5 already done" in " ".join(result.output.split())
    records = json.loads(out.read_text(encoding="utf-8"))
    paths = [r["path"] for r in records]
    assert sorted(paths) == sorted(str(folder / p) for p in GOOD + ["zz_broken.mp4"]) and len(set(paths)) == 6
    assert all(r["status"] == "ok" for r in records)


def test_shards_split_the_videos_without_overlap(videos, tiny_checkpoint, tmp_path):
    parts = []
    for i in range(2):
        out = tmp_path / f"part{i}.jsonl"
        assert _predict(videos, "--model", tiny_checkpoint, "--shard", f"{i}/2", "-o", out, "-q").exit_code == 0
        parts.append([json.loads(line)["path"] for line in out.read_text(encoding="utf-8").splitlines()])
    all_paths = [str(videos / p) for p in GOOD]
    assert parts == [all_paths[0::2], all_paths[1::2]]


def test_usage_errors_exit_2(videos, tiny_checkpoint, tmp_path):
    cases = [
        (["--format", "xml", "-o", tmp_path / "x.csv"], "unknown format 'xml'"),
        (["-o", tmp_path / "x.txt"], "cannot tell the format of"),
        (["--shard", "3/2"], "invalid --shard '3/2'"),
        (["--device", "tpu"], "invalid device 'tpu'; use auto, cpu, cuda or cuda:N"),
        (["--device", "meta"], "unsupported device 'meta'"),
        (["--precision", "fp8"], "invalid precision 'fp8'"),
    ]
    for args, message in cases:
        result = _predict(videos, "--model", tiny_checkpoint, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert _predict(videos, "--top-k", 0).exit_code == 2


def test_frames_alone_picks_the_zoo_model_and_offline_says_how_to_fetch_it(videos, tmp_path):
    result = _predict(videos, "--frames", 32, "--offline", "--weights-dir", tmp_path / "w")
    assert result.exit_code == 1
    assert "stam_32 is not in" in result.output and "stam download-weights stam_32" in result.output
    result = _predict(videos, "--frames", 12, "--offline")
    assert result.exit_code == 1 and "no published model is trained for 12 frames" in result.output


def test_model_runs_at_another_frame_count_with_a_warning(videos, tiny_checkpoint, tmp_path):
    out = tmp_path / "t.jsonl"
    result = _predict(videos / "a.mp4", "--model", tiny_checkpoint, "--frames", 6, "-o", out, "-q")
    assert result.exit_code == 0
    assert "trained for 4 frames and runs on 6" in result.output
    assert json.loads(out.read_text())["status"] == "ok"


def _raises_exactly(error_type, message, call, *args):
    """``call(*args)`` raises ``error_type`` itself (not a subclass) with exactly ``message``."""
    with pytest.raises(error_type) as raised:
        call(*args)
    assert type(raised.value) is error_type and str(raised.value) == message


def test_device_and_precision_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(" CPU ") == cpu
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.delenv("STAM_REQUIRE_DEVICE")  # the suite's guard (conftest): off to see what auto picks
    _raises_exactly(StamError, "fp16 needs a CUDA device; on the CPU use fp32 or bf16", resolve_precision, "fp16", cpu)
    _raises_exactly(UsageError, "invalid precision 'fp8'; use one of auto, fp32, bf16, fp16", resolve_precision,
                    "fp8", cpu)
    _raises_exactly(UsageError, "invalid device 'gpu'; use auto, cpu, cuda or cuda:N", resolve_device, "gpu")
    _raises_exactly(UsageError, "unsupported device 'meta'; use auto, cpu, cuda or cuda:N", resolve_device, "meta")
    # both sides of "is there a GPU", whichever machine runs this
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == cpu
    _raises_exactly(StamError, "device 'cuda' asked for, but no CUDA GPU is available (use --device cpu)",
                    resolve_device, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    _raises_exactly(StamError, "device 'cuda:1' does not exist: 1 CUDA device(s) found", resolve_device, "cuda:1")


def test_bf16_on_cpu_agrees_with_fp32(videos, tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    paths = [str(videos / p) for p in GOOD]
    fp32 = list(Predictor(model, PredictOptions(precision="fp32", device="cpu", top_k=5)).predict(paths))
    bf16 = list(Predictor(model, PredictOptions(precision="bf16", device="cpu", top_k=5)).predict(paths))
    for a, b in zip(fp32, bf16):
        scores_a = {p["label"]: p["score"] for p in a["predictions"]}
        scores_b = {p["label"]: p["score"] for p in b["predictions"]}
        assert max(abs(scores_a[k] - scores_b[k]) for k in scores_a) < 0.02


def test_torchrun_ranks_tag_their_shards_and_rank0_merges_with_resume(videos, tiny_checkpoint, tmp_path):
    out = tmp_path / "merged.csv"
    all_paths = [str(videos / p) for p in GOOD]
    # an earlier run tagged the first video; under torchrun --resume the ranks share the other four
    assert _predict(all_paths[0], "--model", tiny_checkpoint, "-o", out, "-q").exit_code == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "stamcli", "predict", str(videos), "--model", str(tiny_checkpoint), "-o", str(out), "-q",
               "--workers", "1", "--resume", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # a video's rank does not depend on what is done: shard first (rank r takes r::2), then skip done ones
    assert [r["path"] for r in rows] == all_paths[:1] + all_paths[2::2] + all_paths[1::2]
    assert all(r["status"] == "ok" for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.csv"]  # part files removed


@pytest.mark.parametrize("per_thread", [True, False], ids=["per-thread-count", "process-wide-count"])
def test_decode_threads_use_one_torch_thread_and_the_model_keeps_its_own(videos, tiny_checkpoint, monkeypatch,
                                                                        per_thread):
    import stamcli.decode.clips as clips  # ClipSpec.read calls read_clip there
    import stamcli.parallel as parallel

    if per_thread and not parallel.PER_THREAD_OMP:
        pytest.skip("this torch keeps one process-wide thread count (its parallel backend is not OpenMP)")
    monkeypatch.setattr(parallel, "PER_THREAD_OMP", per_thread)  # False: stamcli must leave the count alone
    seen = []

    def spy(path, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return read_clip(path, *args, **kwargs)

    monkeypatch.setattr(clips, "read_clip", spy)
    torch.set_num_threads(2)
    predictor = Predictor(load_checkpoint(tiny_checkpoint), PredictOptions(workers=2, device="cpu"))
    records = list(predictor.predict([str(videos / p) for p in GOOD]))
    assert [r["status"] for r in records] == ["ok"] * 5
    assert torch.get_num_threads() == 2
    assert seen == ([1] * 5 if per_thread else [2] * 5)


def test_real_ctrl_c_leaves_valid_json_and_resume_completes_it(videos, tiny_checkpoint, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(8):
        shutil.copy(videos / "a.mp4", folder / f"v{i:02d}.mp4")
    out = tmp_path / "tags.json"
    # Ctrl-C while the run waits to write its third record (decode threads and model streams busy ahead)
    interrupt_when(["predict", str(folder), "--model", str(tiny_checkpoint), "-o", str(out), "-b", "1", "-w", "1",
                    "-q", "--device", "cpu"], hold=("stamcli.tagging:RecordSink.write", 3))
    records = json.loads(out.read_text(encoding="utf-8"))  # a complete, valid JSON array
    assert [r["path"] for r in records] == [str(folder / "v00.mp4"), str(folder / "v01.mp4")]
    result = _predict(folder, "--model", tiny_checkpoint, "-o", out, "--resume", "-b", "4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "tagged 6, failed 0" in " ".join(result.output.split())
    paths = [r["path"] for r in json.loads(out.read_text(encoding="utf-8"))]
    assert paths == [str(folder / f"v{i:02d}.mp4") for i in range(8)]


def test_predict_downloads_a_missing_zoo_model(videos, file_server, tmp_path):
    from conftest import make_tiny_model, save_authors_checkpoint

    served, url = file_server
    save_authors_checkpoint(make_tiny_model(num_classes=400, frames=8), served / "stam_8.pth")
    arch = tmp_path / "tiny_arch.json"  # the zoo's ViT-B layout, shrunk to the tiny test model
    arch.write_text(json.dumps({"backbone": "vit_tiny_patch16_224", "img_size": 32, "embed_dim": 64, "depth": 1,
                                "num_heads": 2, "temporal_layers": 1, "temporal_ff": 128}))
    out = tmp_path / "t.jsonl"
    weights = tmp_path / "weights"
    result = _predict(videos / "a.mp4", "--frames", 8, "--arch", arch, "--mirror", url, "--weights-dir", weights,
                      "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert (weights / "stam_8.pth").read_bytes() == (served / "stam_8.pth").read_bytes()
    assert (weights / "stam_8.pth.download.json").exists()
    record = json.loads(out.read_text())
    assert record["model"] == "stam_8" and record["status"] == "ok"
    assert record["predictions"][0]["label"] in (SHARED / "data" / "kinetics400_labels.txt").read_text().splitlines()


def test_bad_checkpoint_is_one_line_and_debug_shows_the_traceback(videos, tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_text("not weights")
    result = runner.invoke(app, ["predict", str(videos / "a.mp4"), "--model", str(bad), "--device", "cpu"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {bad} is not a checkpoint (expected a PyTorch .pth file or a stamcli .safetensors file)"]
    result = runner.invoke(app, ["--debug", "predict", str(videos / "a.mp4"), "--model", str(bad), "--device", "cpu"])
    assert result.exit_code != 0 and type(result.exception).__name__ == "CheckpointError"


def test_default_decode_workers_leave_the_cpu_to_the_model_and_feed_a_gpu(monkeypatch, tiny_checkpoint):
    from stamcli import parallel

    monkeypatch.setattr(parallel, "cpu_cores", lambda: 16)
    assert parallel.default_workers(torch.device("cpu")) == 4  # the model needs the cores
    assert parallel.default_workers(torch.device("cuda")) == 15  # decoding is the bottleneck
    assert parallel.default_workers() == 4
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 1)
    assert parallel.default_workers(torch.device("cuda")) == parallel.default_workers(torch.device("cpu")) == 1
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 64)
    assert parallel.default_workers(torch.device("cuda")) == 32
    assert Predictor(load_checkpoint(tiny_checkpoint), PredictOptions(device="cpu")).workers == 4
    assert Predictor(load_checkpoint(tiny_checkpoint), PredictOptions(device="cpu", workers=3)).workers == 3


def test_run_tagging_checks_the_options_once_and_leaves_the_callers_job_as_it_was(videos, tiny_checkpoint, tmp_path,
                                                                                  monkeypatch):
    import copy

    import stamcli.device
    from stamcli.jobs import TaggingJob
    from stamcli.tagging import run_tagging

    checks = []
    real = stamcli.device.resolve_device
    monkeypatch.setattr(stamcli.device, "resolve_device", lambda spec: checks.append(spec) or real(spec))

    job = TaggingJob(paths=[str(videos / "a.mp4"), str(videos / "sub")], model=str(tiny_checkpoint),
                     output=str(tmp_path / "t.jsonl"), options=PredictOptions(device="cpu", precision="auto", workers=1))
    before = copy.deepcopy(job)
    summary = run_tagging(job)
    assert (summary.ok, summary.failed, summary.interrupted) == (4, 0, False)
    assert job == before and job.options.precision == "auto"  # resolved (to fp32) in a copy only
    assert checks == ["cpu"]  # once per run, not again by the Predictor
