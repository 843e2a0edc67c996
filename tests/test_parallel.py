"""Model streams (stamcli.parallel): order, concurrency, thread counts, errors, cancellation, and
the Predictor and `stam embed` giving the same answers with several streams as with one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_model
from synthetic import write_text, write_video
from stamcli import UsageError, embed, parallel
from stamcli.cli import app
from stamcli.engine import PredictOptions, Predictor
from stamcli.parallel import ModelStreams, StreamCancelled


def test_map_keeps_the_order_and_runs_count_calls_at_once():
    both_running = threading.Barrier(2, timeout=30)  # broken unless two calls run at the same time

    def call(item):
        if item < 2:
            both_running.wait()
        time.sleep(0.01 * (4 - item))  # later items finish first
        return item * 10, threading.current_thread().name

    with ModelStreams(2) as streams:
        results = list(streams.map(call, range(4)))
    assert [item for item, _ in results] == [0, 1, 2, 3]
    assert [value for _, (value, _) in results] == [0, 10, 20, 30]
    assert {name for _, (_, name) in results} <= {"stam-model-0", "stam-model-1"}
    assert all(not thread.is_alive() for thread in streams._threads)


def test_map_hands_on_computed_results_while_its_items_are_waiting():
    # two streams: 0 and 1 are submitted, 0 comes out; while the source waits for item 2 (WAITING) the
    # result of 1 comes out as soon as it is computed, not once item 2 has come
    got, seen = [], []

    def items():
        yield from (0, 1)
        for _ in range(3000):  # at most 30 s; only the broken map waits that long
            if len(got) == 2:
                break
            yield parallel.WAITING
            time.sleep(0.01)
        seen.extend(got)
        yield 2

    with ModelStreams(2) as streams:
        for item, value in streams.map(lambda item: item * 10, items()):
            got.append((item, value))
    assert seen == [(0, 0), (1, 10)] and got == [(0, 0), (1, 10), (2, 20)]


def test_one_stream_runs_in_the_calling_thread():
    with ModelStreams(1) as streams:
        results = list(streams.map(lambda item: threading.current_thread(), range(3)))
    assert [thread for _, thread in results] == [threading.current_thread()] * 3
    assert streams._threads == []


@pytest.mark.parametrize("per_thread", [True, False], ids=["per-thread-count", "process-wide-count"])
def test_each_stream_gets_its_share_of_the_threads_and_the_caller_keeps_its_own(monkeypatch, per_thread):
    if per_thread and not parallel.PER_THREAD_OMP:
        pytest.skip("this torch keeps one process-wide thread count (its parallel backend is not OpenMP)")
    monkeypatch.setattr(parallel, "PER_THREAD_OMP", per_thread)  # False: the streams leave the count alone
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ModelStreams(2) as streams:
            assert streams.threads_each == 1
            counts = [count for _, count in streams.map(lambda _: torch.get_num_threads(), range(4))]
        assert ModelStreams(2, threads_each=3).threads_each == 3
        assert counts == ([1] * 4 if per_thread else [2] * 4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_error_in_a_call_reaches_the_caller_after_the_earlier_results():
    def call(item):
        if item == 2:
            raise ValueError("bad batch 2")
        return item

    seen = []
    with pytest.raises(ValueError, match="bad batch 2"):
        with ModelStreams(2) as streams:
            for item, value in streams.map(call, range(6)):
                seen.append(value)
    assert seen == [0, 1]
    assert all(not thread.is_alive() for thread in streams._threads)


def test_leaving_early_stops_a_running_model_call_at_its_next_module():
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])
    both_started = threading.Barrier(3, timeout=30)

    def endless(item):  # a model call that would never end on its own
        both_started.wait()
        while True:
            model(torch.zeros(1, 8))

    streams = ModelStreams(2, model=model)
    assert [len(layer._forward_pre_hooks) for layer in model] == [1] * 4
    futures = [streams.submit(endless, item) for item in range(2)]
    both_started.wait()
    closer = threading.Thread(target=streams.close, kwargs={"cancel": True})
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "close(cancel=True) did not stop the running calls"
    for future in futures:
        with pytest.raises(StreamCancelled):
            future.result(timeout=0)
    assert all(not thread.is_alive() for thread in streams._threads)
    assert [len(layer._forward_pre_hooks) for layer in model] == [0] * 4  # gone with the streams
    assert model(torch.ones(1, 8)).shape == (1, 8)


def test_cancellation_raises_only_in_the_streams_threads():
    model = torch.nn.Linear(4, 4)
    streams = ModelStreams(2, model=model)
    streams._cancelled.set()
    model(torch.zeros(1, 4))  # the caller's own use of the model is not stopped
    future = streams.submit(model, torch.zeros(1, 4))
    with pytest.raises(StreamCancelled):
        future.result(timeout=30)
    streams.close()


def test_default_streams_one_batch_per_core_up_to_four_and_one_on_a_gpu(monkeypatch):
    monkeypatch.setattr(parallel, "PER_THREAD_OMP", True)
    for cores, expected in ((1, 1), (2, 2), (3, 3), (16, 4)):
        monkeypatch.setattr(parallel, "cpu_cores", lambda cores=cores: cores)
        assert parallel.default_streams(torch.device("cpu")) == parallel.default_streams() == expected
    assert parallel.default_streams(torch.device("cuda")) == 1
    monkeypatch.setattr(parallel, "PER_THREAD_OMP", False)  # a process-wide thread count: no streams
    assert parallel.default_streams(torch.device("cpu")) == 1


def test_torchrun_ranks_on_one_machine_share_its_cores(monkeypatch):
    # 4 ranks on 16 cores: each takes 4, so the ranks together start about as many threads as there are cores
    monkeypatch.setattr(parallel, "PER_THREAD_OMP", True)
    monkeypatch.setattr(parallel, "cpu_cores", lambda: 16)
    for name, value in dict(WORLD_SIZE="8", RANK="5", LOCAL_RANK="1", LOCAL_WORLD_SIZE="4").items():
        monkeypatch.setenv(name, value)
    assert parallel.process_cores() == 4
    assert parallel.default_workers(torch.device("cuda")) == 3  # every core of its share but the one feeding its GPU
    assert parallel.default_workers(torch.device("cpu")) == 4 and parallel.default_streams(torch.device("cpu")) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")  # more ranks than cores: one each
    assert parallel.process_cores() == 1 and parallel.default_workers(torch.device("cuda")) == 1
    monkeypatch.setenv("WORLD_SIZE", "1")  # not under torchrun
    assert parallel.process_cores() == 16 and parallel.default_workers(torch.device("cuda")) == 15


def test_streams_on_a_gpu_are_one_with_a_warning(monkeypatch, caplog):
    # On a GPU more streams only multiply the activation memory
    import stamcli.device

    monkeypatch.setattr(stamcli.device, "resolve_device", lambda spec: torch.device("cuda:0"))
    options = PredictOptions(device="cuda", precision="bf16", streams=3).resolve()
    assert (options.device, options.streams) == ("cuda:0", 1)
    assert "--streams 3 is for the CPU" in caplog.text
    assert PredictOptions(device="cuda", precision="bf16").resolve().streams is None  # the default: 1 on a GPU


def test_streams_must_be_at_least_one():
    with pytest.raises(ValueError, match="at least 1"):
        ModelStreams(0)
    with pytest.raises(UsageError, match="--streams must be at least 1"):
        PredictOptions(streams=0).resolve()


# --------------------------------------------------------------------------- through the Predictor


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream_videos")
    rng = np.random.default_rng(7)
    for i in range(7):
        base = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        write_video(root / f"v{i}.mp4", [np.roll(base, 2 * k, axis=1) for k in range(6 + i)])
    write_text(root / "v3_broken.mp4")
    return root


def _paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


def test_predictor_with_streams_gives_the_same_records_in_the_same_order(clip_folder):
    model = make_tiny_model()
    paths = _paths(clip_folder)
    one = list(Predictor(model, PredictOptions(device="cpu", batch_size=2, streams=1)).scores(paths))
    predictor = Predictor(model, PredictOptions(device="cpu", batch_size=2, streams=3))
    assert predictor.streams == 3
    three = list(predictor.scores(paths))
    assert [item.path for item in three] == [item.path for item in one] == paths
    assert [item.error is None for item in three] == [not p.endswith("broken.mp4") for p in paths]
    for a, b in zip(one, three):
        if a.error is None:
            torch.testing.assert_close(b.probabilities, a.probabilities, atol=1e-5, rtol=1e-4)
    assert not model.spatial.blocks[0]._forward_pre_hooks  # no hooks left on the user's model


def test_embed_with_streams_matches_one_stream(clip_folder):
    model = make_tiny_model()
    paths = _paths(clip_folder)
    one = embed(paths, model, PredictOptions(device="cpu", batch_size=3, streams=1))
    two = embed(paths, model, PredictOptions(device="cpu", batch_size=3, streams=2))
    assert (two.ok, two.failed) == (one.ok, one.failed) == (7, 1)
    np.testing.assert_allclose(two.embeddings, one.embeddings, atol=1e-5)
    assert [r["path"] for r in two.records] == paths


def test_cli_takes_streams_and_rejects_zero(clip_folder, tmp_path):
    checkpoint = tmp_path / "tiny.safetensors"
    from stamcli import save_checkpoint

    save_checkpoint(make_tiny_model(), checkpoint)
    runner = CliRunner()
    out = tmp_path / "tags.jsonl"
    result = runner.invoke(app, ["predict", str(clip_folder), "--model", str(checkpoint), "--streams", "2", "-o", str(out),
                                 "-q", "--device", "cpu"])
    assert result.exit_code == 1, result.output  # the broken video
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8
    result = runner.invoke(app, ["predict", str(clip_folder), "--model", str(checkpoint), "--streams", "0"])
    assert result.exit_code == 2 and "--streams" in result.output
