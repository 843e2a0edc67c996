"""`stam export`: TorchScript and ONNX files that match PyTorch, with a dynamic batch and labels inside."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY, TINY_LABELS, make_tiny_model
from stamcli import StamError, UsageError, load_checkpoint
from stamcli import export as export_module
from stamcli.cli import app
from stamcli.export import export_model, format_for_export, read_export_metadata, run_exported

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.[a-z_]+` is deprecated:FutureWarning")
runner = CliRunner()
SHAPE = (TINY["frames"], 3, TINY["img_size"], TINY["img_size"])  # (4, 3, 32, 32)


def _videos(batch: int, frames: int = SHAPE[0], seed: int = 7) -> torch.Tensor:
    return torch.rand((batch, frames, *SHAPE[1:]), generator=torch.Generator().manual_seed(seed))


def _reference(model, videos: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(videos)


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=3)


@pytest.fixture(scope="module")
def torchscript_file(model, tmp_path_factory):
    return export_model(model, tmp_path_factory.mktemp("ts") / "tiny.pt", "torchscript")


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return export_model(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", "onnx")


# ---------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("batch", [1, 3])
def test_torchscript_matches_pytorch_at_any_batch(model, torchscript_file, batch):
    assert torchscript_file.format == "torchscript" and torchscript_file.max_abs_diff <= 1e-4
    videos = _videos(batch)
    with torch.no_grad():
        got = torch.jit.load(str(torchscript_file.path))(videos)
    assert got.shape == (batch, 5)
    assert (got - _reference(model, videos)).abs().max().item() <= 1e-4


def test_torchscript_metadata(torchscript_file):
    meta = read_export_metadata(torchscript_file.path)
    assert meta["labels"] == TINY_LABELS and meta["format"] == "stamcli-export"
    assert meta["config"]["frames"] == 4 and meta["config"]["img_size"] == 32 and meta["config"]["num_classes"] == 5
    assert meta["input"] == {"name": "videos", "shape": ["batch", 4, 3, 32, 32], "dtype": "float32",
                             "range": [0.0, 1.0], "channels": "RGB"}
    assert meta["output"]["shape"] == ["batch", 5] and meta["preprocessing"]["mean"] is None
    extra = {"stamcli.json": ""}  # what a user without stamcli does
    torch.jit.load(str(torchscript_file.path), _extra_files=extra)
    assert json.loads(extra["stamcli.json"])["labels"] == TINY_LABELS


def test_torchscript_rejects_a_wrong_frame_count(torchscript_file):
    module = torch.jit.load(str(torchscript_file.path))
    with pytest.raises(torch.jit.Error, match=r"expected videos of shape \(batch, 4, 3, 32, 32\), float32 in "
                                              r"\[0, 1\], got \[2, 5, 3, 32, 32\]"):
        module(_videos(2, frames=5))


def test_frames_are_fixed_at_export_without_touching_the_model(model, tmp_path):
    result = export_model(model, tmp_path / "f8.pt", num_frames=8)  # format from the extension
    assert (result.format, result.num_frames) == ("torchscript", 8)
    assert model.config.frames == 4 and model.temporal.pos_embed.shape[1] == 5  # the caller's model unchanged
    videos = _videos(2, frames=8)
    expected = _reference(model, videos)  # the model interpolates its position embedding the same way
    assert (run_exported(result.path, videos) - expected).abs().max().item() <= 1e-4
    assert read_export_metadata(result.path)["input"]["shape"] == ["batch", 8, 3, 32, 32]


def test_a_failed_verification_writes_nothing(model, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "run_exported", lambda path, videos, fmt=None: torch.zeros(1, 5) + 1.0)
    with pytest.raises(StamError, match=r"does not match PyTorch \(max abs logit difference .* > 0.0001\); not written"):
        export_model(model, tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


def test_formats_from_names():
    assert format_for_export("a.onnx") == "onnx" and format_for_export("a.PT") == "torchscript"
    assert format_for_export("a.ts") == "torchscript" and format_for_export("a.bin", "ONNX") == "onnx"
    with pytest.raises(UsageError, match="cannot tell the export format of 'a.bin'"):
        format_for_export("a.bin")
    with pytest.raises(UsageError, match="unknown export format 'tflite'"):
        format_for_export("a.pt", "tflite")


# ---------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_pytorch_at_any_batch(model, onnx_file, batch):
    import onnxruntime

    assert onnx_file.format == "onnx" and onnx_file.max_abs_diff <= 1e-4
    session = onnxruntime.InferenceSession(str(onnx_file.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "videos" and session.get_inputs()[0].shape == ["batch", 4, 3, 32, 32]
    assert session.get_outputs()[0].shape == ["batch", 5]
    videos = _videos(batch)
    got = torch.from_numpy(session.run(["logits"], {"videos": videos.numpy()})[0])
    assert got.shape == (batch, 5)
    assert (got - _reference(model, videos)).abs().max().item() <= 1e-4


def test_onnx_metadata(onnx_file):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file.path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["stamcli"])
    assert meta["labels"] == TINY_LABELS and meta["input"]["shape"] == ["batch", 4, 3, 32, 32]
    assert read_export_metadata(onnx_file.path) == meta


def test_onnx_rejects_a_wrong_frame_count(onnx_file):
    with pytest.raises(Exception, match=r"(?s)invalid dimensions for input: videos.*index: 1 Got: 5 Expected: 4"):
        run_exported(onnx_file.path, _videos(1, frames=5))


def test_onnx_export_errors_are_one_line(model, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    with pytest.raises(StamError, match=r"^onnx export failed: Exporting the operator "
                                        r"'aten::scaled_dot_product_attention' to ONNX opset version 13") as err:
        export_model(model, tmp_path / "old.onnx", opset=13)
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_missing_onnx_packages_name_the_extra(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when not installed
    with pytest.raises(StamError, match=r'^ONNX export needs the onnx and onnxruntime packages: '
                                        r'pip install "stamcli\[onnx\]"$'):
        export_model(model, tmp_path / "m.onnx")
    # the CLI says so before it loads (here: fails to find) the model
    result = runner.invoke(app, ["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert 'error: ONNX export needs the onnx and onnxruntime packages: pip install "stamcli[onnx]"' in result.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("fmt, name", [("torchscript", "tiny.pt"), ("onnx", "tiny.onnx")])
def test_cli_export(tiny_checkpoint, tmp_path, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    out = tmp_path / "models" / name
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--format", fmt, "--output", str(out)],
                           env={"COLUMNS": "300"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"{fmt}: {out} (input: batch x 4 x 3 x 32 x 32; max abs logit difference from PyTorch" in result.output
    videos = _videos(3)
    expected = _reference(load_checkpoint(tiny_checkpoint), videos)
    assert (run_exported(out, videos) - expected).abs().max().item() <= 1e-4
    meta = read_export_metadata(out)
    assert meta["labels"] == TINY_LABELS and meta["model"] == "tiny.safetensors"
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no temporary file left


def test_cli_export_frames_and_no_verify(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny8.ts"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "-o", str(out), "--frames", "8", "--no-verify"],
                           env={"COLUMNS": "300"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "input: batch x 8 x 3 x 32 x 32)" in result.output and "difference" not in result.output
    assert run_exported(out, _videos(2, frames=8)).shape == (2, 5)


@pytest.mark.parametrize("args, message", [
    (["-o", "model.bin"], "cannot tell the export format of 'model.bin' from its extension"),
    (["-o", "model.pt", "--format", "tflite"], "unknown export format 'tflite': choose torchscript or onnx"),
])
def test_cli_export_usage_errors(tiny_checkpoint, tmp_path, args, message):
    result = runner.invoke(app, ["export", str(tiny_checkpoint), *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and f"error: {message}" in result.output


def test_reading_metadata_of_files_that_are_not_exports(tmp_path):
    with pytest.raises(StamError, match="exported model not found"):
        read_export_metadata(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(StamError, match=r"^cannot read .*text.pt as a torchscript model: "):
        read_export_metadata(tmp_path / "text.pt")
    plain = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    torch.jit.save(plain, str(tmp_path / "plain.pt"))
    with pytest.raises(StamError, match="plain.pt has no stamcli metadata"):
        read_export_metadata(tmp_path / "plain.pt")


def test_a_chunked_cpu_model_exports_with_a_dynamic_batch(tmp_path):
    """The model runs its ViT over 3 frames at a time on the CPU; the export is one pass, so a batch
    other than the traced one (5 videos x 4 frames) still matches."""
    chunked = make_tiny_model(seed=3)
    chunked.frame_chunk = 3
    result = export_model(chunked, tmp_path / "chunked.pt", "torchscript")
    assert chunked.frame_chunk == 3  # the caller's model is untouched
    videos = _videos(5)
    with torch.no_grad():
        got = torch.jit.load(str(result.path))(videos)
    assert got.shape == (5, 5)
    assert (got - _reference(chunked, videos)).abs().max().item() <= 1e-4


def test_a_pre_norm_checkpoint_round_trips_through_predict_and_export(tmp_path):
    """A checkpoint with a new model's temporal encoder (pre-norm, input BatchNorm) loads in `stam
    predict` and `stam export` as that network, not as the authors' post-norm one."""
    from stamcli import save_checkpoint
    from stamcli.decode import read_clip
    from synthetic import write_motion_video

    source = make_tiny_model(seed=9, temporal_layers=2, temporal_norm="pre", temporal_input_norm=True)
    with torch.no_grad():
        source.temporal.input_norm.running_mean.normal_(generator=torch.Generator().manual_seed(2))
        source.temporal.input_norm.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    checkpoint = save_checkpoint(source, tmp_path / "pre.safetensors")
    video = write_motion_video(tmp_path / "clip.avi", "left", frames=8, size=32, fourcc="MJPG")
    with torch.inference_mode():
        clip = read_clip(video, 4, 32).frames.float()[None] / 255
        expected = source(clip)
        as_post = make_tiny_model(seed=9, temporal_layers=2, temporal_input_norm=True)
        as_post.load_state_dict(source.state_dict())
        assert (as_post(clip) - expected).abs().max() > 1e-3  # the form matters for these weights
    out = tmp_path / "tags.jsonl"
    result = runner.invoke(app, ["predict", str(video), "--model", str(checkpoint), "--device", "cpu", "-o", str(out),
                                 "--top-k", "5", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scores = {p["index"]: p["score"] for p in json.loads(out.read_text())["predictions"]}
    torch.testing.assert_close(torch.tensor([scores[i] for i in range(5)]), expected.softmax(-1)[0],
                               rtol=0, atol=1e-5)
    exported = tmp_path / "pre.pt"
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(exported)], env={"COLUMNS": "300"},
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (run_exported(exported, clip) - expected).abs().max().item() <= 1e-4
    config = read_export_metadata(exported)["config"]
    assert (config["temporal_norm"], config["temporal_input_norm"]) == ("pre", True)
