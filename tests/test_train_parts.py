"""What a fine-tuning run trains from which start at which learning rate (stamcli/train/parts.py),
for every starting point that stamcli/train/modelling.py builds."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES, TINY_LABELS, make_tiny_model
from stamcli import save_checkpoint
from stamcli.train.config import FinetuneConfig
from stamcli.train.modelling import NEW_MODEL_TEMPORAL, build_model
from stamcli.train.parts import (PARTS_FILE, TrainedPart, legacy_param_groups, load_parts, param_groups,
                                 parts_table, plan_parts, save_parts)

LR, SCALE = 2e-4, 10.0


def _start(model: str, labels, **options):
    config = FinetuneConfig(data="unused.csv", model=model, lr=LR, scratch_lr_scale=SCALE, **options)
    start = build_model(config, labels)
    parts = plan_parts(start.model, start.scratch, lr=LR, scratch_lr_scale=SCALE,
                       freeze_backbone=config.freeze_backbone)
    return start.model, {p.name: (p.start, p.trained, p.lr) for p in parts}, parts


def test_a_new_model_starts_from_scratch_with_the_measured_temporal_encoder(tmp_path):
    model, plan, _ = _start("vit_tiny_patch16_224", ["a", "b"], frames=4, img_size=32)
    assert {name: getattr(model.config, name) for name in NEW_MODEL_TEMPORAL} == NEW_MODEL_TEMPORAL
    assert NEW_MODEL_TEMPORAL["temporal_norm"] == "pre" and NEW_MODEL_TEMPORAL["temporal_input_norm"]
    assert isinstance(model.temporal.input_norm, torch.nn.BatchNorm1d)
    assert plan == {"backbone": ("scratch", True, LR * SCALE), "temporal": ("scratch", True, LR * SCALE),
                    "head": ("scratch", True, LR * SCALE)}
    # with local backbone weights the backbone is pretrained; frozen, it has no rate
    import timm

    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32).state_dict(), tmp_path / "vit.pth")
    _, plan, _ = _start("vit_tiny_patch16_224", ["a", "b"], frames=4, img_size=32,
                        backbone_weights=str(tmp_path / "vit.pth"))
    assert plan["backbone"] == ("pretrained", True, LR)
    _, plan, _ = _start("vit_tiny_patch16_224", ["a", "b"], frames=4, img_size=32, freeze_backbone=True,
                        temporal_layers=3, temporal_norm="post", temporal_input_norm=False)
    assert plan == {"backbone": ("scratch", False, None), "temporal": ("scratch", True, LR * SCALE),
                    "head": ("scratch", True, LR * SCALE)}


def test_a_checkpoint_keeps_its_encoder_and_its_head_for_the_same_labels(tmp_path):
    path = save_checkpoint(make_tiny_model(seed=2), tmp_path / "tiny.safetensors")
    model, plan, _ = _start(str(path), TINY_LABELS)
    assert (model.config.temporal_layers, model.config.temporal_norm) == (1, "post")
    assert plan == {"backbone": ("pretrained", True, LR), "temporal": ("pretrained", True, LR),
                    "head": ("pretrained", True, LR)}
    _, plan, _ = _start(str(path), ["open", "close"])  # new labels: a new head
    assert plan["head"] == ("scratch", True, LR * SCALE) and plan["temporal"] == ("pretrained", True, LR)
    # asking for another encoder replaces it with a new one, trained from scratch
    before = model.spatial.state_dict()
    model, plan, _ = _start(str(path), TINY_LABELS, temporal_norm="pre")
    assert (model.config.temporal_layers, model.config.temporal_norm) == (1, "pre")
    assert model.temporal.transformer_enc.layers[0].norm_first and model.temporal.input_norm is None
    assert plan["temporal"] == ("scratch", True, LR * SCALE) and plan["head"] == ("pretrained", True, LR)
    assert all(torch.equal(v, model.spatial.state_dict()[k]) for k, v in before.items())
    model, plan, _ = _start(str(path), TINY_LABELS, temporal_layers=1, temporal_norm="post",
                            temporal_input_norm=False)  # its own: kept
    assert plan["temporal"] == ("pretrained", True, LR)


def test_the_authors_checkpoint_keeps_the_authors_encoder_exactly():
    official = FIXTURES / "stam_tiny_official.pth"  # what a zoo model is, in small
    model, plan, _ = _start(str(official), [f"class_{i}" for i in range(10)])
    assert (model.config.temporal_layers, model.config.temporal_norm) == (2, "post")
    assert plan["temporal"] == ("pretrained", True, LR) and plan["head"] == ("pretrained", True, LR)
    _, plan, _ = _start(str(official), ["a", "b"], freeze_backbone=True)
    assert plan == {"backbone": ("pretrained", False, None), "temporal": ("pretrained", True, LR),
                    "head": ("scratch", True, LR * SCALE)}


def test_param_groups_give_each_trained_part_its_rate_and_skip_frozen_parts():
    model = make_tiny_model(seed=1)
    model.spatial.requires_grad_(False)
    parts = plan_parts(model, {"head"}, lr=LR, scratch_lr_scale=SCALE, freeze_backbone=True)
    groups = param_groups(model, parts, weight_decay=0.05)
    assert [(g["part"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("temporal", LR, 0.05), ("temporal", LR, 0.0), ("head", LR * SCALE, 0.05), ("head", LR * SCALE, 0.0)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # each parameter in one group
    assert set(grouped) == {id(p) for p in [*model.temporal.parameters(), *model.head.parameters()]}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "temporal.cls_token" in no_decay and "temporal.pos_embed" in no_decay and "head.bias" in no_decay
    assert not any(n.endswith(("in_proj_weight", "linear1.weight", "head.weight")) for n in no_decay)
    optimizer = torch.optim.AdamW(groups, lr=LR)
    assert [g["lr"] for g in optimizer.param_groups] == [LR, LR, LR * SCALE, LR * SCALE]
    # the layout of stamcli before per-part rates: two groups over the trainable module, one rate
    legacy = legacy_param_groups(model, 0.05)
    assert [g["weight_decay"] for g in legacy] == [0.05, 0.0] and all("lr" not in g for g in legacy)
    assert {id(p) for g in legacy for p in g["params"]} == set(grouped)


def test_report_table_and_file_round_trip(tmp_path):
    parts = [TrainedPart("backbone", 5_524_416, "pretrained", False, None),
             TrainedPart("temporal", 1_247_424, "scratch", True, 1e-3),
             TrainedPart("head", 1_158, "scratch", True, 1e-3)]
    assert parts_table(parts).splitlines() == [
        "part      params  start       trains  lr",
        "backbone  5.5M    pretrained  frozen  -",
        "temporal  1.2M    scratch     yes     1.0e-03",
        "head      1.2K    scratch     yes     1.0e-03",
    ]
    path = save_parts(parts, tmp_path, scratch_lr_scale=10.0)
    assert path == tmp_path / PARTS_FILE
    saved = json.loads(path.read_text())
    assert saved["scratch_lr_scale"] == 10.0
    assert saved["parts"][1] == {"name": "temporal", "parameters": 1_247_424, "start": "scratch", "trained": True,
                                 "lr": 1e-3}
    assert load_parts(tmp_path) == parts
    assert load_parts(tmp_path / "elsewhere") is None  # a run folder from before per-part rates
    path.write_text("{not json")
    with pytest.raises(Exception, match=r"cannot read .*trained_parts.json .*the run folder is damaged"):
        load_parts(tmp_path)
