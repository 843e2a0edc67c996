"""``--engine ray`` (stamcli.ray_engine) against real Ray, in a loopback-only network namespace.

One ``ray start --head`` serves the module; one test lets the command start its own Ray. Every
run is compared with the local engine's records on the same files. Each run starts Ray worker
processes that import torch, so these tests are few and each checks a lot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import S3_ENV, TINY_LABELS, interrupt_when
from ray_cluster import LoopbackNamespace, RayHead, skip_reason
from synthetic import (index_frame, write_audio_only, write_corrupted, write_empty, write_index_video, write_text,
                       write_truncated, write_video_av)
from stamcli.cli import app
from stamcli.embedding import load_embeddings

runner = CliRunner()
SKIP = skip_reason()
needs_ray = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
RUN_TIMEOUT_S = 600  # a loaded 2-core machine starts Ray's workers slowly
S3_PORT = 5555  # an S3 server in the head's namespace (private: the port never clashes)
#: S3 clients in the head's namespace, its workers included, talk to that server
S3_IN_NAMESPACE = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Good videos, broken files and odd ones (rotated, variable frame rate, B-frames, a name that
    is not UTF-8)."""
    root = tmp_path_factory.mktemp("corpus")
    write_index_video(root / "a.mp4", 12)
    write_index_video(root / "b.avi", 9, 61, 97, fourcc="MJPG")
    write_index_video(root / "c_x264.mp4", 40, codec="libx264")
    write_video_av(root / "d_rotated.mp4", [index_frame(i, 48, 64) for i in range(6)], 25, rotation=90)
    pts = np.cumsum([0] + [1 + (i % 3) for i in range(29)])
    write_index_video(root / "e_vfr.mp4", 30, codec="libx264", pts=pts, time_base=Fraction(1, 30))
    write_index_video(root / "f_one_frame.mp4", 1)
    write_index_video(root / "g.mp4", 5)  # OpenCV cannot write to a name that is not UTF-8: renamed
    os.rename(root / "g.mp4", root / os.fsdecode(b"g_not_utf8_\xff.mp4"))
    write_empty(root / "h_empty.mp4")
    write_text(root / "i_text.mp4")
    write_truncated(root / "c_x264.mp4", root / "j_truncated.mp4", 0.3)
    write_corrupted(root / "c_x264.mp4", root / "k_corrupted.mp4")
    write_audio_only(root / "l_audio_only.mp4")
    return root


@pytest.fixture(scope="module")
def many(tmp_path_factory, corpus) -> Path:
    """12 copies of a good video: a run long enough to act on while it runs."""
    root = tmp_path_factory.mktemp("many")
    for i in range(12):
        shutil.copy(corpus / "c_x264.mp4", root / f"v{i:02d}.mp4")
    return root


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory) -> Path:
    """A model slow enough (ViT-S, 224 px) that a run of :func:`many` takes seconds on a CPU."""
    from stamcli import create_model, save_checkpoint

    model = create_model("vit_small_patch16_224", frames=8, num_classes=5, img_size=224, depth=4, labels=TINY_LABELS)
    return save_checkpoint(model, tmp_path_factory.mktemp("slow") / "slow.safetensors")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """``ray start --head`` in its own namespace; its workers note their pids in :attr:`pids`, use
    :data:`S3_IN_NAMESPACE` and download to :attr:`downloads` (their ``TMPDIR``)."""
    if SKIP:
        pytest.skip(SKIP)
    pids, downloads = tmp_path_factory.mktemp("actor-pids"), tmp_path_factory.mktemp("worker-tmp")
    namespace = LoopbackNamespace()
    try:
        cluster = RayHead(namespace, env={"STAM_TEST_ACTOR_PIDS": str(pids), "TMPDIR": str(downloads),
                                          **S3_IN_NAMESPACE})
        cluster.pids, cluster.downloads = pids, downloads
        yield cluster
        cluster.close()
    finally:
        namespace.close()


def _stam(namespace: LoopbackNamespace, env: dict, *args, exit_code: int, cwd=None) -> subprocess.CompletedProcess:
    """``stam ARGS`` as a child process inside ``namespace``; it must exit with ``exit_code``
    (1: some videos failed) without an error message."""
    result = subprocess.run(namespace.command([sys.executable, "-m", "stamcli", *args]), env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "error:" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _local(*args) -> None:
    """The local engine, in this process, as the reference."""
    result = runner.invoke(app, [*map(str, args), "--device", "cpu", "-q"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()]


# --------------------------------------------------------------------------- the cluster itself


@needs_ray
def test_test_cluster_listens_on_loopback_only(head):
    listening = [address.rsplit(":", 1) for address in head.namespace.listening()]
    assert [host for host, port in listening if port == head.address.rsplit(":", 1)[1]]  # the GCS server
    assert len(listening) >= 3  # and the raylet's servers
    assert {host for host, _ in listening} <= {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}, listening


# --------------------------------------------------------------------------- same records as the local engine


@needs_ray
def test_predict_on_a_cluster_writes_the_local_engines_records(head, corpus, tiny_checkpoint, tmp_path):
    reference, out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    _local("predict", corpus, "--model", tiny_checkpoint, "-o", reference, "-b", 3)
    _stam(head.namespace, head.env(), "predict", corpus, "--model", tiny_checkpoint, "-o", out, "-b", 3,
                   "--device", "cpu", "--engine", "ray", "--ray-address", head.address, "--ray-actors", 1, "-q",
                   exit_code=1)  # the broken files
    records = _jsonl(out)
    assert records == _jsonl(reference)
    assert out.read_bytes() == reference.read_bytes()
    errors = {Path(r["path"]).name: r["error"] for r in records if r["status"] == "error"}
    assert sorted(errors) == ["h_empty.mp4", "i_text.mp4", "j_truncated.mp4", "l_audio_only.mp4"]
    assert "0 bytes" in errors["h_empty.mp4"]
    assert sum(r["status"] == "ok" for r in records) == 8


@needs_ray
def test_embed_and_timeline_on_a_cluster_match_the_local_engine(head, corpus, tiny_checkpoint, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for name in ("a.mp4", "c_x264.mp4", "e_vfr.mp4", "h_empty.mp4"):
        shutil.copy(corpus / name, good / name)
    # embeddings, through RAY_ADDRESS
    env = head.env(RAY_ADDRESS=head.address)
    _local("embed", good, "--model", tiny_checkpoint, "-o", tmp_path / "local.npy", "--per-frame", "-b", 2)
    _stam(head.namespace, env, "embed", good, "--model", tiny_checkpoint, "-o", tmp_path / "ray.npy",
                   "--per-frame", "-b", 2, "--device", "cpu", "--engine", "ray", "--ray-actors", 1, "-q", exit_code=1)
    local, ray = load_embeddings(tmp_path / "local.npy"), load_embeddings(tmp_path / "ray.npy")
    assert ray.records == local.records
    assert [r["status"] for r in ray.records] == ["ok", "ok", "ok", "error"]
    np.testing.assert_array_equal(ray.embeddings, local.embeddings)
    np.testing.assert_array_equal(ray.frame_embeddings, local.frame_embeddings)
    assert np.isnan(ray.embeddings[3]).all() and not np.isnan(ray.embeddings[:3]).any()
    # a timeline: window records and the video's summary
    _local("predict", good, "--model", tiny_checkpoint, "-o", tmp_path / "local.jsonl", "--window", 0.4,
           "--stride", 0.3, "-b", 4)
    _stam(head.namespace, env, "predict", good, "--model", tiny_checkpoint, "-o", tmp_path / "ray.jsonl",
                   "--window", 0.4, "--stride", 0.3, "-b", 4, "--device", "cpu", "--engine", "ray", "--ray-actors", 1,
                   "-q", exit_code=1)
    local, ray = _jsonl(tmp_path / "local.jsonl"), _jsonl(tmp_path / "ray.jsonl")
    assert [r["type"] for r in ray].count("video") == 4
    assert sum(r["type"] == "window" for r in ray) > 8
    assert _without_scores(ray) == _without_scores(local)
    for a, b in zip(ray, local):  # windows are batched differently: the same floats to rounding
        np.testing.assert_allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]],
                                   rtol=1e-5, atol=1e-6)


@needs_ray
def test_shots_and_events_on_a_cluster_match_the_local_engine(head, tiny_checkpoint, tmp_path):
    from synthetic import ShotSpec, write_shot_video

    folder = tmp_path / "shots"
    folder.mkdir()
    write_shot_video(folder / "cuts.mp4", [ShotSpec("red", 50), ShotSpec("blue", 300), ShotSpec("green", 40)],
                     fps=25, height=90, width=160)
    args = ["--model", tiny_checkpoint, "--window", "shots", "--max-shot", 5, "--events", "--min-event", 0, "-b", 4]
    _local("predict", folder, *args, "-o", tmp_path / "local.jsonl")
    _stam(head.namespace, head.env(), "predict", folder, *args, "-o", tmp_path / "ray.jsonl", "--device", "cpu",
          "--engine", "ray", "--ray-address", head.address, "--ray-actors", 1, "-q", exit_code=0)
    local, ray = _jsonl(tmp_path / "local.jsonl"), _jsonl(tmp_path / "ray.jsonl")
    assert [(r["type"], r.get("shot"), r["start_s"], r["end_s"]) for r in ray if r["type"] == "window"] == [
        ("window", 0, 0.0, 2.0), ("window", 1, 2.0, 6.0), ("window", 1, 6.0, 10.0), ("window", 1, 10.0, 14.0),
        ("window", 2, 14.0, 15.6)]
    assert ray[-1]["shots"] == 3 and ray[-1]["events"] == sum(r["type"] == "event" for r in ray) >= 1
    # windows are batched differently: the same records, scores (an event's too) the same to rounding
    assert [{**r, "score": None} for r in _without_scores(ray)] == [{**r, "score": None} for r in _without_scores(local)]
    for a, b in zip(ray, local):
        np.testing.assert_allclose([p["score"] for p in a["predictions"]] + [a.get("score", 0.0)],
                                   [p["score"] for p in b["predictions"]] + [b.get("score", 0.0)], rtol=1e-5, atol=1e-6)


def _without_scores(records: list[dict]) -> list[dict]:
    return [{**r, "predictions": [{**p, "score": None} for p in r["predictions"]]} for r in records]


@needs_ray
def test_a_local_ray_started_for_the_run_gives_the_same_records_and_is_stopped(corpus, tiny_checkpoint, tmp_path,
                                                                               monkeypatch):
    """Also: test-time views, and relative paths (read from the command's folder, named as given)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "d_rotated.mp4", "i_text.mp4"):
        shutil.copy(corpus / name, videos / name)
    monkeypatch.chdir(tmp_path)
    views = ["--clips", 2, "--crops", 3]
    _local("predict", "videos", "--model", tiny_checkpoint, "-o", "local.jsonl", *views)
    temp_dir = tempfile.mkdtemp(prefix="stamray-", dir="/tmp")
    try:
        with LoopbackNamespace() as namespace:
            _stam(namespace, namespace.env(RAY_TMPDIR=temp_dir), "predict", "videos", "--model", tiny_checkpoint,
                  "-o", "ray.jsonl", *views, "--device", "cpu", "--engine", "ray", "--ray-actors", 1, "-q",
                  exit_code=1, cwd=tmp_path)
            deadline = time.monotonic() + 15  # the command stopped the Ray it started (its last processes exiting)
            while namespace.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert namespace.pids() == []
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    records = _jsonl(tmp_path / "ray.jsonl")
    assert records == _jsonl(tmp_path / "local.jsonl")
    assert [(r["path"], r["status"], r.get("clips"), r.get("crops")) for r in records] == [
        ("videos/a.mp4", "ok", 2, 3), ("videos/d_rotated.mp4", "ok", 2, 3), ("videos/i_text.mp4", "error", 2, 3)]
    assert records[2]["error"].startswith("cannot read video videos/i_text.mp4:")


@needs_ray
def test_videos_in_s3_to_a_parquet_file_in_s3(head, corpus, tiny_checkpoint, tmp_path):
    """``stam predict s3://bucket/videos/ --engine ray -o s3://bucket/tags.parquet`` against a real S3
    server (moto) in the cluster's namespace: the local engine's records, the URLs as paths, every
    download removed. With a label map (applied on the driver to the actors' probabilities)."""
    tags = tmp_path / "tags.csv"
    tags.write_text("label,tag\narchery,sport\ncycling,sport\ndiving,sport\nbaking,food\neating, with a fork,food\n"
                    .replace("eating, with a fork", '"eating, with a fork"'), encoding="utf-8")
    s3 = subprocess.Popen(head.namespace.command([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                                  S3_PORT]), env=head.env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: any(a.endswith(f":{S3_PORT}") for a in head.namespace.listening()), s3, timeout_s=120)
        objects = {"a.mp4": "videos/a.mp4", "c_x264.mp4": "videos/c_x264.mp4", "i_text.mp4": "videos/i_text.mp4",
                   "d_rotated.mp4": "videos/sub/d_rotated.mp4", "b.avi": "other/b.avi"}
        _in_namespace_s3(head, "client.create_bucket(Bucket='archive')\n"
                         "for name, key in args: client.upload_file(name, 'archive', key)",
                         [[str(corpus / name), key] for name, key in objects.items()])
        env = head.env(**S3_IN_NAMESPACE, STAM_STAGING_DIR=str(tmp_path / "staging"))
        common = ["--model", tiny_checkpoint, "-b", 2, "--device", "cpu", "--label-map", tags, "-q"]
        _stam(head.namespace, env, "predict", "s3://archive/videos/", "-o", tmp_path / "local.jsonl", *common,
              exit_code=1)  # the local engine, reading the same URLs
        _stam(head.namespace, env, "predict", "s3://archive/videos/", "-o", "s3://archive/tags.parquet", *common,
              "--engine", "ray", "--ray-address", head.address, "--ray-actors", 1, exit_code=1)
        _in_namespace_s3(head, "client.download_file('archive', 'tags.parquet', args)", str(tmp_path / "tags.parquet"))
    finally:
        s3.terminate()
        s3.wait(timeout=30)
    from stamcli.writers import read_records

    records = read_records(tmp_path / "tags.parquet")
    assert records == read_records(tmp_path / "local.jsonl")
    assert [(r["path"], r["status"]) for r in records] == [
        ("s3://archive/videos/a.mp4", "ok"), ("s3://archive/videos/c_x264.mp4", "ok"),
        ("s3://archive/videos/i_text.mp4", "error"), ("s3://archive/videos/sub/d_rotated.mp4", "ok")]
    assert records[2]["error"].startswith("cannot read video s3://archive/videos/i_text.mp4:")
    assert {p["label"] for r in records for p in r["predictions"]} == {"sport", "food"}
    assert list(head.downloads.glob("stam-dl-*")) == []  # the decode tasks' temporary copies are gone
    assert list((tmp_path / "staging").rglob("*.pending")) == []  # uploaded


def _in_namespace_s3(head, code: str, args) -> None:
    """Run ``code`` with an S3 ``client`` (boto3) and ``args`` in the cluster's namespace."""
    script = f"import boto3, json, sys\nclient = boto3.client('s3')\nargs = json.loads(sys.argv[1])\n{code}\n"
    subprocess.run(head.namespace.command([sys.executable, "-c", script, json.dumps(args)]),
                   env=head.env(**S3_IN_NAMESPACE), check=True, capture_output=True, timeout=120)


# --------------------------------------------------------------------------- failures and interruptions


@needs_ray
def test_a_killed_model_worker_is_replaced_and_every_video_comes_out_once(head, many, slow_checkpoint, tmp_path):
    reference, out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    _local("predict", many, "--model", slow_checkpoint, "-o", reference, "-b", 2)
    before = set(os.listdir(head.pids))
    command = head.namespace.command([sys.executable, "-m", "stamcli", "predict", many, "--model", slow_checkpoint,
                                      "-o", out, "-b", 2, "--device", "cpu", "--engine", "ray", "--ray-address",
                                      head.address, "--ray-actors", 1, "-q"])
    proc = subprocess.Popen(command, env=head.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = _wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 1
                           and set(os.listdir(head.pids)) - before, proc)
        assert len(killed) == 1
        os.kill(int(killed.pop()), signal.SIGKILL)  # the model actor's process, mid-run
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert len(set(os.listdir(head.pids)) - before) == 2  # a new actor took over
    records = _jsonl(out)
    assert [r["path"] for r in records] == [str(many / f"v{i:02d}.mp4") for i in range(12)]
    assert records == _jsonl(reference)


def _wait_for(condition, proc: subprocess.Popen, timeout_s: float = RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("timed out")


@needs_ray
def test_ctrl_c_leaves_a_valid_file_and_resume_completes_it(head, many, slow_checkpoint, tmp_path):
    out = tmp_path / "tags.json"
    args = [sys.executable, "-m", "stamcli", "predict", many, "--model", slow_checkpoint, "-o", out, "-b", 2,
            "--device", "cpu", "--engine", "ray", "--ray-address", head.address, "--ray-actors", 1, "-q"]
    # Ctrl-C while the driver waits to write its third record (one record a call): two are written
    interrupt_when(args[3:], hold=("stamcli.tagging:RecordSink.write", 3), wrap=head.namespace.command,
                   env=head.env(), timeout_s=RUN_TIMEOUT_S)
    records = json.loads(out.read_text())  # a complete, valid JSON array
    assert [r["path"] for r in records] == [str(many / f"v{i:02d}.mp4") for i in range(2)]
    _stam(head.namespace, head.env(), *args[3:], "--resume", exit_code=0)
    paths = [r["path"] for r in json.loads(out.read_text())]
    assert paths == [str(many / f"v{i:02d}.mp4") for i in range(12)]


# --------------------------------------------------------------------------- what cannot run under Ray


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers and --streams set the local engine's threads"),
    (["--streams", "2"], "--workers and --streams set the local engine's threads"),
    (["--preview", "previews"], "--preview needs every video's frames on this machine"),
    (["--device", "cuda:1"], "--device is auto, cpu or cuda"),
    (["--precision", "fp64"], "invalid precision 'fp64'"),
    (["--ray-actors", "3-2"], "--ray-actors needs 1 <= MIN <= MAX"),
    (["--ray-actors", "many"], "--ray-actors must be N or MIN-MAX"),
])
def test_options_that_cannot_run_under_ray_are_usage_errors(corpus, tiny_checkpoint, tmp_path, args, message):
    result = runner.invoke(app, ["predict", str(corpus), "--model", str(tiny_checkpoint), "-o",
                                 str(tmp_path / "t.csv"), "--engine", "ray", *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "t.csv").exists()


def test_ray_options_need_the_ray_engine(corpus, tiny_checkpoint, tmp_path):
    for args in (["--ray-actors", "2"], ["--ray-address", "127.0.0.1:6379"], ["--engine", "spark"]):
        result = runner.invoke(app, ["embed", str(corpus), "--model", str(tiny_checkpoint), "-o",
                                     str(tmp_path / "e.npy"), *args], catch_exceptions=False)
        assert result.exit_code == 2, result.output
    assert "--engine must be local or ray, got 'spark'" in result.output


def test_without_ray_installed_the_error_says_how_to_install_it(corpus, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = runner.invoke(app, ["predict", str(corpus / "a.mp4"), "--model", str(tiny_checkpoint), "--device", "cpu",
                                 "-o", str(tmp_path / "t.csv"), "--engine", "ray"], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == 'error: --engine ray needs ray: pip install "stamcli[ray]"'


# --------------------------------------------------------------------------- pieces that need no cluster


def test_actor_counts_and_decode_task_sizes():
    from stamcli.jobs import parse_actors
    from stamcli.ray_engine import _rows_per_task

    assert parse_actors("4") == (4, 4) and parse_actors(" 1-8 ") == (1, 8)
    assert _rows_per_task(10, 8) == 8  # one model batch per task while there are few
    assert _rows_per_task(8_000, 8) == 8
    assert _rows_per_task(100_000, 8) == 104  # at most 1,000 tasks, a whole number of batches each
    assert -(-100_000 // _rows_per_task(100_000, 8)) <= 1000
    assert _rows_per_task(5_000, 1) == 5


def test_the_path_table_keeps_names_that_are_not_utf8():
    from stamcli.ray_tasks import decode, path_table

    paths = ["a.mp4", os.fsdecode(b"b\xff.mp4"), "s3://bucket/c d.mp4", "é.mp4"]
    blob, offsets = path_table(paths)
    assert [decode(blob[offsets[i]:offsets[i + 1]].tobytes()) for i in range(len(paths))] == paths


def test_a_failed_run_is_one_line_naming_the_root_cause():
    from stamcli.errors import StamError
    from stamcli.ray_engine import _stam_error

    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("UDF failed to process a data block.")
            self.cause = cause

    try:
        try:
            raise TypeError("decode_task() missing 1 required keyword-only argument: 'folder'\nmore")
        except TypeError as err:
            raise Wrapper(None) from err
    except Wrapper as err:
        assert str(_stam_error(err)) == ("the Ray run failed: TypeError: decode_task() missing 1 required "
                                         "keyword-only argument: 'folder'")
    ours = StamError("out of GPU memory with --batch-size 64; use a smaller batch")
    assert _stam_error(Wrapper(ours)) is ours


def test_decode_tasks_and_model_actors_compute_what_the_local_engine_computes(corpus, tiny_model):
    """The cluster-side code in this process (no Ray cluster): rows, batching, errors and outputs."""
    pytest.importorskip("ray.data")
    from stamcli.decode import ClipSpec
    from stamcli.engine import Predictor
    from stamcli.jobs import PredictOptions
    from stamcli.ray_tasks import ModelActor, decode_task, path_table, read_video

    paths = [str(corpus / name) for name in ("h_empty.mp4", "a.mp4", "i_text.mp4", "c_x264.mp4", "e_vfr.mp4")]
    spec = ClipSpec(tiny_model.config.frames, tiny_model.config.img_size, threads=1)
    batches = list(decode_task({"id": np.array([0, 1])}, paths=[path_table(paths)], per_task=3, spec=spec,
                               read=read_video, chunk=2, folder=os.getcwd()))
    assert [b["row"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]  # chunks of 2 across the two tasks
    assert [b["has_frames"].tolist() for b in batches] == [[False, True], [False, True], [True]]
    assert batches[0]["frames"].shape == (2, 4, 3, 32, 32) and not batches[0]["frames"][0].any()
    actor = ModelActor([tiny_model], PredictOptions(device="cpu"), "probabilities", 1)
    outputs = [actor(dict(batch)) for batch in batches]
    assert all("frames" not in out and out["probabilities"].shape == (len(out["row"]), 5) for out in outputs)
    local = list(Predictor(tiny_model, PredictOptions(device="cpu", batch_size=2, streams=1)).scores(paths))
    rows = {int(row): (error, probabilities) for out in outputs
            for row, error, probabilities in zip(out["row"], out["error"], out["probabilities"])}
    for row, item in enumerate(local):
        error, probabilities = rows[row]
        if item.error is None:
            assert error == b""
            np.testing.assert_array_equal(probabilities, item.probabilities.numpy())
        else:
            assert error.decode() == item.error and np.isnan(probabilities).all()


def test_a_timeline_video_s_record_comes_with_its_last_window_before_the_next_video_is_read(tmp_path, tiny_model,
                                                                                           monkeypatch):
    """RayTimelinePredictor over this process's decode task and model actor (no Ray cluster): a.mp4's 3
    windows fill a decode chunk of 3 rows, and its record must come with them, before b.mp4 is read."""
    pytest.importorskip("ray.data")
    import torch

    from stamcli.engine import Predictor
    from stamcli.jobs import PredictOptions
    from stamcli.ray_engine import RayPredictor, RayTimelinePredictor
    from stamcli.ray_tasks import ModelActor, decode_task, path_table
    from stamcli.timeline import TimelinePredictor

    write_index_video(tmp_path / "a.mp4", 60, fps=10)
    write_index_video(tmp_path / "b.mp4", 40, fps=10)
    paths = [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    predictor = RayPredictor(tiny_model, PredictOptions(device="cpu", engine="ray", batch_size=3))
    got, seen = [], {}  # the records the run yields; those it had yielded when each video's reading began

    def run(paths, compute, read, *, unit):  # RayPredictor.run with one decode task and one actor, here
        def noting(spec, path):
            seen[path] = [(r["path"], r["type"]) for r in got]
            return read(spec, path)

        actor = ModelActor([tiny_model], predictor.remote_options, compute, None)
        for batch in decode_task({"id": np.array([0])}, paths=[path_table(paths)], per_task=len(paths),
                                 spec=predictor.spec, read=noting, chunk=predictor.options.batch_size,
                                 folder=os.getcwd()):
            out = actor(batch)
            ok = out["has_frames"]
            yield out, torch.from_numpy(out["probabilities"][ok]) if ok.any() else None

    monkeypatch.setattr(predictor, "run", run)
    threads = torch.get_num_threads()  # the decode task sets this thread's count to 1
    try:
        got.extend(RayTimelinePredictor(predictor, window_s=2).predict(paths))
    finally:
        torch.set_num_threads(threads)
    assert seen[paths[1]] == [(paths[0], "window")] * 3 + [(paths[0], "video")]
    local = Predictor(tiny_model, PredictOptions(device="cpu", batch_size=3, streams=1))
    assert got == list(TimelinePredictor(local, window_s=2).predict(paths))
    assert [(r["path"], r["type"]) for r in got] == [(path, kind) for path, n in zip(paths, (3, 2))
                                                     for kind in ["window"] * n + ["video"]]


def test_engine_options_are_checked_once_by_resolve_and_pick_the_predictor(tiny_model):
    pytest.importorskip("ray.data")
    from stamcli.engine import Predictor, make_predictor
    from stamcli.errors import UsageError
    from stamcli.jobs import PredictOptions
    from stamcli.ray_engine import RayPredictor

    options = PredictOptions(engine=" Ray ", device="CPU", precision="fp32", ray_actors="1-3", decoder="opencv",
                             clips=2)
    resolved = options.resolve()
    assert (resolved.engine, resolved.device, resolved.precision, resolved.actor_range, resolved.decoder) == (
        "ray", "cpu", "fp32", (1, 3), "opencv")
    assert options.engine == " Ray " and options.device == "CPU"  # the caller's copy is left as it was
    assert PredictOptions(engine="ray").resolve().device == "auto"  # each model actor resolves it on its node
    with pytest.raises(UsageError, match="--ray-address and --ray-actors need --engine ray"):
        PredictOptions(ray_address="127.0.0.1:6379").resolve()
    predictor = make_predictor(tiny_model, options)
    assert isinstance(predictor, RayPredictor) and predictor.actors == (1, 3)
    # decode tasks read as the local engine does (the decoder, the views), one FFmpeg thread each
    assert (predictor.spec.decoder, predictor.spec.clips, predictor.spec.threads) == ("opencv", 2, 1)
    assert (predictor.remote_options.engine, predictor.remote_options.device) == ("local", "cpu")
    with pytest.raises(ValueError, match="make_predictor"):
        Predictor(tiny_model, options)
    assert type(make_predictor(tiny_model, PredictOptions(device="cpu"))) is Predictor
