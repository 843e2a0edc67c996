"""stamcli.train.modelling: the model a fine-tuning run starts from (a checkpoint, continued or with
a new head; a new model on a timm backbone), at the frames and input size asked for."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_LABELS, make_tiny_model
from stamcli import CheckpointError, StamError, save_checkpoint
from stamcli.train.config import FinetuneConfig
from stamcli.train.modelling import NEW_MODEL_FRAMES, NEW_MODEL_IMG_SIZE, build_model


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(make_tiny_model(seed=3), tmp_path / "tiny.safetensors")


def _config(model, **overrides) -> FinetuneConfig:
    return FinetuneConfig(data="unused.csv", model=str(model), **overrides)


def test_a_checkpoint_with_the_same_labels_continues_with_its_head(checkpoint):
    original = make_tiny_model(seed=3)
    model = build_model(_config(checkpoint), TINY_LABELS)
    assert model.training and model.labels == TINY_LABELS
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_new_labels_get_a_new_head_and_keep_the_rest(checkpoint):
    original = make_tiny_model(seed=3)
    model = build_model(_config(checkpoint), ["x", "y", "z"])
    assert model.labels == ["x", "y", "z"] and model.config.num_classes == 3
    assert model.head.weight.shape[0] == 3
    kept = {k: v for k, v in original.state_dict().items() if not k.startswith("head.")}
    for key, value in kept.items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 4, 3, 32, 32)).shape == (1, 3)
    # the same labels in another order are other classes: a new head too
    reordered = build_model(_config(checkpoint), list(reversed(TINY_LABELS)))
    assert reordered.labels == list(reversed(TINY_LABELS))
    assert not torch.equal(reordered.head.weight, original.head.weight)


def test_frames_and_input_size_are_changed_when_asked(checkpoint):
    model = build_model(_config(checkpoint, frames=6, img_size=48), TINY_LABELS)
    assert (model.config.frames, model.config.img_size) == (6, 48)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 6, 3, 48, 48)).shape == (2, 5)
    same = build_model(_config(checkpoint), TINY_LABELS)
    assert (same.config.frames, same.config.img_size) == (4, 32)


def test_a_timm_name_makes_a_new_model_with_the_labels():
    model = build_model(_config("vit_tiny_patch16_224", frames=2, img_size=32), ["a", "b"])
    assert model.labels == ["a", "b"] and model.config.backbone == "vit_tiny_patch16_224"
    assert (model.config.frames, model.config.img_size) == (2, 32) and model.training
    default = build_model(_config("vit_tiny_patch16_224"), ["a", "b"])
    assert (default.config.frames, default.config.img_size) == (NEW_MODEL_FRAMES, NEW_MODEL_IMG_SIZE) == (8, 224)


def test_what_cannot_start_a_run_is_one_clear_error(checkpoint, tmp_path):
    with pytest.raises(StamError, match=r"--model 'resnet_nope' is neither a zoo model \(stam_"):
        build_model(_config("resnet_nope"), ["a"])
    with pytest.raises(StamError, match="--backbone-weights is for a new model"):
        build_model(_config(checkpoint, backbone_weights=str(tmp_path / "vit.pth")), TINY_LABELS)
    with pytest.raises(CheckpointError, match="backbone weights not found"):
        build_model(_config("vit_tiny_patch16_224", backbone_weights=str(tmp_path / "nope.pth"), frames=2,
                            img_size=32), ["a"])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read backbone weights .*junk\.pth: "):
        build_model(_config("vit_tiny_patch16_224", backbone_weights=str(tmp_path / "junk.pth"), frames=2,
                            img_size=32), ["a"])
