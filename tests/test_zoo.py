"""The model registry and label sets."""

from __future__ import annotations

import pytest

from conftest import SHARED
from stamcli import StamError, available_models, get_model_info
from stamcli.zoo import default_labels, load_label_set, model_for_frames, read_labels_file

BASE = "https://miil-public-eu.oss-eu-central-1.aliyuncs.com/model-zoo/STAM/v2"


def test_registry_lists_the_four_published_checkpoints():
    assert available_models() == ["stam_8", "stam_16", "stam_32", "stam_64"]
    rows = [(get_model_info(n).frames, get_model_info(n).top1, get_model_info(n).url) for n in available_models()]
    assert rows == [
        (8, 77.5, f"{BASE}/stam_8.pth"),
        (16, 79.3, f"{BASE}/stam_16.pth"),
        (32, 79.95, f"{BASE}/stam_32.pth"),
        (64, 80.5, f"{BASE}/stam_64.pth"),
    ]
    info = get_model_info("stam_16")
    assert info.filename == "stam_16.pth" and info.img_size == 224 and info.labels == "kinetics400"
    assert info.gflops == 270 and info.sha256 is None
    assert info.architecture == {
        "backbone": "vit_base_patch16_224", "embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16,
        "mlp_ratio": 4.0, "temporal_layers": 6, "temporal_heads": 8, "temporal_ff": 2048, "num_classes": 400,
    }


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(StamError, match=r"^unknown model 'stam_12'; known models: stam_8, stam_16, stam_32, stam_64"):
        get_model_info("stam_12")


def test_model_for_frames():
    assert [model_for_frames(f).name for f in (8, 16, 32, 64)] == ["stam_8", "stam_16", "stam_32", "stam_64"]
    with pytest.raises(StamError, match=r"no published model is trained for 12 frames \(published: 8 \(stam_8\), 16"):
        model_for_frames(12)


def test_kinetics_labels_are_the_shared_list_shipped_in_the_package():
    shared = (SHARED / "data" / "kinetics400_labels.txt").read_text().splitlines()
    labels = load_label_set("kinetics400")
    assert list(labels) == shared and len(labels) == 400
    assert default_labels(400) == shared
    assert default_labels(3) == ["class_0", "class_1", "class_2"]


def test_labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("  pouring coffee \n\nslicing bread\n", encoding="utf-8")
    assert read_labels_file(path) == ["pouring coffee", "slicing bread"]
    path.write_text("\n\n")
    with pytest.raises(StamError, match=r"labels file .*labels.txt is empty"):
        read_labels_file(path)
