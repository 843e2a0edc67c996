"""stamcli.train.config: option checks, defaults < YAML file < flags, the saved config of a run,
and run folder names."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from stamcli.errors import StamError, UsageError
from stamcli.train.config import (FinetuneConfig, load_run_config, new_run_dir, read_config_file, resolve_config,
                                  save_config)


BAD_OPTIONS = [
    ("data", "", "no training data given"),
    ("epochs", 0, "--epochs must be at least 1"),
    ("batch_size", 0, "--batch-size must be at least 1"),
    ("grad_accum", 0, "--grad-accum must be at least 1"),
    ("frames", 0, "--frames must be at least 1"),
    ("img_size", -1, "--img-size must be at least 1"),
    ("val_split", 1.0, r"--val-split must be in \[0, 1\)"),
    ("val_split", -0.1, r"--val-split must be in \[0, 1\)"),
    ("lr", 0.0, "--lr must be > 0"),
    ("weight_decay", -0.1, "--weight-decay and --warmup >= 0"),
    ("warmup", -1.0, "--weight-decay and --warmup >= 0"),
    ("label_smoothing", 1.0, r"--label-smoothing in \[0, 1\)"),
    ("workers", -1, "--workers, --patience and --clip-grad must be >= 0"),
    ("patience", -1, "--workers, --patience and --clip-grad must be >= 0"),
    ("clip_grad", -0.5, "--workers, --patience and --clip-grad must be >= 0"),
    ("decoder", "ffmpeg", "ffmpeg"),
]


def test_each_bad_option_is_a_usage_error():
    for field, value, message in BAD_OPTIONS:
        config = FinetuneConfig(**{"data": "train.csv", field: value})
        with pytest.raises(UsageError, match=message):
            config.check()


def test_the_edges_of_the_valid_ranges_pass():
    FinetuneConfig(data="d.csv", val_split=0.0, weight_decay=0.0, warmup=0.0, label_smoothing=0.0, workers=0,
                   patience=0, clip_grad=0.0, epochs=1, batch_size=1, grad_accum=1, frames=1, img_size=1).check()


def test_flags_win_over_the_file_which_wins_over_the_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: from_file.csv\nbatch-size: 4\nlr: 0.01\nweight_decay: 0.2\n", encoding="utf-8")
    config = resolve_config({"lr": 0.5, "epochs": None, "batch-size": None, "clip_grad": 0.0}, path)
    assert (config.data, config.batch_size, config.lr, config.weight_decay) == ("from_file.csv", 4, 0.5, 0.2)
    assert config.epochs == FinetuneConfig().epochs  # a flag left out (None) keeps the file's or the default
    assert config.clip_grad == 0.0  # a falsy flag that was given still wins
    without_file = resolve_config({"data": "d.csv"})
    assert dataclasses.asdict(without_file) == dataclasses.asdict(FinetuneConfig(data="d.csv"))
    with pytest.raises(UsageError, match="--epochs must be at least 1"):  # the merged result is checked
        resolve_config({"epochs": 0}, path)


def test_config_file_errors_are_one_line(tmp_path):
    with pytest.raises(StamError, match="config file not found"):
        read_config_file(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: [1\n", encoding="utf-8")
    with pytest.raises(StamError, match=r"cannot read config file .*bad\.yaml: "):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(StamError, match="must hold a mapping of option: value"):
        read_config_file(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("epoch: 3\n", encoding="utf-8")
    with pytest.raises(StamError, match=r"typo\.yaml: unknown option 'epoch'; valid options: .*epochs"):
        read_config_file(tmp_path / "typo.yaml")
    with pytest.raises(StamError, match="flags: unknown option 'speed'"):
        resolve_config({"data": "d.csv", "speed": 2})
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    assert read_config_file(tmp_path / "empty.yaml") == {}


def test_a_run_s_saved_config_reads_back_equal(tmp_path):
    config = FinetuneConfig(data="train.csv", val="val.csv", epochs=3, lr=3e-4, freeze_backbone=True, patience=2,
                            decoder="opencv", frames=4)
    path = save_config(config, tmp_path)
    assert path == tmp_path / "config.yaml"
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["lr"] == 3e-4
    assert load_run_config(tmp_path) == config
    with pytest.raises(StamError, match="is not a stamcli fine-tuning run"):
        load_run_config(tmp_path / "elsewhere")


def test_run_folder_default_name_comes_from_the_data_or_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = new_run_dir(FinetuneConfig(data="my clips (v2).csv"))
    assert first == tmp_path.joinpath("runs", "finetune", "my_clips_v2_").relative_to(tmp_path)
    (first / "x").write_text("taken")
    assert new_run_dir(FinetuneConfig(data="my clips (v2).csv")).name == "my_clips_v2_-2"
    assert new_run_dir(FinetuneConfig(data="d.csv", name="exp")) == first.parent / "exp"
    empty = tmp_path / "out"
    empty.mkdir()
    assert new_run_dir(FinetuneConfig(data="d.csv", output=str(empty))) == empty  # an empty folder is reused
