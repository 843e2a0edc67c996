"""Checkpoints: the authors' files (fixture parity, shape inference), the project's format, every error."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, TINY_LABELS, authors_state_dict, make_tiny_model
from stamcli import CheckpointError, StamError, load_checkpoint, read_checkpoint_metadata, save_checkpoint
from stamcli.checkpoints import infer_architecture, load_authors_checkpoint

OFFICIAL = FIXTURES / "stam_tiny_official.pth"


def _official_io():
    return torch.load(FIXTURES / "stam_tiny_official_io.pt", weights_only=True)


def test_official_fixture_logits_match_the_authors_implementation():
    model = load_checkpoint(OFFICIAL)  # stam_tiny_official.json beside it gives the architecture
    io = _official_io()
    with torch.inference_mode():
        logits = model(io["frames_uint8"].float() / 255)
    assert logits.shape == (3, 10)
    # README: "within 1e-5 of the authors' code" (2-3e-6 measured with AVX2 and AVX-512 kernels, 1-2 threads)
    assert (logits - io["logits"]).abs().max().item() < 1e-5
    c = model.config
    assert (c.embed_dim, c.depth, c.num_heads, c.temporal_layers, c.temporal_heads, c.temporal_ff, c.frames) == (
        96, 2, 3, 2, 8, 2048, 8)
    assert c.temporal_norm == "post"  # the authors' encoder
    assert model.labels == [f"class_{i}" for i in range(10)]
    assert model.name == "stam_tiny_official.pth"


def test_official_fixture_with_explicit_arch_and_without_sidecar(tmp_path):
    copy = tmp_path / "model.pth"
    shutil.copy(OFFICIAL, copy)
    # embed 96 is not a multiple of 64: heads cannot be inferred, and the message says what to do
    with pytest.raises(CheckpointError, match=r"cannot infer the number of attention heads for embedding size 96.*--arch FILE"):
        load_checkpoint(copy)
    arch = json.loads((FIXTURES / "stam_tiny_official.json").read_text())
    for given in (arch, FIXTURES / "stam_tiny_official.json", {"num_heads": 3}):
        model = load_checkpoint(copy, arch=given)
        with torch.inference_mode():
            logits = model(_official_io()["frames_uint8"].float() / 255)
        assert (logits - _official_io()["logits"]).abs().max().item() < 1e-5


def _save_authors(model, path: Path, wrap: str | None = "model") -> Path:
    state = authors_state_dict(model)
    torch.save({wrap: state} if wrap else state, path)
    return path


@pytest.mark.parametrize("wrap", ["model", "state_dict", None])
def test_smaller_backbone_architecture_is_inferred_from_shapes(tmp_path, wrap):
    source = make_tiny_model(seed=3, embed_dim=128, depth=2, temporal_layers=3, temporal_ff=96, frames=6, num_classes=7)
    path = _save_authors(source, tmp_path / "small.pth", wrap)
    model = load_checkpoint(path)
    c = model.config
    assert (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size, c.mlp_ratio) == (128, 2, 2, 16, 32, 4.0)
    assert (c.temporal_layers, c.temporal_heads, c.temporal_ff, c.frames, c.num_classes) == (3, 8, 96, 6, 7)
    assert model.labels == [f"class_{i}" for i in range(7)]
    videos = torch.rand(2, 6, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(videos), source(videos))


def test_infer_architecture_reads_a_vit_b_layout():
    state = {
        "cls_token": torch.zeros(1, 1, 768), "pos_embed": torch.zeros(1, 197, 768),
        "patch_embed.proj.weight": torch.zeros(768, 3, 16, 16), "blocks.0.mlp.fc1.weight": torch.zeros(3072, 768),
        "blocks.11.norm1.weight": torch.zeros(768), "aggregate.pos_embed": torch.zeros(1, 17, 768),
        "aggregate.transformer_enc.layers.0.linear1.weight": torch.zeros(2048, 768),
        "aggregate.transformer_enc.layers.5.norm1.weight": torch.zeros(768), "head.weight": torch.zeros(400, 768),
    }
    assert infer_architecture(state) == {
        "backbone": "vit_base_patch16_224", "embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16,
        "img_size": 224, "mlp_ratio": 4.0, "temporal_layers": 6, "temporal_heads": 8, "temporal_ff": 2048,
        "frames": 16, "num_classes": 400,
    }


def test_labels_400_way_kinetics_file_and_mismatch(tmp_path):
    source = make_tiny_model(num_classes=400, labels=None)
    path = _save_authors(source, tmp_path / "k400.pth")
    assert load_checkpoint(path).labels[:2] == ["abseiling", "air drumming"]
    small = _save_authors(make_tiny_model(), tmp_path / "small.pth")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(TINY_LABELS) + "\n\n")
    assert load_checkpoint(small, labels=labels_file).labels == TINY_LABELS
    labels_file.write_text("one\ntwo\n")
    with pytest.raises(StamError, match=r"2 labels given for a model with 5 outputs"):
        load_checkpoint(small, labels=labels_file)
    with pytest.raises(StamError, match=r"labels file not found: .*nope.txt"):
        load_checkpoint(small, labels=tmp_path / "nope.txt")


def test_pickles_with_python_objects_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": authors_state_dict(make_tiny_model()), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"holds Python objects besides tensors; refusing to unpickle.*--trust-checkpoint"):
        load_checkpoint(path)
    model = load_checkpoint(path, trust_checkpoint=True)
    assert model.config.num_classes == 5


def test_file_errors_are_one_clear_line(tmp_path):
    whole = _save_authors(make_tiny_model(), tmp_path / "whole.pth").read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.pth").write_text("these are my notes, not weights\n")
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    torch.save({"model": {"epoch": 3}}, tmp_path / "nostate.pth")
    cases = {
        "missing.pth": r"^checkpoint not found: .*missing.pth$",
        "": r"is a directory, not a checkpoint file$",
        "empty.pth": r"empty.pth is empty, not a checkpoint$",
        "notes.pth": r"notes.pth is not a checkpoint \(expected a PyTorch .pth file or a stamcli .safetensors file\)$",
        "cut.pth": r"cut.pth is truncated or corrupt \(.*\); download or copy it again$",
        "nostate.pth": r"does not hold a STAM state dict",
    }
    for name, message in cases.items():
        path = tmp_path / name
        with pytest.raises(CheckpointError, match=message) as raised:
            load_checkpoint(path)
        text = str(raised.value)
        assert "\n" not in text and str(path) in text, text  # one line that names the file


def test_missing_unexpected_and_misshapen_keys_are_named_as_the_file_names_them(tmp_path):
    state = authors_state_dict(make_tiny_model())
    arch = {"embed_dim": 64, "num_heads": 2}
    dropped = dict(state)
    del dropped["blocks.0.norm1.weight"], dropped["aggregate.transformer_enc.norm.bias"]
    torch.save({"model": dropped}, tmp_path / "dropped.pth")
    with pytest.raises(CheckpointError, match=r"does not fit the model: missing keys: blocks.0.norm1.weight, aggregate.transformer_enc.norm.bias$"):
        load_checkpoint(tmp_path / "dropped.pth", arch=arch)
    extra = dict(state, **{"blocks.0.gamma": torch.zeros(64)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks.0.gamma$"):
        load_checkpoint(tmp_path / "extra.pth", arch=arch)
    torch.save({"model": state}, tmp_path / "ok.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch for aggregate.pos_embed: the model expects \(1, 9, 64\), the file has \(1, 5, 64\)$"):
        load_checkpoint(tmp_path / "ok.pth", arch={"frames": 8, "num_heads": 2})
    without_head = {k: v for k, v in state.items() if not k.startswith("head.")}
    torch.save({"model": without_head}, tmp_path / "nohead.pth")
    with pytest.raises(CheckpointError, match=r"missing keys needed to read its architecture: head.weight$"):
        load_checkpoint(tmp_path / "nohead.pth")


def test_own_format_round_trip(tmp_path):
    source = make_tiny_model(seed=5)
    path = save_checkpoint(source, tmp_path / "run" / "best.safetensors", provenance={"epochs": 3, "data": "clips.csv"})
    assert not list(path.parent.glob("*.tmp"))
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == "stamcli-checkpoint" and meta["format_version"] == 1
    assert meta["labels"] == TINY_LABELS
    assert meta["config"]["backbone"] == "vit_tiny_patch16_224" and meta["config"]["frames"] == 4
    assert meta["preprocessing"]["img_size"] == 32 and meta["preprocessing"]["resize_size"] == 36
    assert meta["preprocessing"]["mean"] is None
    assert meta["provenance"] == {"epochs": 3, "data": "clips.csv"}
    from stamcli import __version__

    assert meta["stamcli_version"] == __version__
    model = load_checkpoint(path)
    assert model.labels == TINY_LABELS and model.name == "best.safetensors"
    assert model.config == source.config
    assert model.provenance == {"epochs": 3, "data": "clips.csv"}
    videos = torch.rand(2, 4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(videos), source(videos), rtol=0, atol=0)


def test_own_format_records_the_temporal_form_and_older_files_mean_the_authors(tmp_path):
    source = make_tiny_model(seed=6, temporal_layers=2, temporal_norm="pre", temporal_input_norm=True)
    with torch.no_grad():  # trained-looking running statistics
        source.temporal.input_norm.running_mean.normal_()
        source.temporal.input_norm.running_var.uniform_(0.5, 2.0)
    path = save_checkpoint(source, tmp_path / "pre.safetensors")
    meta = read_checkpoint_metadata(path)
    assert [meta["config"][k] for k in ("temporal_layers", "temporal_norm", "temporal_input_norm")] == [2, "pre", True]
    model = load_checkpoint(path)
    assert model.config == source.config and model.temporal.transformer_enc.layers[0].norm_first
    assert torch.equal(model.temporal.input_norm.running_var, source.temporal.input_norm.running_var)
    videos = torch.rand(2, 4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(videos), source(videos), rtol=0, atol=0)
    # a checkpoint written before the fields existed holds the authors' post-norm encoder
    old_model = make_tiny_model(seed=6)
    meta = read_checkpoint_metadata(save_checkpoint(old_model, tmp_path / "post.safetensors"))
    del meta["config"]["temporal_norm"], meta["config"]["temporal_input_norm"]
    tensors = load_file(str(tmp_path / "post.safetensors"))
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"stamcli": json.dumps(meta)})
    old = load_checkpoint(tmp_path / "old.safetensors")
    assert old.config == old_model.config and old.config.temporal_norm == "post" and old.temporal.input_norm is None
    assert not old.temporal.transformer_enc.layers[0].norm_first


def test_own_format_errors(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"cut.safetensors is truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match=r"safetensors file without stamcli metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")
    future = {"format": "stamcli-checkpoint", "format_version": 99}
    save_file({"w": torch.zeros(2)}, str(tmp_path / "future.safetensors"), metadata={"stamcli": json.dumps(future)})
    with pytest.raises(CheckpointError, match=r"format stamcli-checkpoint v99; this stamcli reads stamcli-checkpoint v1 \(upgrade stamcli\)"):
        load_checkpoint(tmp_path / "future.safetensors")
    with pytest.raises(CheckpointError, match=r"is a safetensors file, not an authors' .pth checkpoint"):
        load_authors_checkpoint(tiny_checkpoint)
    meta = read_checkpoint_metadata(tiny_checkpoint)
    with torch.no_grad():
        state = {k: v for k, v in make_tiny_model().state_dict().items() if k != "head.bias"}
    save_file(state, str(tmp_path / "partial.safetensors"), metadata={"stamcli": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"does not fit the model: missing keys: head.bias$"):
        load_checkpoint(tmp_path / "partial.safetensors")


def test_own_format_labels_can_be_overridden(tiny_checkpoint, tmp_path):
    names = ["a", "b", "c", "d", "e"]
    assert load_checkpoint(tiny_checkpoint, labels=names).labels == names


def test_own_format_whose_header_length_starts_with_a_pickle_byte(tmp_path):
    """A safetensors header length whose low byte is 0x80 must not be mistaken for a pickle."""
    import struct

    model = make_tiny_model()
    for pad in range(300):
        path = save_checkpoint(model, tmp_path / "m.safetensors", provenance={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 0x80
    assert load_checkpoint(path).labels == TINY_LABELS
