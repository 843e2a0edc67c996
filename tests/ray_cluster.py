"""Real Ray for tests, inside a loopback-only network namespace.

Ray binds its servers to the machine's interface address even when asked for 127.0.0.1, so
every Ray process a test starts, and every process that talks to it (``stam predict --engine
ray``), runs inside a named network namespace that holds only the loopback interface
(``ip netns add``; ``ip netns exec NAME CMD``): nothing in it can reach, or be reached from,
the network, and its ports cannot clash with anyone else's.

:class:`LoopbackNamespace` creates one with a unique name, runs commands in it and tears it down:
every process still in it is stopped by its pid (SIGTERM, then SIGKILL) and the namespace is
deleted. :class:`RayHead` is ``ray start --head`` in a namespace. Creating namespaces needs root
and ``ip``; :func:`skip_reason` says why a test cannot run here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
#: A child process imports this checkout's stamcli (tests and benchmarks both use this module).
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
#: Environment for Ray processes started by the tests: no usage reports, Ray's files in a
#: private temporary folder, and an object store small enough for a shared 24 GiB machine.
OBJECT_STORE_BYTES = 400_000_000
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(OBJECT_STORE_BYTES),  # a local ray.init's store
    "RAY_DEDUP_LOGS": "0",
    "RAY_AUTH_MODE": "disabled",  # no token written to ~/.ray (a private namespace needs none)
}
HEAD_PORT = 6379  # the namespace is private, so Ray's default port never clashes


def skip_reason() -> Optional[str]:
    """Why Ray tests cannot run on this machine (None when they can)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return 'Ray is not installed (pip install "stamcli[ray]")'
    if os.geteuid() != 0:
        return "creating a loopback-only network namespace for Ray needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is needed for a loopback-only network namespace"
    return None


class LoopbackNamespace:
    """A named network namespace holding only the loopback interface, up."""

    def __init__(self) -> None:
        self.name = f"stam-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            subprocess.run(self.command(["ip", "link", "set", "lo", "up"]), check=True, capture_output=True)
        except BaseException:
            self.close()
            raise

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def env(self, **extra: str) -> dict:
        """The environment for a process in the namespace: this checkout's stamcli, :data:`RAY_ENV`,
        no ``RAY_ADDRESS`` of the caller's."""
        env = {**CHILD_ENV, **RAY_ENV, **extra}
        if "RAY_ADDRESS" not in extra:
            env.pop("RAY_ADDRESS", None)
        return env

    def pids(self) -> list[int]:
        """Every process in the namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def listening(self) -> list[str]:
        """The local addresses of every listening TCP socket in the namespace (``ss -ltn``)."""
        out = subprocess.run(self.command(["ss", "-ltnH"]), check=True, capture_output=True, text=True).stdout
        return [line.split()[3] for line in out.splitlines() if line.strip()]

    def stop_processes(self, timeout_s: float = 2.0) -> None:
        """SIGTERM every process in the namespace, SIGKILL what is left after ``timeout_s`` (Ray's GCS
        server and raylet do not stop on SIGTERM alone; a test cluster has nothing to save)."""
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = self.pids()
            if not pids:
                return

    def close(self) -> None:
        self.stop_processes()
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def __enter__(self) -> "LoopbackNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RayHead:
    """``ray start --head`` inside ``namespace``: a one-node Ray cluster at :attr:`address`."""

    def __init__(self, namespace: LoopbackNamespace, *, num_cpus: int = 2, env: Optional[dict] = None,
                 object_store_bytes: int = OBJECT_STORE_BYTES):
        """``env``: extra environment of the head's processes, which its workers inherit;
        ``object_store_bytes``: the node's object store (tests: :data:`OBJECT_STORE_BYTES`)."""
        self.namespace = namespace
        # Ray's socket paths must stay short (107 bytes), so not under pytest's tmp_path.
        self.temp_dir = tempfile.mkdtemp(prefix="stamray-", dir="/tmp")
        self.address = f"127.0.0.1:{HEAD_PORT}"
        ray = Path(sys.executable).with_name("ray")
        command = namespace.command([
            ray, "start", "--head", "--port", HEAD_PORT, "--node-ip-address", "127.0.0.1",
            "--num-cpus", num_cpus, "--num-gpus", 0, "--object-store-memory", object_store_bytes,
            "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", self.temp_dir,
        ])
        result = subprocess.run(command, env=self.env(**(env or {})), capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            self.close()
            raise RuntimeError(f"ray start --head failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")

    def env(self, **extra: str) -> dict:
        """The environment of a process of this cluster: ``RAY_ADDRESS`` is not set unless given."""
        return self.namespace.env(RAY_TMPDIR=self.temp_dir, **extra)

    def close(self) -> None:
        self.namespace.stop_processes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
