"""`stam finetune` / `stam evaluate` on a synthetic temporal-order dataset, on CPU.

left/right, up/down and grow/shrink clips hold the same frames up to order, so only the temporal
transformer can tell the two classes of a pair apart: a model that reaches high accuracy here
learned time; the same model trained on shuffled frames cannot.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from stamcli import create_model, load_checkpoint, save_checkpoint
from stamcli.cli import app
from stamcli.jobs import PredictOptions
from stamcli.train.config import FinetuneConfig
from stamcli.train.data import ClipDataset
from stamcli.train.finetune import finetune
from stamcli.train.modelling import NEW_MODEL_TEMPORAL
from conftest import REPO, interrupt_when, run_ranks
from synthetic import write_motion_dataset

runner = CliRunner()
CLASSES = ["down", "grow", "left", "right", "shrink", "up"]
EPOCHS = 20


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """(train.csv, val.csv, base checkpoint): a tiny STAM on 48 px frames, 8 frames per clip."""
    root = tmp_path_factory.mktemp("motion")
    # 8-frame clips and 8 sampled frames: every frame is used, so a pair's clips give the model
    # exactly the same frames (with longer clips, uniform sampling would pick different subsets)
    train = write_motion_dataset(root / "train", per_class=24, frames=8, size=48, seed=1)
    val = write_motion_dataset(root / "val", per_class=8, frames=8, size=48, seed=2)
    torch.manual_seed(0)
    base = create_model("vit_tiny_patch16_224", frames=8, num_classes=2, img_size=48, embed_dim=64, depth=2,
                        num_heads=2, temporal_layers=2, temporal_heads=4, temporal_ff=128, labels=["a", "b"])
    base_path = save_checkpoint(base, root / "base.safetensors")
    return train / "labels.csv", val / "labels.csv", base_path


def _config(motion, tmp_path, **overrides) -> FinetuneConfig:
    train, val, base = motion
    options = dict(data=str(train), val=str(val), model=str(base), epochs=12, batch_size=8, lr=2e-3, warmup=1,
                   label_smoothing=0.0, weight_decay=0.01, workers=0, seed=0, output=str(tmp_path / "run"),
                   device="cpu")
    options.update(overrides)
    return FinetuneConfig(**options)


def _new_temporal_head(motion, tmp_path, **overrides) -> FinetuneConfig:
    """The base checkpoint with a frozen backbone and a new model's temporal encoder (which replaces
    its own, so it trains from scratch), every training option at its default."""
    train, val, base = motion
    options = dict(data=str(train), val=str(val), model=str(base), freeze_backbone=True, epochs=EPOCHS,
                   workers=0, device="cpu", output=str(tmp_path / "run"))
    options.update(NEW_MODEL_TEMPORAL, **overrides)
    return FinetuneConfig(**options)


def test_temporal_order_is_learned_and_the_run_folder_is_complete(motion, tmp_path):
    # The temporal transformer is what must learn order: train it on cached frame embeddings of the
    # frozen (random) backbone, with the defaults for a temporal encoder that starts from scratch.
    result = finetune(_new_temporal_head(motion, tmp_path))
    run = result.run_dir
    # Order-blind, the classes come in time-reversed pairs: 1/2 at best. The authors' post-norm encoder
    # from scratch ended between 0.81 and 0.9 depending on the CPU's float kernels; the new default
    # head reaches 1.0 here (the bar leaves room for other kernels).
    assert result.best_top1 >= 0.9, f"validation top-1 {result.best_top1:.3f}"
    print(f"validation top-1 {result.best_top1:.3f}")
    assert sorted(p.name for p in run.iterdir()) == sorted([
        "best.safetensors", "last.safetensors", "last_state.pt", "config.yaml", "metrics.csv", "cache",
        "trained_parts.json",
        "training_curves.png", "val_report.json", "val_report_confusion.csv", "val_report_confusion.png",
        "val_report_misclassified.csv",
    ])
    assert len(list((run / "cache").glob("*.pt"))) == 2  # train and val embeddings, computed once
    parts = {p["name"]: p for p in json.loads((run / "trained_parts.json").read_text())["parts"]}
    assert [(p["start"], p["trained"], p["lr"]) for p in parts.values()] == [
        ("pretrained", False, None), ("scratch", True, 1e-3), ("scratch", True, 1e-3)]
    base, tuned = load_checkpoint(motion[2]), load_checkpoint(run / "last.safetensors")
    spatial = {k: v for k, v in base.state_dict().items() if k.startswith("spatial.")}
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in spatial.items())  # backbone frozen
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert max(float(r["val_top1"]) for r in rows) == pytest.approx(result.best_top1)
    report = json.loads((run / "val_report.json").read_text())
    assert report["videos"] == 48 and report["top1"] == pytest.approx(result.best_top1, abs=1e-6)
    best = load_checkpoint(run / "best.safetensors")
    assert best.labels == CLASSES and best.config.frames == 8
    assert best.provenance["data"].endswith("labels.csv")
    # the fine-tuned checkpoint works in `stam predict` and prints the user's labels
    out = tmp_path / "tags.jsonl"
    video = next((Path(motion[1]).parent / "left").glob("*.avi"))
    cli = runner.invoke(app, ["predict", str(video), "--model", str(run / "best.safetensors"), "-o", str(out), "-q",
                              "--device", "cpu"])
    assert cli.exit_code == 0, cli.output
    record = json.loads(out.read_text())
    assert {p["label"] for p in record["predictions"]} <= set(CLASSES)
    # and `stam evaluate` agrees with the run's own report
    cli = runner.invoke(app, ["evaluate", str(motion[1]), "--model", str(run / "best.safetensors"),
                              "-o", str(tmp_path / "eval.json"), "--device", "cpu"])
    assert cli.exit_code == 0, cli.output
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["top1"] == pytest.approx(report["top1"], abs=1e-6)
    assert len(evaluation["confusion"]) == 6 and sum(map(sum, evaluation["confusion"])) == 48


def test_without_temporal_order_the_pairs_are_at_chance(motion, tmp_path, monkeypatch):
    original = ClipDataset.__getitem__

    def shuffled(self, i):
        frames, label = original(self, i)
        order = torch.randperm(frames.shape[0], generator=torch.Generator().manual_seed(1000 + i))
        return frames[order], label

    monkeypatch.setattr(ClipDataset, "__getitem__", shuffled)
    result = finetune(_new_temporal_head(motion, tmp_path))
    # The motion axis is still visible (3 groups), the direction is not: chance within a pair
    # gives 1/2 overall. `best` is the maximum over 20 noisy validations, so it sits a bit higher.
    with open(result.run_dir / "metrics.csv", newline="") as handle:
        top1 = [float(row["val_top1"]) for row in csv.DictReader(handle)]
    assert len(top1) == EPOCHS
    assert result.best_top1 <= 0.7, f"best validation top-1 {result.best_top1:.3f} with shuffled frames"
    assert sum(top1[-10:]) / 10 <= 0.6, f"late validation top-1 {sum(top1[-10:]) / 10:.3f} with shuffled frames"


def test_resume_after_interrupt_gives_the_same_final_weights(motion, tmp_path):
    whole = finetune(_config(motion, tmp_path / "a", epochs=3, output=str(tmp_path / "a")))

    def stop_after_five_steps(run):
        if run.epoch == 1 and run.batches_done == 5:
            run.request_stop()

    interrupted = finetune(_config(motion, tmp_path / "b", epochs=3, output=str(tmp_path / "b")),
                           on_step=stop_after_five_steps)
    assert interrupted.interrupted and interrupted.epochs_done == 1
    resumed = finetune(resume=interrupted.run_dir)
    assert not resumed.interrupted and resumed.epochs_done == 3
    a = load_file(str(whole.run_dir / "last.safetensors"))
    b = load_file(str(resumed.run_dir / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    rows_a = (whole.run_dir / "metrics.csv").read_text().splitlines()
    rows_b = (resumed.run_dir / "metrics.csv").read_text().splitlines()
    strip = lambda rows: [",".join(r.split(",")[:-1]) for r in rows]  # noqa: E731 - drop the seconds column
    assert strip(rows_a) == strip(rows_b)
    # the saved optimiser holds each part's rate: the new head (other labels than the base) at 10x
    groups = torch.load(resumed.run_dir / "last_state.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [(g["part"], g["initial_lr"]) for g in groups] == [
        ("backbone", 2e-3), ("backbone", 2e-3), ("temporal", 2e-3), ("temporal", 2e-3), ("head", 2e-2), ("head", 2e-2)]


def test_a_run_folder_from_before_per_part_rates_resumes_as_it_was_started(motion, tmp_path, monkeypatch, caplog):
    """An earlier stamcli trained every part at --lr in two parameter groups, had no trained_parts.json
    and no temporal options in config.yaml. Such a folder resumes bit-exactly as that stamcli would
    have finished it."""
    import yaml

    from stamcli.train import finetune as finetune_module
    from stamcli.train.parts import legacy_param_groups

    def stop_after_five_steps(run):
        if run.epoch == 1 and run.batches_done == 5:
            run.request_stop()

    with monkeypatch.context() as old_stamcli:  # the earlier optimiser layout
        old_stamcli.setattr(finetune_module, "param_groups", lambda model, parts, wd: legacy_param_groups(model, wd))
        whole = finetune(_config(motion, tmp_path, epochs=3, output=str(tmp_path / "a")))
        interrupted = finetune(_config(motion, tmp_path, epochs=3, output=str(tmp_path / "b")),
                               on_step=stop_after_five_steps)
    run = interrupted.run_dir
    (run / "trained_parts.json").unlink()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("temporal_layers", "temporal_norm", "scratch_lr_scale"):
        del saved[key]
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    started = []
    with caplog.at_level(logging.WARNING, logger="stamcli"):
        resumed = finetune(resume=run, on_start=started.append)
    assert f"{run} was started by an earlier stamcli, without per-part learning rates" in caplog.text
    assert [(p.name, p.start, p.lr) for p in started[0]] == [
        ("backbone", "unknown", 2e-3), ("temporal", "unknown", 2e-3), ("head", "unknown", 2e-3)]
    assert not resumed.interrupted and resumed.epochs_done == 3
    a = load_file(str(whole.run_dir / "last.safetensors"))
    b = load_file(str(resumed.run_dir / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the earlier stamcli's"
    groups = torch.load(run / "last_state.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [2e-3, 2e-3] and all("part" not in g for g in groups)


def test_runs_never_overwrite_and_yaml_config_with_flags_winning(motion, tmp_path):
    train, val, base = motion
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {base}\nepochs: 1\nbatch-size: 16\nlr: 0.001\nworkers: 0\nval: {val}\ndevice: cpu\n"
                   "temporal-norm: pre\nscratch-lr-scale: 3\n")
    args = ["finetune", str(train), "--config", str(cfg), "--lr", "0.002", "-o", str(tmp_path / "run"),
            "--temporal-layers", "1", "--scratch-lr-scale", "5"]
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run", "run-2"]
    import yaml

    saved = yaml.safe_load((tmp_path / "run-2" / "config.yaml").read_text())
    assert saved["lr"] == 0.002 and saved["batch_size"] == 16 and saved["epochs"] == 1
    assert (saved["temporal_layers"], saved["temporal_norm"], saved["scratch_lr_scale"]) == (1, "pre", 5)
    # what trains is printed before training: a new 1-layer pre-norm encoder and head at 5 x 0.002
    lines = result.output.splitlines()
    table = lines[[line.split() for line in lines].index(["part", "params", "start", "trains", "lr"]):][:4]
    assert [line.split()[:1] + line.split()[2:] for line in table[1:]] == [
        ["backbone", "pretrained", "yes", "2.0e-03"], ["temporal", "scratch", "yes", "1.0e-02"],
        ["head", "scratch", "yes", "1.0e-02"]]
    assert load_checkpoint(tmp_path / "run-2" / "last.safetensors").config.temporal_norm == "pre"
    result = runner.invoke(app, ["finetune", "--resume", str(tmp_path / "run"), "--lr", "1"])
    assert result.exit_code == 2 and "drop: lr" in result.output


def test_bad_data_is_reported_before_training(tmp_path, motion):
    train = tmp_path / "bad.csv"
    good = next((Path(motion[0]).parent / "left").glob("*.avi"))
    train.write_text(f"path,label\n{good},left\nmissing.mp4,right\n{good},left\n,up\n")
    result = runner.invoke(app, ["finetune", str(train), "--model", str(motion[2]), "-o", str(tmp_path / "r"),
                                 "--device", "cpu"])
    assert result.exit_code == 1
    assert "missing.mp4" in result.output and "bad.csv:3" in result.output
    assert not (tmp_path / "r").exists()


def test_the_config_s_decoder_checks_the_data(tmp_path, motion):
    """A raw H.264 stream: OpenCV reads it, PyAV alone cannot (no timestamps)."""
    from stamcli.errors import StamError
    from synthetic import write_raw_h264

    train = tmp_path / "raw.csv"
    good = next((Path(motion[0]).parent / "left").glob("*.avi"))
    train.write_text(f"path,label\n{good},left\n{write_raw_h264(tmp_path / 'raw.h264', 8)},right\n")
    config = FinetuneConfig(data=str(train), model=str(motion[2]), output=str(tmp_path / "r"), device="cpu",
                            decoder="pyav")
    with pytest.raises(StamError, match=r"raw\.h264: unreadable video: PyAV cannot read it exactly"):
        finetune(config)
    assert not (tmp_path / "r").exists()


def test_distributed_training_with_torchrun_on_cpu(motion, tmp_path):
    train, val, base = motion
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "stamcli", "finetune", str(train), "--val", str(val), "--model", str(base), "--epochs", "2",
               "--batch-size", "8", "--workers", "0", "-o", str(out), "--lr", "0.002", "--device", "cpu",
               "--temporal-norm", "pre", "--temporal-input-norm"]  # a new encoder, with BatchNorm under DDP
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    best = load_checkpoint(out / "best.safetensors")
    assert best.labels == CLASSES and (best.config.temporal_norm, best.config.temporal_input_norm) == ("pre", True)
    last = load_checkpoint(out / "last.safetensors").temporal.input_norm
    assert last.num_batches_tracked.item() == 2 * 9  # 2 epochs x (144 clips / 2 ranks / 8): rank 0's statistics
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one folder, written by rank 0 only


def test_new_model_on_a_timm_backbone_with_local_backbone_weights(tmp_path):
    import timm

    from stamcli import CheckpointError
    from stamcli.train.modelling import build_model

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")  # a timm checkpoint (with its ImageNet head)
    config = FinetuneConfig(data="unused.csv", model="vit_tiny_patch16_224", frames=4, img_size=32,
                            backbone_weights=str(tmp_path / "vit.pth"))
    with pytest.raises(CheckpointError, match=r"does not fit backbone vit_tiny_patch16_224: missing \['blocks.2"):
        build_model(config, ["a", "b"])  # the backbone has 12 blocks, the file 2
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    torch.save(full.state_dict(), tmp_path / "vit.pth")
    model = build_model(config, ["a", "b"]).model
    assert model.labels == ["a", "b"] and model.config.frames == 4 and model.config.img_size == 32
    for key, value in full.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.spatial.state_dict()[key], value), key
    with pytest.raises(CheckpointError) as raised:
        build_model(FinetuneConfig(data="x", model="vit_tiny_patch16_224", backbone_weights=str(tmp_path / "nope.pth")),
                    ["a"])
    assert type(raised.value) is CheckpointError
    assert str(raised.value) == f"backbone weights not found: {tmp_path / 'nope.pth'}"


def test_real_ctrl_c_saves_last_and_resume_finishes_the_run(motion, tmp_path):
    train, val, base = motion
    out = tmp_path / "run"
    # 18 steps an epoch (144 clips, batch 8): Ctrl-C right after step 3 of epoch 2 (the 21st step's stop check)
    stderr = interrupt_when(["finetune", str(train), "--val", str(val), "--model", str(base), "--epochs", "3",
                             "--workers", "0", "--device", "cpu", "-o", str(out)],
                            hold=("stamcli.train.finetune:_Run._stop_agreed", 21))
    assert "stopping after this step and saving 'last'" in stderr  # the step finishes, `last` is saved
    assert f"stam finetune --resume {out}" in " ".join(stderr.split())
    state = torch.load(out / "last_state.pt", weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (1, 3)
    assert load_checkpoint(out / "last.safetensors").labels == CLASSES
    result = runner.invoke(app, ["finetune", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "metrics.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3]


def test_evaluate_lists_unreadable_videos_and_rejects_unknown_labels(motion, tmp_path):
    from stamcli import StamError
    from stamcli.train.evaluate import evaluate

    model = load_checkpoint(motion[2])
    model.reset_head(CLASSES)
    good = sorted((Path(motion[1]).parent / "left").glob("*.avi"))[:2]
    broken = tmp_path / "broken.avi"
    broken.write_text("not a video")
    data = tmp_path / "eval.csv"
    data.write_text("".join(f"{p},left\n" for p in good) + f"{broken},up\n")
    report = evaluate(data, model, PredictOptions(device="cpu"), output=tmp_path / "r.json")
    assert report["videos"] == 2 and [f["path"] for f in report["failed"]] == [str(broken)]
    assert "cannot read video" in report["failed"][0]["error"]
    assert json.loads((tmp_path / "r.json").read_text())["failed"] == report["failed"]
    data.write_text(f"{good[0]},jumping\n")
    with pytest.raises(StamError, match=r"labels in .*eval.csv that the model does not know: jumping"):
        evaluate(data, model, PredictOptions(device="cpu"))


def test_new_run_dir_skips_taken_names_including_files(tmp_path):
    from stamcli.train.config import new_run_dir

    (tmp_path / "run").write_text("a file, not a run")
    (tmp_path / "run-2").mkdir()
    (tmp_path / "run-2" / "metrics.csv").write_text("epoch\n")
    (tmp_path / "run-3").mkdir()  # empty: reused
    assert new_run_dir(FinetuneConfig(data="d.csv", output=str(tmp_path / "run"))) == tmp_path / "run-3"


def test_fp16_scales_the_loss_and_skips_a_step_whose_gradients_overflowed(motion, tmp_path, monkeypatch):
    # Without loss scaling one overflow gives inf gradients, which clipping turns into NaN weights
    # for good. fp16 is for GPUs; CPU autocast computes it too, so the run is forced to fp16 here.
    import stamcli.train.finetune as finetune_module

    monkeypatch.setattr(finetune_module, "resolve_precision", lambda precision, device: "fp16")
    scales = []

    def overflow_in_step_two(run):
        scales.append(run.scaler.get_scale())
        if run.batches_done == 1:
            weight = run.model.head.weight
            hook = weight.register_hook(lambda grad: (hook.remove(), torch.full_like(grad, float("inf")))[1])

    folder = Path(motion[0]).parent
    rows = Path(motion[0]).read_text().splitlines()[1::6][:24]
    data = tmp_path / "few.csv"  # 3 steps of 8 (CPU fp16 is slow), no validation
    data.write_text("".join(f"{folder / row}\n" for row in rows))
    config = _config(motion, tmp_path, data=str(data), val=None, val_split=0, epochs=1, clip_grad=1.0)
    result = finetune(config, on_step=overflow_in_step_two)
    assert scales[:2] == [65536.0, 32768.0]  # the overflowing step was skipped and the scale halved
    weights = load_file(str(result.run_dir / "last.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert math.isfinite(float(next(csv.DictReader(open(result.run_dir / "metrics.csv")))["train_loss"]))
    state = torch.load(result.run_dir / "last_state.pt", weights_only=True)
    assert state["scaler"]["scale"] == scales[-1]  # resumed runs go on with the same scale


def test_resume_state_holds_the_gpu_rng_too(monkeypatch):
    from stamcli.train.finetune import restore_rng_state, rng_state

    gpu = torch.device("cuda:1")
    gpu_state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: gpu_state.clone() if device == gpu else None)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    cpu_state = torch.get_rng_state()
    state = rng_state(gpu)
    assert torch.equal(state["torch_rng"], cpu_state) and torch.equal(state["cuda_rng"], gpu_state)
    torch.rand(5)  # the CPU generator moves on
    restore_rng_state(state, gpu)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert len(restored) == 1 and torch.equal(restored[0][0], gpu_state) and restored[0][1] == gpu
    assert set(rng_state(torch.device("cpu"))) == {"torch_rng"}


def _cache_on_each_rank(model_path: str, train: str, val: str, cache_dir: str) -> tuple:
    from stamcli.distributed import Distributed
    from stamcli.train.data import read_examples
    from stamcli.train.embeddings import cached_embeddings

    decoded = []
    real = ClipDataset.__getitem__
    ClipDataset.__getitem__ = lambda self, i: decoded.append(self.examples[i].path) or real(self, i)
    train_examples, val_examples = read_examples(train)[:9], read_examples(val)[:4]
    train_set, val_set = cached_embeddings(
        load_checkpoint(model_path), train_examples, val_examples, {c: i for i, c in enumerate(CLASSES)},
        Path(cache_dir), device=torch.device("cpu"), precision="fp32", batch_size=4, workers=0,
        dist=Distributed.from_env())
    # numpy arrays: a child's tensors would travel as shared memory, gone when the child exits
    return (decoded, train_set.tensors[0].numpy(), val_set.tensors[0].numpy(),
            sorted(p.name for p in Path(cache_dir).iterdir()))


def test_frozen_backbone_cache_is_shared_between_ranks(motion, tmp_path):
    # Under torchrun each rank embeds every N-th video (no rank waits for one that does it all)
    # and the cache is the one a single process computes.
    train, val, base = motion
    ranks = run_ranks(_cache_on_each_rank, 2, str(base), str(train), str(val), str(tmp_path / "ddp"))
    alone = _cache_on_each_rank(str(base), str(train), str(val), str(tmp_path / "one"))
    from stamcli.train.data import read_examples

    train_paths, val_paths = [e.path for e in read_examples(train)[:9]], [e.path for e in read_examples(val)[:4]]
    assert ranks[0][0] == train_paths[0::2] + val_paths[0::2] and ranks[1][0] == train_paths[1::2] + val_paths[1::2]
    for decoded, train_cache, val_cache, files in ranks:
        assert (train_cache == alone[1]).all() and (val_cache == alone[2]).all()
        assert train_cache.shape == alone[1].shape == (9, 8, 64) and val_cache.shape == alone[2].shape == (4, 8, 64)
        assert files == alone[3] and len(files) == 2  # the joined caches; the rank parts are gone
