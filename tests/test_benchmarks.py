"""The benchmark script runs (in its quick mode) and reports every figure, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_predict_quick_mode_writes_its_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_predict.py"), "--quick", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    for key in ("decode_ms_per_video", "model_videos_per_s", "end_to_end_videos_per_s"):
        assert data[key] > 0, key
    assert data["videos"] == 2 and data["batch_size"] == 4
    assert "| model only, batch 4, videos/s |" in result.stdout
    assert "cores" in data["machine"]


def test_bench_finetune_quick_mode_measures_both_ways_of_training(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_finetune.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    for mode in ("full", "frozen"):
        assert data[mode]["first"] > 0 and data[mode]["later"] > 0 and data[mode]["total"] > data[mode]["first"]
    assert data["clips"] == 4 and data["epochs"] == 2
    assert "| `--freeze-backbone` (set-up builds the cache) |" in result.stdout
