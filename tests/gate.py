"""A real Ctrl-C at a known point of a real ``stam`` process, without racing the clock.

``python tests/gate.py WHERE GO_FILE -- ARGS...`` runs ``stam ARGS...`` in this process (the
ordinary CLI, its signal handling and its writers untouched) but pauses it once at ``WHERE``:

* ``decode:TEXT``: before the file checks of the first video whose path contains ``TEXT``
  (in whichever thread decodes it: a decode worker, or the timeline's decode thread);
* ``step:N``: before the N-th optimiser step (a global optimiser step pre-hook).

When the pause begins the file ``GO_FILE.waiting`` appears; the pause ends when ``GO_FILE``
exists. :func:`ctrl_c_at` waits for that state (and for anything else the test wants written),
sends SIGINT, then lets the process go on, so the signal always lands while the run is still
going, however slow or loaded the machine is. Nothing here decides what the program does with
the signal: a run that ignored it would simply finish (exit 0) and the test would fail.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve()


def _pause(go_file: Path) -> None:
    Path(f"{go_file}.waiting").touch()
    deadline = time.monotonic() + 300
    while not go_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _install(where: str, go_file: Path) -> None:
    kind, _, arg = where.partition(":")
    if kind == "decode":
        from stamcli.decode import clips, files, opencv, pyav

        real, done = files.check_file, []

        def gated_check_file(path) -> None:
            if arg in os.fsdecode(path) and not done:
                done.append(path)
                _pause(go_file)
            real(path)

        for module in (files, clips, opencv, pyav):
            module.check_file = gated_check_file
    elif kind == "step":
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        calls = []

        def hook(optimizer, args, kwargs) -> None:
            calls.append(1)
            if len(calls) == int(arg):
                _pause(go_file)

        register_optimizer_step_pre_hook(hook)
    else:
        raise SystemExit(f"unknown gate {where!r}")


def command(where: str, go_file: Path, *args) -> list[str]:
    """The command line that runs ``stam ARGS`` paused at ``where``."""
    return [sys.executable, str(HERE), where, str(go_file), "--", *map(str, args)]


def ctrl_c_at(where: str, go_file: Path, args, *, env: dict, ready: Optional[Callable[[], bool]] = None,
              timeout_s: float = 240) -> str:
    """Run ``stam ARGS`` paused at ``where``; once paused (and ``ready()``), press Ctrl-C, let it go
    on, and return its stderr. It must exit with 130 and no traceback."""
    from conftest import _start_with_ctrl_c  # not at the top: the paused child runs this file too

    proc = _start_with_ctrl_c(command(where, go_file, *args), env)
    waiting = Path(f"{go_file}.waiting")
    deadline = time.monotonic() + timeout_s
    try:
        while not (waiting.exists() and (ready is None or ready())):
            assert proc.poll() is None, f"ended before the pause: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "never reached the pause"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)  # not a correctness wait: the run must be interrupted however long this is
        go_file.touch()
        _, stderr = proc.communicate(timeout=timeout_s)
    finally:
        go_file.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return stderr


if __name__ == "__main__":
    where, go, dashes, *rest = sys.argv[1:]
    assert dashes == "--", "usage: gate.py WHERE GO_FILE -- ARGS..."
    _install(where, Path(go))
    from stamcli.cli import app

    sys.argv = ["stam", *rest]
    app(prog_name="stam")
