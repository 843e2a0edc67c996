"""The ``stam`` command line: models, download-weights, global options, and the zoo path of load_model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import CHILD_ENV, TINY, make_tiny_model, save_authors_checkpoint
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


#: Every public name of ``stamcli`` and the module that defines it.
PUBLIC_API = {
    "CheckpointError": "errors", "DownloadError": "errors", "StamError": "errors", "UsageError": "errors",
    "VideoError": "errors", "available_models": "zoo", "get_model_info": "zoo", "load_model": "",
    "STAM": "model", "STAMConfig": "model", "create_model": "model",
    "load_checkpoint": "checkpoints", "read_checkpoint_metadata": "checkpoints", "save_checkpoint": "checkpoints",
    "Predictor": "engine", "predict": "engine",
    "PredictOptions": "jobs", "TaggingJob": "jobs", "EmbedJob": "jobs", "EvaluationJob": "jobs", "ExportJob": "jobs",
    "run_tagging": "tagging", "embed": "embedding", "load_embeddings": "embedding", "run_embedding": "embedding",
    "TimelinePredictor": "timeline", "LabelMap": "labelmap", "Thresholds": "thresholds",
    "calibrate_thresholds": "thresholds", "FinetuneConfig": "train.config", "finetune": "train.finetune",
    "evaluate": "train.evaluate", "export_model": "export", "read_export_metadata": "export",
}
_API_REPORT = """
import json, sys
import stamcli
report = {"all": stamcli.__all__, "version": stamcli.__version__, "torch after import": "torch" in sys.modules,
          "bound before use": sorted(n for n in stamcli.__all__ if n in vars(stamcli))}
stamcli.available_models(), stamcli.StamError, stamcli.load_model
report["torch after light names"] = "torch" in sys.modules
report["defined in"], report["is that object"] = {}, []
for name in stamcli.__all__[::-1]:  # heavy names first: each must import its own module
    if name != "__version__":
        obj = getattr(stamcli, name)
        report["defined in"][name] = obj.__module__
        report["is that object"] += [name] if getattr(sys.modules[obj.__module__], obj.__name__) is obj else []
report["torch after heavy names"] = "torch" in sys.modules
print(json.dumps(report))
"""


def test_public_api_names_resolve_lazily():
    """In a fresh interpreter: ``import stamcli`` binds only the torch-free names; each other name is
    imported from its own module on first use and is that module's object."""
    result = subprocess.run([sys.executable, "-c", _API_REPORT], capture_output=True, text=True, timeout=120,
                            env=CHILD_ENV)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = {name: f"stamcli.{module}".rstrip(".") for name, module in PUBLIC_API.items()}
    assert sorted(report["all"]) == sorted([*PUBLIC_API, "__version__"]) and report["version"] == __version__
    assert report["defined in"] == expected
    assert sorted(report["is that object"]) == sorted(PUBLIC_API)
    light = [name for name, module in PUBLIC_API.items() if module in ("errors", "zoo", "")]
    assert report["bound before use"] == sorted([*light, "__version__"])
    assert (report["torch after import"], report["torch after light names"], report["torch after heavy names"]) == (
        False, False, True)


# --------------------------------------------------------------------------- one CLI pattern

import dataclasses  # noqa: E402

import typer  # noqa: E402

from stamcli.jobs import EmbedJob, EvaluationJob, ExportJob, PredictOptions, TaggingJob  # noqa: E402
from stamcli.train.config import FinetuneConfig  # noqa: E402

ALL = {"models", "download-weights", "predict", "embed", "evaluate", "export", "finetune"}
MODEL_LOADING = {"predict", "embed", "evaluate", "export"}
RUNS_MODEL = {"predict", "embed", "evaluate", "finetune"}
#: option -> the commands that share it (one declaration, one help text)
SHARED = {
    "--device": RUNS_MODEL, "--precision": RUNS_MODEL, "--batch-size": RUNS_MODEL, "--decoder": RUNS_MODEL,
    "--model": RUNS_MODEL, "--frames": RUNS_MODEL | {"export"}, "--offline": MODEL_LOADING | {"finetune"},
    "--arch": MODEL_LOADING, "--trust-checkpoint": MODEL_LOADING, "--weights-dir": ALL,
    "--mirror": ALL - {"models"}, "--workers": {"predict", "embed", "evaluate"},
    "--streams": {"predict", "embed", "evaluate"}, "--quiet": {"predict", "embed"}, "--labels": {"predict", "export"},
    "--skip-bad": {"evaluate", "finetune"}, "--clips": {"predict", "evaluate"}, "--crops": {"predict", "evaluate"},
    "--recursive": {"predict", "embed"}, "--ext": {"predict", "embed"}, "--shard": {"predict", "embed"},
}


def _commands() -> dict:
    return typer.main.get_command(app).commands


def _option(command, flag: str):
    return next((p for p in command.params if flag in p.opts), None)


def test_shared_options_say_the_same_in_every_command():
    commands = _commands()
    assert set(commands) == ALL
    for flag, names in SHARED.items():
        helps = {}
        for name in names:
            option = _option(commands[name], flag)
            assert option is not None, f"stam {name} has no {flag}"
            helps[name] = option.help
        assert len(set(helps.values())) == 1, (flag, helps)
        assert next(iter(helps.values())), flag
    # finetune's --workers counts data-loading processes (0 allowed): another option under the same name
    assert _option(commands["finetune"], "--workers").help != _option(commands["predict"], "--workers").help


def _field_default(cls, name):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


JOB_CLASSES = {"predict": (PredictOptions, TaggingJob), "embed": (PredictOptions, EmbedJob),
               "evaluate": (PredictOptions, EvaluationJob), "export": (ExportJob,), "finetune": (FinetuneConfig,)}


@pytest.mark.parametrize("name", sorted(JOB_CLASSES))
def test_help_defaults_are_the_job_classes_defaults(name):
    command = _commands()[name]
    compared = 0
    for param in command.params:
        cls = next((c for c in JOB_CLASSES[name] if param.name in {f.name for f in dataclasses.fields(c)}), None)
        if cls is None or (name, param.name) == ("finetune", "data"):  # DATA: given, or from --config
            continue
        default = _field_default(cls, param.name)
        if default is dataclasses.MISSING:
            assert param.required, (name, param.name)
            continue
        assert param.default == default, (name, param.name, param.default, default)
        compared += 1
    assert compared >= {"predict": 20, "embed": 16, "evaluate": 14, "export": 9, "finetune": 28}[name], compared
    if name == "finetune":  # and --help shows them
        lines = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "250"}).output.splitlines()
        for flag, value in (("--epochs", FinetuneConfig.epochs), ("--lr", FinetuneConfig.lr),
                            ("--workers", FinetuneConfig.workers), ("--val-split", FinetuneConfig.val_split)):
            row = next(line for line in lines if line.strip("│ ").startswith(f"{flag} "))
            assert f"[default: {value}]" in row, row


def test_each_command_builds_its_job_and_calls_one_function(monkeypatch, tmp_path):
    import stamcli.embedding as embedding
    import stamcli.export as export
    import stamcli.tagging as tagging
    import stamcli.train.evaluate as evaluate
    import stamcli.train.finetune as finetune
    from stamcli.export import ExportResult
    from stamcli.runner import RunSummary

    calls = []

    def fake(result):
        def call(job, **kwargs):
            calls.append(job)
            return result
        return call

    summary = RunSummary(ok=1, failed=0, skipped=0, elapsed_s=1.0, videos_per_s=1.0, output=None)
    monkeypatch.setattr(tagging, "run_tagging", fake(summary))
    result = runner.invoke(app, ["predict", "a.mp4", "b/", "--frames", "8", "-k", "3", "--device", "cpu",
                                 "--decoder", "pyav", "--shard", "1/2", "--ext", "mp4,avi", "-o", "t.csv",
                                 "--labels", "l.txt", "--offline", "--window", "4", "-q"])
    assert result.exit_code == 0, result.output
    assert calls.pop() == TaggingJob(
        paths=["a.mp4", "b/"], model=None, labels="l.txt", offline=True, extensions=("mp4", "avi"), shard="1/2",
        output="t.csv", window=4.0,
        options=PredictOptions(num_frames=8, top_k=3, device="cpu", decoder="pyav"))

    monkeypatch.setattr(embedding, "run_embedding", fake(summary))
    result = runner.invoke(app, ["embed", "a.mp4", "-o", "e.npy", "--per-frame", "-m", "m.safetensors", "-b", "2",
                                 "--decoder", "opencv", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert calls.pop() == EmbedJob(paths=["a.mp4"], model="m.safetensors", output="e.npy", per_frame=True,
                                   options=PredictOptions(batch_size=2, device="cpu", decoder="opencv"))

    report = {"model": "m", "videos": 2, "top1": 0.5, "top5": 1.0, "mean_class_accuracy": 0.5, "failed": []}
    monkeypatch.setattr(evaluate, "run_evaluation", fake(report))
    result = runner.invoke(app, ["evaluate", "val.csv", "-m", "m.pth", "--arch", "a.json", "--clips", "2",
                                 "--device", "cpu", "--decoder", "opencv", "--skip-bad"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "50.00%" in result.output
    assert calls.pop() == EvaluationJob(data="val.csv", model="m.pth", arch="a.json", skip_bad=True,
                                        options=PredictOptions(clips=2, device="cpu", decoder="opencv"))

    monkeypatch.setattr(export, "run_export", fake(ExportResult(tmp_path / "m.pt", "torchscript", 8, 32, None)))
    result = runner.invoke(app, ["export", "stam_8", "-o", str(tmp_path / "m.pt"), "--frames", "8", "--no-verify"],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "input: batch x 8 x 3 x 32 x 32)" in result.output
    assert calls.pop() == ExportJob(model="stam_8", output=str(tmp_path / "m.pt"), num_frames=8, verify=False)

    # finetune: the config file, then only the flags given (a default never overrides the file)
    from stamcli.train.finetune import FinetuneResult

    monkeypatch.setattr(finetune, "finetune", fake(FinetuneResult(tmp_path, 3, 2, 0.5, False, False)))
    config = tmp_path / "c.yaml"
    config.write_text("workers: 0\nfreeze-backbone: true\nepochs: 7\nmodel: base.safetensors\n")
    result = runner.invoke(app, ["finetune", "clips.csv", "--config", str(config), "--epochs", "3", "--decoder",
                                 "opencv", "--weights-dir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert calls.pop() == FinetuneConfig(data="clips.csv", model="base.safetensors", workers=0, freeze_backbone=True,
                                         epochs=3, decoder="opencv", weights_dir=str(tmp_path / "w"))
    result = runner.invoke(app, ["finetune", "--resume", str(tmp_path), "--epochs", "3", "--train-backbone"])
    assert result.exit_code == 2 and "drop: epochs, freeze_backbone" in result.output
    assert not calls


def test_the_command_line_starts_without_torch():
    code = "import sys, stamcli.cli; print(sorted({'torch', 'cv2', 'numpy'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=CHILD_ENV)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
