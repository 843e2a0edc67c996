"""Shared test fixtures: tiny models, the authors' fixtures in ../shared, generated videos."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from stamcli import create_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"
REPO = Path(__file__).resolve().parents[1]
#: The environment for a child Python process that imports this checkout's stamcli and benchmarks.
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def interrupt_when(command: list[str], ready: Callable[[], bool], *, poll_s: float = 0.05,
                   timeout_s: float = 120, env: Optional[dict] = None) -> str:
    """Run ``command`` in a child process with this checkout's stamcli (``env``: default
    :data:`CHILD_ENV`), press Ctrl-C (SIGINT) as soon as ``ready()`` (or after ``timeout_s``), and
    return its stderr. It must exit with code 130 and print no traceback."""
    # A shell's background job (`pytest &`) starts with SIGINT ignored, and a child inherits that:
    # Python then never raises KeyboardInterrupt and the run ends as if nothing was pressed. The
    # child gets Ctrl-C as from a terminal if this process handles SIGINT while it starts.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=CHILD_ENV if env is None else env)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not ready():
        time.sleep(poll_s)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    return stderr

# A STAM small enough to run in milliseconds on a CPU: 32x32 frames of 4 patches.
TINY = dict(
    frames=4, num_classes=5, img_size=32, embed_dim=64, depth=1, num_heads=2,
    temporal_layers=1, temporal_heads=8, temporal_ff=128,
)
TINY_LABELS = ["archery", "baking", "cycling", "diving", "eating, with a fork"]


def make_tiny_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = {**TINY, **overrides}
    config.setdefault("labels", TINY_LABELS if config["num_classes"] == len(TINY_LABELS) else None)
    return create_model("vit_tiny_patch16_224", **config).eval()


@pytest.fixture(autouse=True)
def _direct_loopback(monkeypatch):
    """Test servers live on 127.0.0.1: never send their requests through a proxy from the environment."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("STAM_WEIGHTS_DIR", "STAM_MIRROR", "STAM_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny model saved in the project's own format (labels inside)."""
    from stamcli import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(make_tiny_model(), path, provenance={"note": "test fixture"})


def authors_state_dict(model) -> dict:
    """``model``'s weights under the authors' key names."""
    from stamcli.checkpoints import stamcli_to_authors_key

    return {stamcli_to_authors_key(k): v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / "served"``; yields (folder, base URL)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "served"
    folder.mkdir()

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def save_authors_checkpoint(model, path: Path) -> Path:
    """``model`` in the authors' file format: ``torch.save({"model": state_dict})``."""
    torch.save({"model": authors_state_dict(model)}, path)
    return path
