"""Shared test fixtures: tiny models, the authors' fixtures in ../shared, generated videos."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from stamcli import create_model
from stamcli.device import REQUIRE_DEVICE_ENV

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"
REPO = Path(__file__).resolve().parents[1]
#: The environment for a child Python process that imports this checkout's stamcli and benchmarks.
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                 **{REQUIRE_DEVICE_ENV: "1"})


def pytest_configure(config):
    """Every test names the device it means (``--device cpu`` / ``device="cpu"``): with
    ``STAM_REQUIRE_DEVICE`` set, a run left on ``--device auto`` is an error in the tests and in
    every child process they start, on a machine with or without a GPU. (Set here, not on import:
    the benchmarks import this module too.)"""
    os.environ[REQUIRE_DEVICE_ENV] = "1"


def interrupt_when(command: list[str], ready: Callable[[], bool], *, poll_s: float = 0.05,
                   timeout_s: float = 120) -> str:
    """Run ``command`` in a child process with this checkout's stamcli, press Ctrl-C (SIGINT) as
    soon as ``ready()`` (or after ``timeout_s``), and return its stderr. It must exit with code
    130 and print no traceback."""
    # A shell's background job (`pytest &`) starts with SIGINT ignored, and a child inherits that:
    # Python then never raises KeyboardInterrupt and the run ends as if nothing was pressed. The
    # child gets Ctrl-C as from a terminal if this process handles SIGINT while it starts.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
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

def run_ranks(target: Callable, world: int, *args, timeout_s: float = 180) -> list:
    """``target(*args)`` in ``world`` fresh processes joined as the ranks of one torchrun job on
    127.0.0.1 (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``); what each returned, by rank. ``target`` is a module-level function; the ranks
    start it at the same moment (process start-up times differ), each with one torch thread."""
    import multiprocessing
    import socket
    import tempfile

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as ready:
        processes = [context.Process(target=_rank_main, args=(rank, world, port, ready, target, args, results))
                     for rank in range(world)]
        for process in processes:
            process.start()
        try:
            answers = dict(results.get(timeout=timeout_s) for _ in range(world))
        finally:
            for process in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
    failed = {rank: answer for rank, answer in answers.items() if isinstance(answer, str) and "Traceback" in answer}
    assert not failed, "\n".join(f"rank {rank}: {text}" for rank, text in failed.items())
    return [answers[rank] for rank in range(world)]


def _rank_main(rank: int, world: int, port: int, ready: str, target: Callable, args: tuple, results) -> None:
    import traceback

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    Path(ready, str(rank)).touch()
    while len(os.listdir(ready)) < world:
        time.sleep(0.01)
    try:
        results.put((rank, target(*args)))
    except BaseException:
        results.put((rank, traceback.format_exc()))


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
