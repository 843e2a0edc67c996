"""stamcli.distributed: each rank's GPU, the process groups, and waiting for slow ranks.

Without a GPU the CUDA calls are replaced by recorders; the waiting runs for real, with gloo
between two processes on 127.0.0.1.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist

import stamcli.distributed as distributed
from conftest import run_ranks
from stamcli.distributed import Distributed
from stamcli.errors import StamError


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_each_local_rank_gets_its_own_gpu(monkeypatch):
    _gpus(monkeypatch, 4)
    assert [Distributed(r, 8, r % 4, 4).device_for("auto") for r in range(8)] == ["cuda:0", "cuda:1", "cuda:2",
                                                                                  "cuda:3"] * 2
    assert Distributed(1, 2, 1, 2).device_for("cuda") == "cuda:1"
    assert Distributed(1, 2, 1, 2).device_for("cuda:0") == "cuda:0"  # an explicit device stays
    assert Distributed(1, 2, 1, 2).device_for("cpu") == "cpu"
    assert Distributed().device_for("auto") == "auto"  # outside torchrun: resolve_device decides


def test_a_rank_that_sees_one_gpu_uses_it_and_too_few_gpus_is_a_clear_error(monkeypatch):
    _gpus(monkeypatch, 1)  # SLURM with --gpus-per-task=1: every rank sees its own GPU as cuda:0
    assert Distributed(3, 4, 3, 4).device_for("auto") == "cuda:0"
    _gpus(monkeypatch, 2)
    with pytest.raises(StamError, match=r"local rank 3, but only 2 CUDA devices are visible: start at most 2 "
                                        r"processes per machine \(torchrun --nproc-per-node 2\)"):
        Distributed(3, 4, 3, 4).device_for("auto")
    _gpus(monkeypatch, 0)
    assert Distributed(3, 4, 3, 4).device_for("auto") == "auto"  # the CPU, as without torchrun


def test_init_makes_the_ranks_gpu_current_and_binds_nccl_to_it(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group",
                        lambda backend, **kw: calls.append(("init_process_group", backend, kw.get("device_id"))))
    monkeypatch.setattr(tdist, "new_group", lambda **kw: calls.append(("new_group", kw["backend"], kw["timeout"])))
    monkeypatch.setattr(distributed, "_wait_group", None)
    gpu = torch.device("cuda:1")
    Distributed(1, 2, 1, 2).init(gpu, backend="nccl")
    assert calls == [("set_device", gpu), ("init_process_group", "nccl", gpu),
                     ("new_group", "gloo", distributed.WAIT_TIMEOUT)]
    with pytest.raises(ValueError, match="NCCL group needs this rank's CUDA device"):
        Distributed(1, 2, 1, 2).init(torch.device("cpu"), backend="nccl")
    calls.clear()
    Distributed().init(gpu, backend="nccl")  # outside torchrun: nothing to join
    assert calls == []


def _wait_for_a_slow_rank(delay_s: float) -> float:
    distributed.COLLECTIVE_TIMEOUT = timedelta(seconds=delay_s / 3)
    dist = Distributed.from_env()
    dist.init()
    if dist.rank == 1:
        time.sleep(delay_s)  # e.g. a longer shard, or a bigger part of the frozen-backbone cache
    started = time.monotonic()
    dist.barrier()
    return time.monotonic() - started


def test_barrier_waits_for_a_rank_far_longer_than_the_collective_timeout():
    # The group's collectives time out after 1 s here (NCCL's default is 10 minutes); the barrier
    # of ranks that finished their part waits for the slow one all the same.
    waited = run_ranks(_wait_for_a_slow_rank, 2, 3.0)
    assert waited[0] > 2.0 and waited[1] < 2.0


def _tag_with_a_slow_rank(checkpoint: str, videos: list[str], output: str, delay_s: float) -> int:
    from stamcli.jobs import PredictOptions, TaggingJob
    from stamcli.model import STAM
    from stamcli.tagging import run_tagging

    distributed.COLLECTIVE_TIMEOUT = timedelta(seconds=delay_s / 3)
    if Distributed.from_env().rank == 1:  # e.g. its shard holds the long videos
        forward = STAM.forward
        STAM.forward = lambda self, videos: time.sleep(delay_s) or forward(self, videos)
    summary = run_tagging(TaggingJob(paths=videos, model=checkpoint, output=output,
                                     options=PredictOptions(device="cpu", workers=1, streams=1, batch_size=4)))
    return summary.ok


def test_predict_ranks_whose_shards_finish_far_apart_still_merge(tmp_path, tiny_checkpoint):
    # The group's collectives time out after 1 s here (torch's defaults: 10 and 30 minutes); rank 1
    # finishes its shard 3 s after rank 0, and rank 0 still waits for it and merges both shards.
    import json

    from synthetic import write_index_video

    (tmp_path / "v").mkdir()
    videos = [str(write_index_video(tmp_path / "v" / f"{i}.mp4", 8 + i)) for i in range(4)]
    out = tmp_path / "tags.jsonl"
    assert run_ranks(_tag_with_a_slow_rank, 2, str(tiny_checkpoint), videos, str(out), 3.0) == [2, 2]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(videos) and {r["status"] for r in records} == {"ok"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.jsonl", "v"]  # the rank parts are gone
