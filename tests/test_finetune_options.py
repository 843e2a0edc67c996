"""What `stam finetune`'s options promise, checked on real (tiny, CPU) runs.

Every run here trains a tiny STAM (4 frames of 32 px) for one to three epochs on 24 generated clips;
what is checked is the optimiser's behaviour: the steps it takes, the learning rate of each step, the
gradient norm it sees, what it decays, when the run stops, and that a run interrupted by a real
Ctrl-C and resumed ends with the very weights of an uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from stamcli import create_model, save_checkpoint
from stamcli.train import embeddings as embeddings_module
from stamcli.train.config import FinetuneConfig
from stamcli.train.finetune import STATE_FILE, _param_groups, finetune
from conftest import CHILD_ENV
from gate import ctrl_c_at
from synthetic import MOTION_CLASSES, write_motion_dataset

CLASSES = sorted(MOTION_CLASSES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train.csv with 4 clips per class, val.csv with 1, a tiny base checkpoint without dropout)."""
    root = tmp_path_factory.mktemp("options")
    train = write_motion_dataset(root / "train", per_class=4, frames=4, size=32, seed=1)
    val = write_motion_dataset(root / "val", per_class=1, frames=4, size=32, seed=2)
    torch.manual_seed(0)
    # no dropout: a step's result then depends only on its batch (grad-accum equivalence below)
    base = create_model("vit_tiny_patch16_224", frames=4, num_classes=2, img_size=32, embed_dim=64, depth=1,
                        num_heads=2, temporal_layers=1, temporal_heads=4, temporal_ff=128, temporal_dropout=0.0,
                        labels=["a", "b"])
    return train / "labels.csv", val / "labels.csv", save_checkpoint(base, root / "base.safetensors")


def _config(data, out: Path, **overrides) -> FinetuneConfig:
    train, val, base = data
    options = dict(data=str(train), val=str(val), model=str(base), epochs=2, batch_size=8, lr=1e-3, warmup=1,
                   weight_decay=0.05, label_smoothing=0.0, workers=0, seed=0, device="cpu", freeze_backbone=True,
                   output=str(out))
    options.update(overrides)
    return FinetuneConfig(**options)


class StepSpy:
    """Every optimiser step as the optimiser sees it: each group's lr and weight decay, and the
    total norm of the gradients it is about to apply."""

    def __init__(self):
        self.steps: list[dict] = []

    def __call__(self, optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.steps.append({
            "lr": [group["lr"] for group in optimizer.param_groups],
            "weight_decay": [group["weight_decay"] for group in optimizer.param_groups],
            "grad_norm": torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item(),
        })


@pytest.fixture
def no_plots(monkeypatch):
    """Leave out the run's PNG curves and its final evaluation report (tested in test_finetune.py
    and test_train_evaluate.py): seconds of matplotlib that say nothing about the optimiser."""
    from stamcli.train import finetune as finetune_module
    from stamcli.train.metrics import MetricsLog

    monkeypatch.setattr(MetricsLog, "plot_if_due", lambda *args, **kwargs: None)
    monkeypatch.setattr(finetune_module, "_final_report", lambda run: None)


@pytest.fixture
def spy(no_plots):
    spy = StepSpy()
    handle = register_optimizer_step_pre_hook(spy)
    yield spy
    handle.remove()


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"{name}.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ------------------------------------------------------------------ schedule and optimiser

def test_warmup_then_cosine_learning_rate_at_every_step(data, tmp_path, spy):
    # 24 clips, batch 8: 3 steps an epoch; 3 epochs = 9 steps, the first 3 (--warmup 1) warming up
    result = finetune(_config(data, tmp_path / "run", epochs=3, lr=1e-3))
    lr, warmup, total = 1e-3, 3, 9
    expected = [lr * (s + 1) / warmup if s < warmup else lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
                for s in range(total)]
    assert len(spy.steps) == total
    for step, want in zip(spy.steps, expected):
        assert step["lr"] == pytest.approx([want, want], rel=1e-9)
    # metrics.csv logs the rate in effect at each epoch's end: the one the next step would use
    logged = [float(row["lr"]) for row in _metrics(result.run_dir)]
    after = [lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in (3, 6, 9)]
    assert logged == pytest.approx(after, rel=1e-6, abs=1e-12)


def test_fractional_warmup_rounds_to_steps(data, tmp_path, spy):
    finetune(_config(data, tmp_path / "run", epochs=1, warmup=0.5, lr=1e-3))  # 0.5 x 3 steps -> 2 warm-up steps
    assert [step["lr"][0] for step in spy.steps] == pytest.approx([0.5e-3, 1e-3, 1e-3], rel=1e-9)


def test_no_weight_decay_on_biases_norms_tokens_and_position_embeddings(data, tmp_path, spy):
    model = create_model("vit_tiny_patch16_224", frames=4, num_classes=3, img_size=32, embed_dim=64, depth=1,
                         num_heads=2, temporal_layers=1, temporal_heads=4, temporal_ff=128)
    groups = _param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.05, 0.0)
    assert decayed | plain == set(names.values()) and not decayed & plain
    for name, param in model.named_parameters():
        expect_plain = param.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        assert (name in plain) == expect_plain, name
    # the kinds the docstring names are all there, and every decayed tensor is a matrix
    assert any(n.endswith(".bias") for n in plain) and any("norm" in n for n in plain)
    assert any(n.endswith("pos_embed") for n in plain) and any(n.endswith("cls_token") for n in plain)
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)

    # a real run's optimiser: a frozen backbone leaves only the temporal part and head in its groups
    seen = {}

    def groups_of_run(run):
        names = {id(p): n for n, p in run.trainable.named_parameters()}
        seen["groups"] = [(g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                          for g in run.optimizer.param_groups]
        run.request_stop()

    finetune(_config(data, tmp_path / "run", weight_decay=0.3), on_step=groups_of_run)
    (decay, decayed), (no_decay, plain) = seen["groups"]
    assert (decay, no_decay) == (0.3, 0.0)
    assert decayed and plain and all("bias" not in n and "norm" not in n for n in decayed)
    assert {n for n in plain if n.endswith(".weight")} <= {n for n in plain if "norm" in n}
    assert not any(n.startswith("spatial") for n in decayed + plain)
    assert spy.steps[0]["weight_decay"] == [0.3, 0.0]


def test_grad_accum_takes_one_step_per_n_batches_like_a_batch_n_times_larger(data, tmp_path, spy):
    # no clipping: the gradients the optimiser gets are compared as they are (AdamW alone would
    # hide a gradient off by a constant factor)
    accumulated = finetune(_config(data, tmp_path / "accum", batch_size=4, grad_accum=2, clip_grad=0))
    accumulated_norms = [step["grad_norm"] for step in spy.steps]
    large = finetune(_config(data, tmp_path / "large", batch_size=8, clip_grad=0))
    large_norms = [step["grad_norm"] for step in spy.steps[len(accumulated_norms):]]
    assert len(accumulated_norms) == len(large_norms) == 2 * 3  # 6 batches of 4 an epoch, a step every 2
    assert accumulated_norms == pytest.approx(large_norms, rel=1e-4)
    a, b = _weights(accumulated.run_dir), _weights(large.run_dir)
    start = load_file(str(data[2]))
    temporal = [k for k in start if k.startswith("temporal.")]
    moved = max((a[k] - start[k]).abs().max().item() for k in temporal)
    same = _max_diff(a, b)
    assert moved > 1e-4  # 6 steps of lr 1e-3 moved the temporal weights ...
    assert same < moved / 100, f"batch 4 x 2 differs from batch 8 by {same} (training moved {moved})"


def test_grad_accum_steps_on_a_last_short_group(data, tmp_path, spy):
    finetune(_config(data, tmp_path / "run", epochs=1, batch_size=4, grad_accum=4))  # 6 batches: steps after 4 and 6
    assert len(spy.steps) == 2


def test_clip_grad_bounds_the_norm_the_optimiser_applies(data, tmp_path, spy):
    finetune(_config(data, tmp_path / "free", epochs=1, clip_grad=0))
    free = [s["grad_norm"] for s in spy.steps]
    limit = min(free) / 4
    assert limit > 0
    finetune(_config(data, tmp_path / "clipped", epochs=1, clip_grad=limit))
    clipped = [s["grad_norm"] for s in spy.steps[len(free):]]
    assert len(clipped) == len(free) == 3
    assert all(norm == pytest.approx(limit, rel=1e-4) for norm in clipped), (clipped, limit)


# ------------------------------------------------------------------ stopping, validation split

def test_patience_stops_after_epochs_without_improvement(data, tmp_path, no_plots):
    # a rate far below float32's resolution: the weights cannot change, so the validation result of
    # epoch 1 is never beaten
    rows = []
    result = finetune(_config(data, tmp_path / "p1", epochs=5, lr=1e-30, patience=2), on_epoch=rows.append)
    assert result.stopped_early and not result.interrupted
    assert result.epochs_done == 3 and result.best_epoch == 1
    assert [int(r["epoch"]) for r in _metrics(result.run_dir)] == [1, 2, 3]
    assert len({row["val_loss"] for row in rows}) == 1  # nothing improved indeed
    never = finetune(_config(data, tmp_path / "p0", epochs=2, lr=1e-30, patience=0))
    assert not never.stopped_early and never.epochs_done == 2


def test_val_split_holds_out_a_stratified_share_and_zero_means_no_validation(data, tmp_path):
    seen = {}

    def capture(run):
        seen["train"] = [e.path for e in run.train_set.examples]
        seen["val"] = [(e.path, e.label) for e in run.val_examples]
        seen["train_size"] = len(run.train_set)
        run.request_stop()

    finetune(_config(data, tmp_path / "split", val=None, val_split=0.25, freeze_backbone=False), on_step=capture)
    held = seen["val"]
    assert sorted(label for _, label in held) == CLASSES  # 1 of each class's 4 clips
    assert seen["train_size"] == 18 and len({p for p, _ in held}) == 6
    assert not {p for p, _ in held} & set(seen["train"])
    result = finetune(_config(data, tmp_path / "none", val=None, val_split=0.0, epochs=1))
    row = _metrics(result.run_dir)[0]
    assert math.isnan(float(row["val_top1"])) and math.isnan(float(row["val_loss"]))
    assert result.best_epoch == 1 and (result.run_dir / "best.safetensors").exists()
    assert not (result.run_dir / "val_report.json").exists()


# ------------------------------------------------------------------ resume

def test_resume_reuses_the_frozen_backbone_cache_without_running_the_backbone(data, tmp_path, monkeypatch, no_plots):
    def stop_in_epoch_two(run):
        if run.epoch == 1 and run.batches_done == 1:
            run.request_stop()

    first = finetune(_config(data, tmp_path / "run"), on_step=stop_in_epoch_two)
    assert first.interrupted
    cache = sorted((first.run_dir / "cache").iterdir())
    assert [p.name.split("-")[0] for p in cache] == ["train", "val"]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache}

    def no_backbone(*args, **kwargs):
        raise AssertionError("the frame embeddings were computed again")

    monkeypatch.setattr(embeddings_module, "_embed", no_backbone)
    resumed = finetune(resume=first.run_dir)
    assert not resumed.interrupted and resumed.epochs_done == 2
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (first.run_dir / "cache").iterdir()}
    assert after == before


def test_resume_after_a_real_ctrl_c_gives_the_uninterrupted_run_s_weights(data, tmp_path):
    train, val, base = data
    env = dict(CHILD_ENV, OMP_NUM_THREADS="1")
    args = ["finetune", train, "--val", val, "--model", base, "--epochs", "2", "--batch-size", "8", "--lr", "0.001",
            "--workers", "0", "--device", "cpu", "--label-smoothing", "0"]
    whole = tmp_path / "whole"
    uninterrupted = subprocess.Popen([sys.executable, "-m", "stamcli", *map(str, args), "-o", str(whole)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    # meanwhile: Ctrl-C just before the 5th optimiser step (the 2nd of epoch 2); that step finishes, `last` is saved
    out = tmp_path / "cut"
    stderr = ctrl_c_at("step:5", tmp_path / "go", [*args, "-o", out], env=env)
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()[-2000:]
    assert f"stam finetune --resume {out}" in " ".join(stderr.split())
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (1, 2)
    resumed = subprocess.run([sys.executable, "-m", "stamcli", "finetune", "--resume", str(out)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(whole), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_metrics(whole)) == strip(_metrics(out))
