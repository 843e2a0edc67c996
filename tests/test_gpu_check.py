"""benchmarks/gpu_check.py: what runs without a GPU (the refusal, the section runner, the report,
and the sections that can run on the CPU with the CPU as the device under test)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import Budget, Check, OutOfTime, Section
from conftest import CHILD_ENV, REPO

CPU = torch.device("cpu")


def _check(tmp_path, seconds: float = 60) -> Check:
    return Check(tmp_path, CPU, time.monotonic() + seconds, log=lambda text: None)


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    env = dict(CHILD_ENV, CUDA_VISIBLE_DEVICES="")  # no GPU, also on a machine that has one
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                             "nothing was checked\n")
    assert not (tmp_path / "out").exists()


def _fills_a_table(check, budget, result):
    result["tables"] = {"numbers": [{"batch_size": 1, "videos_per_s": 12.3456}, {"batch_size": 2, "error": "a|b"}]}
    result["notes"] = ["a note"]


def _fails_a_check(check, budget, result):
    result["failed"] = ["top-1 differs"]


def _raises(check, budget, result):
    result["tables"] = {"kept": [{"step": 1}]}
    raise RuntimeError("CUDA error: an illegal memory access\nsecond line")


def _runs_out_of_time(check, budget, result):
    result["tables"] = {"before": [{"step": 1}]}
    time.sleep(0.05)
    budget.check("step 2")
    result["tables"]["after"] = [{"step": 2}]


def test_each_section_is_guarded_and_the_report_keeps_what_each_one_measured(tmp_path):
    sections = [Section("table", "A table", 5, _fills_a_table), Section("fails", "A failed check", 5, _fails_a_check),
                Section("raises", "An error", 5, _raises), Section("slow", "Out of time", 0.01, _runs_out_of_time)]
    report = gpu_check.run_check(_check(tmp_path), sections, gpu_check.new_report(CPU, 60))
    s = report["sections"]
    assert [(name, entry["status"]) for name, entry in s.items()] == [
        ("table", "ok"), ("fails", "failed"), ("raises", "error"), ("slow", "partial")]
    assert s["raises"]["reason"] == "RuntimeError: CUDA error: an illegal memory access"
    assert "Traceback" in s["raises"]["traceback"] and s["raises"]["result"] == {"tables": {"kept": [{"step": 1}]}}
    assert s["slow"]["reason"] == "its 0 s budget was spent before step 2"
    assert s["slow"]["result"]["tables"] == {"before": [{"step": 1}]}
    assert gpu_check.exit_status(report) == 1
    assert gpu_check.exit_status({"sections": {"a": s["table"], "b": s["slow"]}}) == 0

    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["fails"]["result"] == {
        "failed": ["top-1 differs"]}
    text = (tmp_path / "gpu_check.md").read_text()
    assert text == gpu_check.report_markdown(report)
    assert "| section | status | seconds | note |" in text
    assert "| fails | failed |" in text and "| top-1 differs |" in text
    assert "| raises | error |" in text and "RuntimeError: CUDA error: an illegal memory access |" in text
    assert "numbers:\n\n| batch_size | videos_per_s | error |\n| --- | --- | --- |\n| 1 | 12.35 |  |\n| 2 |  | a\\|b |" \
        in text
    assert "\na note\n" in text and "- FAILED: top-1 differs" in text


def test_a_section_with_too_little_of_the_runs_time_left_is_skipped(tmp_path):
    ran = []
    section = Section("late", "Late", 100, lambda check, budget, result: ran.append(1))
    entry = gpu_check.run_section(section, _check(tmp_path, seconds=gpu_check.MIN_SECTION_S - 1))
    assert entry["status"] == "skipped" and entry["reason"].startswith("out of time: 9 s of the run's budget left")
    assert ran == []
    with pytest.raises(OutOfTime, match="before the end"):
        Budget(0).check("the end")
    Budget(60).check("a compilation", need_s=40)
    with pytest.raises(OutOfTime, match="its 30 s budget was spent before a compilation"):
        Budget(30).check("a compilation", need_s=40)  # a step that cannot be cut short is not started


def test_compare_counts_agreement_order_ties_and_the_largest_differences():
    reference = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]] * 3)
    logits = reference.clone()
    logits[1, 0], logits[1, 1] = 3.0, 4.0  # video 2: top-1 swapped
    logits[2, 2], logits[2, 3] = 1.0, 2.0  # video 3: top-1 kept, ranks 3 and 4 swapped
    row = gpu_check.compare(reference, logits)
    assert (row["videos"], row["finite"], row["tied_top5"]) == (3, True, 0)
    assert row["top1_agreement"] == pytest.approx(2 / 3) and row["top5_same_order"] == pytest.approx(1 / 3)
    assert row["max_logit_diff"] == 1.0
    expected = (logits.softmax(-1) - reference.softmax(-1)).abs().max().item()
    assert row["max_score_diff"] == pytest.approx(expected) and expected > 0.1
    logits[0, 1] = 4.0  # video 1: ranks 1 and 2 tied
    assert gpu_check.compare(reference, logits)["tied_top5"] == 1
    assert gpu_check.compare(reference, torch.full_like(reference, float("nan")))["finite"] is False


def test_parity_runs_on_any_device_and_cpu_fp32_agrees_with_itself(tmp_path):
    result = {}
    models = gpu_check.parity_models(size=32, videos=8)
    assert [name for name, _, _ in models] == ["authors' tiny fixture (10 classes)",
                                               "random ViT-Ti/16, 4 blocks, 400 classes"]
    gpu_check.parity(_check(tmp_path), Budget(120), result, precisions=("fp32", "bf16"), models=models)
    rows = next(iter(result["tables"].values()))
    assert [(r["model"][:6], r["precision"], r["videos"]) for r in rows] == [
        ("author", "fp32", 4), ("author", "bf16", 4), ("random", "fp32", 8), ("random", "bf16", 8)]
    for row in rows:
        assert row["finite"]
        if row["precision"] == "fp32":
            assert (row["top1_agreement"], row["max_logit_diff"], row["max_score_diff"]) == (1.0, 0.0, 0.0)
        else:  # bf16 on the CPU: close, not equal; the head computes in float32, so no tied top-5
            assert 0 < row["max_logit_diff"] < 1.0 and row["tied_top5"] == 0
    assert result["failed"] == []


def test_the_export_section_runs_both_formats_on_the_device(tmp_path):
    pytest.importorskip("onnxruntime")
    result = {}
    gpu_check.export_check(_check(tmp_path), Budget(300), result)
    rows = next(iter(result["tables"].values()))
    assert [(r["format"], r["runtime"].split(" ")[0]) for r in rows] == [("torchscript", "torch.jit"),
                                                                          ("onnx", "onnxruntime")]
    assert rows[1]["runtime"].endswith("CPUExecutionProvider")
    for row in rows:
        assert row["top1_agreement"] == 1.0 and row["max_logit_diff"] < 1e-3
    assert result["failed"] == []


def test_the_finetune_section_trains_interrupts_and_resumes(tmp_path):
    result = {}
    # fp32: the CPU emulates bf16 slowly, and the section's logic does not depend on the precision
    gpu_check.finetune_check(_check(tmp_path), Budget(600), result, precisions=("fp32",), per_class=2, workers=0)
    [row] = next(iter(result["tables"].values()))
    assert row["precision"] == "fp32" and row["finite"] and row["loss_scale"] is None  # no loss scaling
    assert len(row["train_losses"].split()) == 2 and row["interrupted_then"] == 1
    assert row["repeat_equal"] and row["resume_equal"] and row["resume_max_diff"] == 0.0
    assert result["failed"] == []


def test_the_throughput_and_predict_sections_run_on_any_device(tmp_path):
    from benchmarks.common import QUICK

    check = _check(tmp_path, seconds=600)
    result = {}
    gpu_check.throughput(check, Budget(300), result, spec=QUICK.big, batch_sizes=(1, 2), compile_modes=(), iterations=1)
    [eager, compiled] = result["tables"].values()
    assert [r["batch_size"] for r in eager] == [1, 2] and all(r["videos_per_s"] > 0 for r in eager)
    assert result["best_batch_size"] in (1, 2) and compiled == []
    result = {}
    gpu_check.predict(check, Budget(300), result, spec=QUICK.big, clips=2, seconds=1.0, size=(96, 64))
    assert result["failed"] == []
    [rows] = result["tables"].values()
    from stamcli.parallel import cpu_cores, default_workers

    assert [r["workers"] for r in rows] == sorted({1, 4, default_workers(CPU)} & set(range(1, cpu_cores() + 1)))
    assert all(r["videos_per_s"] > 0 and r["decode_alone_videos_per_s"] > 0 for r in rows)
    assert result["notes"][0].startswith("`stam predict FOLDER --device cpu` with its defaults (precision auto, "
                                         "default workers): exit 0, 2 records")
