"""Shared test fixtures: tiny models, the authors' fixtures in ../shared, generated videos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
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


#: Run by :func:`interrupt_when` with ``hold``: ``stam`` whose function ``argv[1]`` ("module:Qual.name")
#: waits, when called for the ``argv[2]``-th time, until Ctrl-C arrives (having touched the file ``argv[3]``),
#: then goes on (or the KeyboardInterrupt raised by the program's own handler propagates from there).
_HELD_STAM = """
import importlib, os, pathlib, signal, sys, time
target, calls, flag, test = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), os.getppid()
module, _, qualname = target.partition(":")
owner = importlib.import_module(module)
*parents, name = qualname.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real, count = getattr(owner, name), 0

def held(*args, **kwargs):
    global count
    count += 1
    if count == calls:
        pressed, program_handler = [], signal.getsignal(signal.SIGINT)

        def noted(signum, frame):
            pressed.append(signum)
            signal.signal(signal.SIGINT, program_handler)
            program_handler(signum, frame)  # stam's own Ctrl-C handling, from this point of the run

        signal.signal(signal.SIGINT, noted)
        flag.touch()
        while not pressed and os.getppid() == test:  # the test presses Ctrl-C once it sees the flag
            time.sleep(0.005)
    return real(*args, **kwargs)

setattr(owner, name, held)
sys.argv = ["stam", *sys.argv[4:]]
from stamcli.cli import main
main()
"""


def interrupt_when(command: list[str], ready: Optional[Callable[[], bool]] = None, *,
                   hold: Optional[tuple[str, int]] = None, poll_s: float = 0.02, timeout_s: float = 600) -> str:
    """Run ``command`` in a child process with this checkout's stamcli, press Ctrl-C (SIGINT) as
    soon as ``ready()``, and return its stderr. It must exit with code 130 and print no traceback.

    With ``hold=("module:Qual.name", n)``, ``command`` is the arguments of ``stam`` (``["predict",
    ...]``) and the run waits just before its ``n``-th call of that function (in the main thread)
    until Ctrl-C arrives: the signal lands at that point of the run whatever the machine's load,
    and never after the run has ended. ``ready`` is then "the run is waiting there".

    ``timeout_s`` only guards against a hung run: Ctrl-C is pressed then anyway."""
    with tempfile.TemporaryDirectory(prefix="stam-hold-") as folder:
        if hold is not None:
            flag = Path(folder) / "waiting"
            command = [sys.executable, "-c", _HELD_STAM, hold[0], str(hold[1]), str(flag), *command]
            ready = flag.exists
        proc = _start_with_ctrl_c(command)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(poll_s)
        ended_first = proc.poll() is not None
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=timeout_s)
    assert not ended_first, f"the run ended (exit {proc.returncode}) before Ctrl-C was due: {stderr[-2000:]}"
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    return stderr


def _start_with_ctrl_c(command: list[str]) -> subprocess.Popen:
    """Start ``command`` (stdout and stderr piped) so that Ctrl-C reaches it as from a terminal."""
    # A shell's background job (`pytest &`) starts with SIGINT ignored, and a child inherits that:
    # Python then never raises KeyboardInterrupt and the run ends as if nothing was pressed. The
    # child gets Ctrl-C as from a terminal if this process handles SIGINT while it starts.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


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


@pytest.fixture(params=["auto", "opencv"])
def decode_counter(monkeypatch, request):
    """Counts videos opened and frames given by whichever backend reads them: OpenCV captures, or
    :class:`stamcli.decode.pyav.SparseDecoder` reads and the frames they give.  ``.decoder`` is the
    decoder choice the test should pass (``auto``: PyAV reads; ``opencv``: OpenCV alone)."""
    import cv2

    from stamcli.decode.pyav import SparseDecoder

    real_capture = cv2.VideoCapture

    class Counter:
        decoder = request.param
        opened = 0
        retrieved = 0

    class CountingCapture:
        def __init__(self, *args):
            Counter.opened += 1
            self.real = real_capture(*args)

        def __getattr__(self, name):
            return getattr(self.real, name)

        def retrieve(self, *args):
            Counter.retrieved += 1
            return self.real.retrieve(*args)

    enter, frames = SparseDecoder.__enter__, SparseDecoder.frames

    def counted_enter(self):
        Counter.opened += 1
        return enter(self)

    def counted_frames(self, wanted):
        for item in frames(self, wanted):
            Counter.retrieved += 1
            yield item

    monkeypatch.setattr(cv2, "VideoCapture", CountingCapture)
    monkeypatch.setattr(SparseDecoder, "__enter__", counted_enter)
    monkeypatch.setattr(SparseDecoder, "frames", counted_frames)
    return Counter
