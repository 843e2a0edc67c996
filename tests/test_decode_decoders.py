"""Tests for stamcli.decode.decoders: the decoder choice (auto / pyav / opencv, STAM_DECODER) and
the one fallback from PyAV to OpenCV, for clips and part-way through a stream of items."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from stamcli.cli import app
from stamcli.decode import decode_with_fallback, pyav, read_clip, read_views, resolve_decoder
from stamcli.decode.pyav import SparseDecoder, Unsupported
from stamcli.engine import PredictOptions, Predictor
from stamcli.errors import UsageError, VideoError
from stamcli.train.config import FinetuneConfig
from conftest import make_tiny_model
from synthetic import decode_clip_index, write_index_video, write_raw_h264

needs_pyav = pytest.mark.skipif(not pyav.available(), reason="PyAV missing or older than 14")


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    return tmp_path_factory.mktemp("decoders")


@pytest.fixture(scope="module")
def h264(vids):
    return write_index_video(vids / "plain.mp4", 60, 48, 64, 25, codec="libx264")


@pytest.fixture(scope="module")
def raw_h264(vids):
    """OpenCV reads it, PyAV cannot (no timestamps)."""
    return write_raw_h264(vids / "raw.h264")


def facts(clip) -> tuple:
    return clip.frame_count, clip.fps, clip.width, clip.height, clip.rotation, clip.indices


# ---------------------------------------------------------------------------- the choice


def test_explicit_beats_the_environment_which_beats_the_default(monkeypatch):
    monkeypatch.delenv("STAM_DECODER", raising=False)
    assert resolve_decoder() == "auto"
    monkeypatch.setenv("STAM_DECODER", "")
    assert resolve_decoder() == "auto"  # set but empty: the default
    monkeypatch.setenv("STAM_DECODER", " OpenCV ")
    assert resolve_decoder() == "opencv"
    assert resolve_decoder("PyAV") == "pyav" and resolve_decoder("auto") == "auto"
    monkeypatch.setenv("STAM_DECODER", "nvdec")
    assert resolve_decoder("opencv") == "opencv"  # an explicit choice never looks at the variable


def test_unknown_values_are_usage_errors_naming_the_valid_ones(monkeypatch):
    monkeypatch.setenv("STAM_DECODER", "NVDEC")
    with pytest.raises(UsageError, match=r"^STAM_DECODER='nvdec' is not one of auto, pyav, opencv$"):
        resolve_decoder()
    with pytest.raises(UsageError, match=r"^--decoder 'gpu' is not one of auto, pyav, opencv$"):
        resolve_decoder("gpu")


def test_pyav_without_pyav_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(pyav, "av", None)
    with pytest.raises(UsageError, match="decoder 'pyav' needs PyAV 14 or newer"):
        resolve_decoder("pyav")
    assert resolve_decoder("auto") == "auto"


def test_decoding_functions_do_not_read_the_environment(h264, monkeypatch):
    monkeypatch.setenv("STAM_DECODER", "nvdec")
    assert read_clip(h264, 4).decoder == "pyav"  # default "auto"
    assert read_clip(h264, 4, decoder="opencv").decoder == "opencv"
    monkeypatch.setenv("STAM_DECODER", "OpenCV")
    assert read_clip(h264, 4, decoder=resolve_decoder()).decoder == "opencv"
    monkeypatch.setenv("STAM_DECODER", "")
    assert read_clip(h264, 4, decoder=resolve_decoder()).decoder == "pyav"


def test_options_resolve_the_decoder_once(h264, monkeypatch):
    monkeypatch.setenv("STAM_DECODER", "opencv")
    predictor = Predictor(make_tiny_model(), PredictOptions(device="cpu"))
    assert predictor.clip_spec.decoder == "opencv"
    monkeypatch.setenv("STAM_DECODER", "nvdec")  # read once: later changes do not reach the run
    assert predictor._decode(str(h264)).decoder == "opencv"
    assert Predictor(make_tiny_model(), PredictOptions(device="cpu", decoder="pyav")).clip_spec.decoder == "pyav"
    with pytest.raises(UsageError, match="STAM_DECODER='nvdec' is not one of"):
        PredictOptions(device="cpu").resolve()
    with pytest.raises(UsageError, match="--decoder 'x' is not one of auto, pyav, opencv"):
        PredictOptions(device="cpu", decoder="x").resolve()
    with pytest.raises(UsageError, match="--decoder 'x' is not one of"):
        FinetuneConfig(data="train.csv", decoder="x").check()
    FinetuneConfig(data="train.csv", decoder="opencv").check()


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_unknown_stam_decoder_stops_a_run_before_any_video(h264, tiny_checkpoint, tmp_path, command):
    """One usage error (exit 2), not an error record per video."""
    output = tmp_path / ("tags.jsonl" if command == "predict" else "emb.npy")
    result = CliRunner().invoke(app, [command, str(h264), "-m", str(tiny_checkpoint), "-o", str(output)],
                                env={"STAM_DECODER": "nvdec"})
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == ["error: STAM_DECODER='nvdec' is not one of auto, pyav, opencv"]
    assert "Traceback" not in result.output and not output.exists()


# ---------------------------------------------------------------------------- pyav alone


@needs_pyav
def test_pyav_alone_reads_what_it_can_and_reports_the_rest(h264, raw_h264):
    clip = read_clip(h264, 4, decoder="pyav")
    assert clip.decoder == "pyav" and facts(clip) == facts(read_clip(h264, 4, decoder="opencv"))
    for reader in (read_clip, read_views):
        with pytest.raises(VideoError) as info:
            reader(raw_h264, 4, decoder="pyav")
        assert str(info.value) == (f"cannot read video {raw_h264}: PyAV cannot read it exactly (a packet without a "
                                   "timestamp); decoder 'auto' would read it with OpenCV")
    clip = read_clip(raw_h264, 4, decoder="auto")
    assert clip.decoder == "opencv" and clip.frame_count == 40
    assert [decode_clip_index(f) for f in clip.frames] == clip.indices
    assert read_clip(raw_h264, 4, decoder="opencv").decoder == "opencv"


@needs_pyav
def test_pyav_alone_gives_an_error_record_and_the_run_goes_on(h264, raw_h264):
    predictor = Predictor(make_tiny_model(), PredictOptions(device="cpu", decoder="pyav"))
    bad, good = predictor.predict([str(raw_h264), str(h264)])
    assert (bad["status"], good["status"]) == ("error", "ok")
    assert bad["error"].startswith(f"cannot read video {raw_h264}: PyAV cannot read it exactly (")
    assert "\n" not in bad["error"]


# ---------------------------------------------------------------------------- going back to OpenCV


@needs_pyav
@pytest.mark.parametrize("why", ["no PyAV", "too large", "fails while decoding", "seek lands elsewhere"])
def test_falls_back_to_opencv(h264, monkeypatch, why):
    expected = read_clip(h264, 4, decoder="opencv")
    if why == "no PyAV":
        monkeypatch.setattr(pyav, "av", None)
    elif why == "too large":
        monkeypatch.setattr(pyav, "MAX_BYTES", 1000)
    elif why == "fails while decoding":
        real = SparseDecoder.frames

        def failing(self, wanted):
            yield next(real(self, wanted))
            raise Unsupported("made up")

        monkeypatch.setattr(SparseDecoder, "frames", failing)
    else:
        monkeypatch.setattr(SparseDecoder, "_start", lambda *a: (_ for _ in ()).throw(Unsupported("landed")))
    clip = read_clip(h264, 4)
    assert clip.decoder == "opencv" and facts(clip) == facts(expected) and torch.equal(clip.frames, expected.frames)
    with pytest.raises(VideoError, match="PyAV cannot read it exactly"):
        read_clip(h264, 4, decoder="pyav")


def test_errors_are_still_opencv_s_messages(vids):
    bad = vids / "text.mp4"
    bad.write_text("not a video\n")
    with pytest.raises(VideoError, match="not a video file"):
        read_clip(bad, 4, decoder="auto")


class _Backend:
    def __init__(self, name):
        self.name = name


def test_the_fallback_does_not_repeat_what_pyav_handed_on(monkeypatch):
    """Part-way: the items PyAV gave are not given again; OpenCV's later items follow."""
    from stamcli.decode import decoders

    monkeypatch.setattr(decoders, "PYAV", _Backend("pyav"))
    monkeypatch.setattr(decoders, "OPENCV", _Backend("opencv"))
    calls = []

    def attempt(backend):
        calls.append(backend.name)
        for item in range(5):
            if backend.name == "pyav" and item == 3:
                raise Unsupported("gave up for the test")
            yield backend.name, item

    assert list(decode_with_fallback("auto", "v.mp4", attempt)) == [("pyav", 0), ("pyav", 1), ("pyav", 2),
                                                                     ("opencv", 3), ("opencv", 4)]
    assert calls == ["pyav", "opencv"]
    got = []
    with pytest.raises(VideoError, match=r"^cannot read video v\.mp4: PyAV cannot read it exactly \(gave up"):
        for item in decode_with_fallback("pyav", "v.mp4", attempt):
            got.append(item)
    assert got == [("pyav", 0), ("pyav", 1), ("pyav", 2)]
    assert list(decode_with_fallback("opencv", "v.mp4", attempt)) == [("opencv", k) for k in range(5)]
    with pytest.raises(UsageError, match="decoder 'gpu' is not one of"):
        list(decode_with_fallback("gpu", "v.mp4", attempt))
