"""Section ``memory``: peak RSS of a ``stam predict`` process on the short and on the long video.

Each run is a child process (``python -m stamcli predict VIDEO --model CKPT``). Its peak RSS is
the ``VmHWM`` of ``/proc/PID/status``, read every 20 ms while it runs: ``getrusage``/``wait4``'s
``ru_maxrss`` would not do, because Linux folds the *parent's* RSS at fork/exec time into the
child's. Decoding keeps only the sampled frames, so the peak must not grow with the video's length.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from .common import Context, child_env
from .e2e import checkpoint


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            match = re.search(r"^VmHWM:\s+(\d+) kB", handle.read(), re.M)
    except OSError:  # gone already
        return 0
    return int(match.group(1)) if match else 0


def peak_rss_mb(args: list[str], poll_s: float = 0.02) -> float:
    """Run ``python args...`` with this checkout's stamcli; its peak RSS in MiB (error if it fails)."""
    if not os.path.exists(f"/proc/{os.getpid()}/status"):
        raise RuntimeError("peak RSS is read from /proc (Linux only)")
    child = subprocess.Popen([sys.executable, *args], env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while child.poll() is None:
        peak = max(peak, _hwm_kib(child.pid))
        time.sleep(poll_s)
    error = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({child.returncode}): {error[-500:]}")
    return peak / 1024


def run(ctx: Context) -> dict:
    p = ctx.profile
    ckpt = checkpoint(ctx, p.big)
    rows = []
    for title, video in ((p.short_title, ctx.short_video()), (p.long_title, ctx.long_video())):
        out = ctx.out / "memory_predictions.jsonl"
        rss = peak_rss_mb(["-m", "stamcli", "predict", str(video), "--model", str(ckpt), "--device", "cpu",
                           "--output", str(out), "--quiet"])
        out.unlink(missing_ok=True)
        rows.append({"video": title, "path": video.name, "peak_rss_mb": rss})
    return {"model": p.big.title, "rows": rows, "growth_mb": rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]}


def markdown(r: dict) -> str:
    lines = [f"Peak memory (RSS) of one `stam predict` process, {r['model']}, fp32 on the CPU:", "",
             "| video | peak RSS (MiB) |", "| --- | --- |"]
    lines += [f"| {row['video']} | {row['peak_rss_mb']:.0f} |" for row in r["rows"]]
    lines.append(f"| growth from the short to the long video | {r['growth_mb']:+.0f} |")
    return "\n".join(lines)
