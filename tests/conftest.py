"""Shared test fixtures: tiny models, the authors' fixtures in ../shared, generated videos."""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator, Optional

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
                   hold: Optional[tuple[str, int]] = None, poll_s: float = 0.02, timeout_s: float = 600,
                   env: Optional[dict] = None, wrap: Optional[Callable[[list[str]], list[str]]] = None) -> str:
    """Run ``command`` in a child process with this checkout's stamcli (``env``: default
    :data:`CHILD_ENV`), press Ctrl-C (SIGINT) as soon as ``ready()``, and return its stderr. It must
    exit with code 130 and print no traceback. ``wrap``: what runs the command line, such as
    ``LoopbackNamespace.command`` (it must exec the command, so that the signal reaches it).

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
        if wrap is not None:
            command = wrap(command)
        proc = _start_with_ctrl_c(command, CHILD_ENV if env is None else env)
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


def _start_with_ctrl_c(command: list[str], env: dict) -> subprocess.Popen:
    """Start ``command`` (stdout and stderr piped) so that Ctrl-C reaches it as from a terminal."""
    # A shell's background job (`pytest &`) starts with SIGINT ignored, and a child inherits that:
    # Python then never raises KeyboardInterrupt and the run ends as if nothing was pressed. The
    # child gets Ctrl-C as from a terminal if this process handles SIGINT while it starts.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


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


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files of the folder given as ``directory=`` without logging each request."""

    def log_message(self, *args):
        pass


@contextmanager
def http_server(handler) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering with ``handler`` (a request handler class or factory),
    in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / "served"``; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    with http_server(functools.partial(QuietHandler, directory=str(folder))) as url:
        yield folder, url


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


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto's server mode) on 127.0.0.1, for the whole session; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """S3 clients (boto3, s3fs, child processes via CHILD_ENV) pointed at the loopback moto server through the
    standard variables (``AWS_ENDPOINT_URL``, fake credentials, no instance-metadata lookups), and a fresh
    bucket; yields ``(boto3 client, bucket name)``."""
    import boto3

    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setitem(CHILD_ENV, name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
        CHILD_ENV.pop(name, None)
    _clear_s3fs_cache()
    client = boto3.client("s3")
    bucket = f"bucket-{next(_BUCKETS)}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    _clear_s3fs_cache()


_BUCKETS = itertools.count()


def _clear_s3fs_cache() -> None:
    """fsspec reuses file-system objects made with the same arguments: forget them when the environment changes."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()
