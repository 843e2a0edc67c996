"""`stam embed` and stamcli.embed: rows equal the model's embeddings, index, formats, resume, errors."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import interrupt_when
from synthetic import write_text, write_video
from stamcli import embed, load_checkpoint, load_embeddings
from stamcli.cli import app
from stamcli.embedding import EmbeddingStore
from stamcli.engine import PredictOptions, Predictor
from stamcli.model import STAM
from stamcli.decode import read_clip

runner = CliRunner()


def _frames(n: int, seed: int) -> list[np.ndarray]:
    base = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("emb_videos")
    (root / "sub").mkdir()
    write_video(root / "a.mp4", _frames(12, 1))
    write_video(root / "b.avi", _frames(9, 2), fourcc="MJPG")
    write_text(root / "c_broken.mp4")
    write_video(root / "sub" / "d.mp4", _frames(7, 3))
    shutil.copy(root / "a.mp4", root / "sub" / "e_copy_of_a.mp4")
    return root


NAMES = ["a.mp4", "b.avi", "c_broken.mp4", "sub/d.mp4", "sub/e_copy_of_a.mp4"]
BAD = 2


def _paths(videos: Path) -> list[str]:
    return [str(videos / name) for name in NAMES]


def _expected(checkpoint: Path, path: str) -> tuple[np.ndarray, np.ndarray]:
    model = load_checkpoint(checkpoint)
    clip = read_clip(path, model.config.frames, model.config.img_size)
    with torch.inference_mode():
        videos = clip.frames[None].float() / 255
        return model.forward_embedding(videos)[0].numpy(), model.embed_frames(videos)[0].numpy()


def _embed_cli(*args):
    """``stam embed --device cpu ARGS`` (ARGS may name another device): CPU fp32 is the reference."""
    return runner.invoke(app, ["embed", "--device", "cpu", *map(str, args)], catch_exceptions=False)


def _index(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_npy_rows_are_the_models_embeddings_and_the_index_describes_them(videos, tiny_checkpoint, tmp_path):
    out = tmp_path / "emb.npy"
    result = _embed_cli(videos, "--model", tiny_checkpoint, "--output", out, "--per-frame", "-b", 2, "-q")
    assert result.exit_code == 1  # c_broken.mp4 cannot be read
    emb, frames = np.load(out), np.load(tmp_path / "emb.frames.npy")
    assert emb.shape == (5, 64) and emb.dtype == np.float32
    assert frames.shape == (5, 4, 64) and frames.dtype == np.float32
    for row, path in enumerate(_paths(videos)):
        if row == BAD:
            assert np.isnan(emb[row]).all() and np.isnan(frames[row]).all()
            continue
        video, per_frame = _expected(tiny_checkpoint, path)
        assert np.abs(emb[row] - video).max() < 1e-5
        assert np.abs(frames[row] - per_frame).max() < 1e-5
    rows = _index(tmp_path / "emb.csv")
    assert rows[0] == ["row", "path", "status", "error", "model", "frames", "duration_s", "fps"]
    assert [r[:3] for r in rows[1:]] == [[str(i), p, "error" if i == BAD else "ok"] for i, p in enumerate(_paths(videos))]
    assert rows[1 + BAD][3] == (f"cannot read video {videos / 'c_broken.mp4'}: not a video file, no video stream, "
                                "or a format/codec that cannot be decoded")
    assert [r[4] for r in rows[1:]] == ["tiny.safetensors"] * 5
    assert [r[5] for r in rows[1:]] == ["12", "9", "", "7", "12"]
    assert rows[1][6:] == [repr(12 / 25), "25.0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.csv", "emb.frames.npy", "emb.npy"]


def test_safetensors_holds_the_same_arrays_and_leaves_no_work_files(videos, tiny_checkpoint, tmp_path):
    assert _embed_cli(videos, "-m", tiny_checkpoint, "-o", tmp_path / "e.npy", "--per-frame", "-q").exit_code == 1
    result = _embed_cli(videos, "-m", tiny_checkpoint, "-o", tmp_path / "e.safetensors", "--per-frame", "-b", 3)
    assert result.exit_code == 1
    assert "embedded 4, failed 1" in " ".join(result.output.split())
    tensors = load_file(tmp_path / "e.safetensors")
    assert sorted(tensors) == ["embeddings", "frame_embeddings"]
    np.testing.assert_allclose(tensors["embeddings"], np.load(tmp_path / "e.npy"), atol=1e-6)
    np.testing.assert_allclose(tensors["frame_embeddings"], np.load(tmp_path / "e.frames.npy"), atol=1e-6)
    with safe_open(tmp_path / "e.safetensors", "np") as handle:
        assert handle.metadata() == {"model": "tiny.safetensors", "frames": "4", "index": "e.csv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "e.frames.npy", "e.npy", "e.safetensors"]
    loaded = load_embeddings(tmp_path / "e.safetensors")
    assert loaded.paths == _paths(videos) and loaded.records[BAD]["status"] == "error"
    np.testing.assert_array_equal(loaded.embeddings, tensors["embeddings"])


def test_without_per_frame_only_video_embeddings_are_written(videos, tiny_checkpoint, tmp_path):
    (tmp_path / "emb.frames.npy").write_bytes(b"stale, from an earlier --per-frame run")
    assert _embed_cli(videos / "a.mp4", "-m", tiny_checkpoint, "-o", tmp_path / "emb.npy", "-q").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.csv", "emb.npy"]
    assert _embed_cli(videos / "a.mp4", "-m", tiny_checkpoint, "-o", tmp_path / "x.safetensors", "-q").exit_code == 0
    assert sorted(load_file(tmp_path / "x.safetensors")) == ["embeddings"]


class _Counter:
    """Counts the videos that go through the model."""

    def __init__(self, monkeypatch):
        self.videos = 0
        original = STAM.embed_with_frames

        def counted(model, videos):
            self.videos += videos.shape[0]
            return original(model, videos)

        monkeypatch.setattr(STAM, "embed_with_frames", counted)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_resume_after_ctrl_c_keeps_done_rows_and_gives_the_same_arrays(videos, tiny_checkpoint, tmp_path, monkeypatch,
                                                                        suffix):
    model = load_checkpoint(tiny_checkpoint)
    paths = _paths(videos)
    full = embed(paths, model, PredictOptions(batch_size=1, device="cpu"), per_frame=True)
    out = tmp_path / f"emb{suffix}"
    original = Predictor.embeddings
    calls = []

    def interrupted(self, clips):
        calls.append(len(clips))
        if len(calls) == 3:  # rows 0 and 1 are done, row 2 (broken) failed, Ctrl-C during row 3
            raise KeyboardInterrupt
        return original(self, clips)

    monkeypatch.setattr(Predictor, "embeddings", interrupted)
    first = embed(paths, model, PredictOptions(batch_size=1, device="cpu"), output=out, per_frame=True)
    assert first.interrupted and (first.ok, first.failed) == (2, 1)
    saved = load_embeddings(out)  # a consistent pair: the index lists rows 0-2, rows 2-4 are NaN
    assert [(r["row"], r["status"]) for r in saved.records] == [(0, "ok"), (1, "ok"), (2, "error")]
    np.testing.assert_allclose(saved.embeddings[:2], full.embeddings[:2], atol=1e-6)
    assert np.isnan(saved.embeddings[2:]).all() and np.isnan(saved.frame_embeddings[2:]).all()
    monkeypatch.setattr(Predictor, "embeddings", original)

    counter = _Counter(monkeypatch)
    second = embed(paths, model, PredictOptions(batch_size=2, device="cpu"), output=out, per_frame=True,
                   resume=True)
    assert (second.ok, second.failed, second.skipped, second.interrupted) == (2, 1, 2, False)
    assert counter.videos == 2  # rows 3 and 4 only; the broken row 2 was retried but never reached the model
    final = load_embeddings(out)
    assert final.paths == paths
    np.testing.assert_allclose(final.embeddings, full.embeddings, atol=1e-6)
    np.testing.assert_allclose(final.frame_embeddings, full.frame_embeddings, atol=1e-6)
    assert [r["status"] for r in final.records] == ["ok", "ok", "error", "ok", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no work/temp files


def test_resume_after_a_hard_kill_uses_the_safetensors_work_files(videos, tiny_checkpoint, tmp_path, monkeypatch):
    model = load_checkpoint(tiny_checkpoint)
    paths = _paths(videos)[:2]
    out = tmp_path / "emb.safetensors"
    monkeypatch.setattr(EmbeddingStore, "close", lambda self: None)  # killed: nothing finished
    embed(paths[:1], model, PredictOptions(device="cpu"), output=out)
    embed(paths, model, PredictOptions(device="cpu"), output=out)
    assert not out.exists() and (tmp_path / ".emb.safetensors.embeddings.npy").exists()
    monkeypatch.undo()
    counter = _Counter(monkeypatch)
    result = embed(paths, model, PredictOptions(device="cpu"), output=out, resume=True)
    assert (result.ok, result.skipped, counter.videos) == (0, 2, 0)
    loaded = load_embeddings(out)
    expected = np.stack([_expected(tiny_checkpoint, p)[0] for p in paths])
    assert np.abs(loaded.embeddings - expected).max() < 1e-5
    assert not (tmp_path / ".emb.safetensors.embeddings.npy").exists()


def test_nearest_neighbour_of_a_video_is_its_duplicate(videos, tiny_checkpoint, tmp_path):
    out = tmp_path / "emb.npy"
    assert _embed_cli(videos, "-m", tiny_checkpoint, "-o", out, "-q").exit_code == 1
    # the README's example
    emb = np.load(out)
    paths = [row["path"] for row in csv.DictReader(open(tmp_path / "emb.csv", newline="", encoding="utf-8"))]
    ok = ~np.isnan(emb).any(axis=1)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    query = paths.index(str(videos / "a.mp4"))
    similarity = unit[ok] @ unit[query]
    ranked = [paths[i] for i in np.flatnonzero(ok)[np.argsort(-similarity)]]
    assert ranked[:2] == [str(videos / "a.mp4"), str(videos / "sub" / "e_copy_of_a.mp4")]
    assert similarity[np.argsort(-similarity)[1]] == pytest.approx(1.0, abs=1e-6)
    assert similarity[np.argsort(-similarity)[2]] < 0.9999


def test_in_memory_api_and_shards(videos, tiny_checkpoint, tmp_path):
    model = load_checkpoint(tiny_checkpoint)
    result = embed([videos / "a.mp4", videos / "b.avi"], model, PredictOptions(device="cpu"))
    assert result.output is None and result.frame_embeddings is None and result.embeddings.shape == (2, 64)
    assert np.abs(result.embeddings[1] - _expected(tiny_checkpoint, str(videos / "b.avi"))[0]).max() < 1e-5
    out = tmp_path / "part1.npy"
    assert _embed_cli(videos, "-m", tiny_checkpoint, "-o", out, "--shard", "1/2", "-q").exit_code == 0
    assert [r[1] for r in _index(tmp_path / "part1.csv")[1:]] == _paths(videos)[1::2]
    assert np.load(out).shape == (2, 64)


def test_bad_usage_is_one_line_with_exit_2(videos, tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "emb.npy"
    assert _embed_cli(videos / "a.mp4", "-m", tiny_checkpoint, "-o", out, "-q").exit_code == 0
    cases = [
        ([videos / "a.mp4", "-o", tmp_path / "emb.txt"], "use a .npy or .safetensors file"),
        ([videos / "b.avi", "-o", out, "--resume"], f"has {videos / 'a.mp4'} at row 0 but the inputs have "
                                                    f"{videos / 'b.avi'} there"),
        ([videos / "a.mp4", "-o", out, "--resume", "--per-frame"], "was made without --per-frame"),
        ([videos / "a.mp4", "-o", out, "--resume", "--frames", "6", "--per-frame"], "was made without --per-frame"),
        ([videos / "a.mp4", "-o", out, "--device", "tpu"], "invalid device 'tpu'"),
    ]
    for args, message in cases:
        result = _embed_cli(*args, "-m", tiny_checkpoint, "-q")
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert _embed_cli(videos / "a.mp4", "-m", tiny_checkpoint).exit_code == 2  # --output is required
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = _embed_cli(videos / "a.mp4", "-m", tiny_checkpoint, "-o", out)
    assert result.exit_code == 2 and "does not run under torchrun" in result.output
    monkeypatch.delenv("WORLD_SIZE")
    shutil.copy(tiny_checkpoint, tmp_path / "other.safetensors")
    result = _embed_cli(videos / "a.mp4", "-m", tmp_path / "other.safetensors", "-o", out, "--resume", "-q")
    assert result.exit_code == 2 and "was made with model tiny.safetensors, not other.safetensors" in result.output
    assert os.path.exists(out)


def test_resume_retries_a_failed_video_once_it_is_fixed(videos, tiny_checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(videos / "a.mp4", folder / "a.mp4")
    write_text(folder / "b.mp4")
    out = tmp_path / "emb.safetensors"
    assert _embed_cli(folder, "-m", tiny_checkpoint, "-o", out, "-q").exit_code == 1
    assert np.isnan(load_file(out)["embeddings"][1]).all()
    write_video(folder / "b.mp4", _frames(6, 7))
    counter = _Counter(monkeypatch)
    result = _embed_cli(folder, "-m", tiny_checkpoint, "-o", out, "--resume")
    assert result.exit_code == 0 and counter.videos == 1
    assert "embedded 1, failed 0, 1 already done" in " ".join(result.output.split())
    emb = load_file(out)["embeddings"]
    assert np.abs(emb[1] - _expected(tiny_checkpoint, str(folder / "b.mp4"))[0]).max() < 1e-5
    assert [r[2] for r in _index(tmp_path / "emb.csv")[1:]] == ["ok", "ok"]


def test_real_ctrl_c_leaves_a_consistent_pair_and_resume_completes_it(videos, tiny_checkpoint, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    names = [f"v{i:02d}{'.mp4' if i % 2 else '.avi'}" for i in range(8)]
    for i, name in enumerate(names):
        shutil.copy(videos / ("a.mp4" if i % 2 else "b.avi"), folder / name)
    out = tmp_path / "emb.safetensors"
    # Ctrl-C inside the store's put: the 4th video's rows are in the arrays, its index line is not on disk yet
    interrupt_when(["embed", str(folder), "-m", str(tiny_checkpoint), "-o", str(out), "--per-frame", "-b", "1",
                    "-w", "1", "-q", "--device", "cpu"], hold=("stamcli.embedding:_index_line", 4))
    saved = load_embeddings(out)  # closing the store wrote the index of every row that has its data
    assert [r["row"] for r in saved.records] == [0, 1, 2, 3] and all(r["status"] == "ok" for r in saved.records)
    assert [row[0] for row in _index(tmp_path / "emb.csv")[1:]] == ["0", "1", "2", "3"]
    assert not np.isnan(saved.embeddings[:4]).any() and np.isnan(saved.embeddings[4:]).all()
    assert not np.isnan(saved.frame_embeddings[:4]).any() and np.isnan(saved.frame_embeddings[4:]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.csv", "emb.safetensors", "many"]
    result = _embed_cli(folder, "-m", tiny_checkpoint, "-o", out, "--per-frame", "--resume", "-b", "8",
                        "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "embedded 4, failed 0, 4 already done" in " ".join(result.output.split())
    final = load_embeddings(out)
    assert final.paths == [str(folder / name) for name in names]
    expected = {name: _expected(tiny_checkpoint, str(videos / name))[0] for name in ("a.mp4", "b.avi")}
    for i in range(8):
        assert np.abs(final.embeddings[i] - expected["a.mp4" if i % 2 else "b.avi"]).max() < 1e-5


@pytest.mark.parametrize("name", ["emb.safetensors", "emb.npy", None])
def test_ctrl_c_between_a_batchs_rows_and_its_records_leaves_no_unrecorded_row(videos, tiny_checkpoint, tmp_path,
                                                                                 monkeypatch, name):
    """Ctrl-C can land inside ``put``, after the rows are written and before their index lines:
    such rows must not survive without a record (the real Ctrl-C test caught one)."""
    real_put, calls = EmbeddingStore.put, []

    def interrupted_put(self, rows, records, embeddings, frame_embeddings):
        calls.append(rows)
        if len(calls) == 3:  # the third batch: rows written, then the signal
            for array, values in ((self.embeddings, embeddings), (self.frame_embeddings, frame_embeddings)):
                array[list(rows)] = values
            raise KeyboardInterrupt
        real_put(self, rows, records, embeddings, frame_embeddings)

    monkeypatch.setattr(EmbeddingStore, "put", interrupted_put)
    paths = [str(videos / ("a.mp4" if i % 2 else "b.avi")) for i in range(6)]
    output = None if name is None else tmp_path / name
    options = PredictOptions(batch_size=1, workers=1, streams=1, device="cpu")
    result = embed(paths, load_checkpoint(tiny_checkpoint), options,
                   output=output, per_frame=True)
    assert result.interrupted and [r["row"] for r in result.records] == [0, 1]
    if output is None:
        emb, frames = result.embeddings, result.frame_embeddings
    else:
        saved = load_embeddings(output)
        emb, frames = saved.embeddings, saved.frame_embeddings
        assert [r["row"] for r in saved.records] == [0, 1]
    assert not np.isnan(emb[:2]).any() and np.isnan(emb[2:]).all()
    assert not np.isnan(frames[:2]).any() and np.isnan(frames[2:]).all()


def test_run_embedding_leaves_the_callers_job_as_it_was(videos, tiny_checkpoint, tmp_path):
    import copy

    from stamcli.embedding import run_embedding
    from stamcli.jobs import EmbedJob

    job = EmbedJob(paths=[str(videos / "a.mp4"), str(videos / "b.avi")], model=str(tiny_checkpoint),
                   output=str(tmp_path / "e.npy"), options=PredictOptions(device="cpu", precision="auto", streams=1))
    before = copy.deepcopy(job)
    result = run_embedding(job)
    assert (result.ok, result.failed, result.skipped) == (2, 0, 0) and load_embeddings(tmp_path / "e.npy").paths == job.paths
    assert job == before and job.options.precision == "auto"  # resolved (to fp32) in a copy only
