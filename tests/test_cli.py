"""The ``stam`` command line: models, download-weights, global options, and the zoo path of load_model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY, make_tiny_model, save_authors_checkpoint
from stamcli import StamError, __version__, load_model
from stamcli.cli import app

runner = CliRunner()
TINY_ARCH = {k: v for k, v in TINY.items() if k not in ("frames",)} | {"num_classes": 400, "backbone": "vit_tiny_patch16_224"}


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"stamcli {__version__}"
    result = runner.invoke(app, ["--help"])
    for command in ("predict", "download-weights", "models"):
        assert command in result.output


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "stamcli", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"stamcli {__version__}"


def test_models_table_shows_which_checkpoints_are_present(tmp_path):
    (tmp_path / "stam_32.pth").write_bytes(b"x")
    result = runner.invoke(app, ["models", "--weights-dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if "stam_" in line}
    assert set(rows) == {"stam_8", "stam_16", "stam_32", "stam_64"}
    assert "yes" in rows["stam_32"] and "yes" not in rows["stam_16"]
    assert "79.30" in rows["stam_16"] and "270" in rows["stam_16"] and "16" in rows["stam_16"]
    assert str(tmp_path) in result.output.replace("\n", "")


def test_download_weights_from_a_mirror(file_server, tmp_path):
    served, url = file_server
    for name in ("stam_8", "stam_16"):
        save_authors_checkpoint(make_tiny_model(), served / f"{name}.pth")
    weights = tmp_path / "w"
    result = runner.invoke(app, ["download-weights", "stam_8", "stam_16", "--weights-dir", str(weights), "--mirror", url])
    assert result.exit_code == 0, result.output
    for name in ("stam_8", "stam_16"):
        assert (weights / f"{name}.pth").read_bytes() == (served / f"{name}.pth").read_bytes()
        record = json.loads((weights / f"{name}.pth.download.json").read_text())
        assert record["url"] == f"{url}/{name}.pth" and record["size"] == (served / f"{name}.pth").stat().st_size
    assert not list(weights.glob("*.part"))


def test_download_weights_default_is_stam_16_and_env_mirror(file_server, tmp_path):
    served, url = file_server
    save_authors_checkpoint(make_tiny_model(), served / "stam_16.pth")
    result = runner.invoke(app, ["download-weights"], env={"STAM_MIRROR": url, "STAM_WEIGHTS_DIR": str(tmp_path / "env")})
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "env").iterdir()) == ["stam_16.pth", "stam_16.pth.download.json"]


def test_download_weights_errors_are_one_line_with_exit_1(file_server, tmp_path):
    _, url = file_server
    result = runner.invoke(app, ["download-weights", "stam_99", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "unknown model 'stam_99'; known models: stam_8, stam_16, stam_32, stam_64" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["download-weights", "--all", "--weights-dir", str(tmp_path / "w"), "--mirror", url])
    assert result.exit_code == 1
    assert "HTTP 404" in result.output and "stam_8.pth" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w" / "stam_8.pth").exists()


def test_load_model_by_zoo_name_downloads_verifies_and_honours_offline(file_server, tmp_path, monkeypatch):
    served, url = file_server
    source = make_tiny_model(num_classes=400, frames=16)
    save_authors_checkpoint(source, served / "stam_16.pth")
    weights = tmp_path / "weights"
    monkeypatch.delenv("STAM_OFFLINE", raising=False)
    with pytest.raises(StamError, match=r"stam_16 is not in .*weights and offline mode is on; fetch it with: stam download-weights stam_16 --weights-dir"):
        load_model("stam_16", weights_dir=weights, arch=TINY_ARCH, offline=True)
    monkeypatch.setenv("STAM_OFFLINE", "1")
    with pytest.raises(StamError, match=r"offline mode is on"):
        load_model("stam_16", weights_dir=weights, arch=TINY_ARCH)
    monkeypatch.delenv("STAM_OFFLINE")
    model = load_model("stam_16", weights_dir=weights, arch=TINY_ARCH, mirror=url, progress=False)
    assert model.name == "stam_16" and model.config.frames == 16 and model.labels[0] == "abseiling"
    videos = torch.rand(1, 16, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(videos), source(videos))
    # present now: loads offline, verified against the download record
    assert load_model("stam_16", weights_dir=weights, arch=TINY_ARCH, offline=True).name == "stam_16"
    data = bytearray((weights / "stam_16.pth").read_bytes())
    data[-30] ^= 0xFF
    (weights / "stam_16.pth").write_bytes(bytes(data))
    with pytest.raises(StamError, match=r"stam_16.pth has changed since it was downloaded .*stam download-weights stam_16 --force"):
        load_model("stam_16", weights_dir=weights, arch=TINY_ARCH, offline=True)


def test_load_model_unknown_name_lists_known_models():
    with pytest.raises(StamError, match=r"unknown model 'stam_7'; known models: stam_8, stam_16, stam_32, stam_64 \(or pass a checkpoint file\)"):
        load_model("stam_7")
    with pytest.raises(StamError, match=r"checkpoint not found: nothing.pth"):
        load_model("nothing.pth")


def test_public_api_names_resolve_lazily():
    import stamcli

    for name in stamcli.__all__:
        assert getattr(stamcli, name) is not None, name
    from stamcli.train.finetune import finetune

    assert stamcli.finetune is finetune
