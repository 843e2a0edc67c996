"""Run the benchmark suite on this machine; write ``results.md`` and ``results.json`` to ``--out``.

    python -m benchmarks                     # everything (about 25 minutes on 2 idle CPU cores)
    python -m benchmarks --quick             # tiny sizes, seconds: a smoke test (CI)
    python -m benchmarks --only decode e2e   # some sections

Sections: decode (frame sampling vs full decoding), model (model only vs the matmul ceiling,
int8), e2e (``stam predict`` vs model only vs the authors'-style pipeline), memory (peak RSS),
cuda (bf16 on a GPU; skipped without one). Comparisons are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    # the script's folder would shadow top-level modules (its cuda.py hides cuda-python's `cuda`)
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import torch  # noqa: E402

from benchmarks import cuda, decode, e2e, memory, model  # noqa: E402
from benchmarks.common import FULL, QUICK, Context, machine, machine_text  # noqa: E402

SECTIONS = {"decode": decode, "model": model, "e2e": e2e, "memory": memory, "cuda": cuda}


def run_suite(out: Path, quick: bool = False, only=None, compile: bool = False, log=print) -> dict:
    """Run the chosen sections; the results (also written to ``out``/results.json and .md)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(QUICK if quick else FULL, out, quick, log, compile)
    results = {"machine": machine(), "quick": quick, "sections": {}, "seconds": {}}
    for name in only or SECTIONS:
        log(f"[{time.strftime('%H:%M:%S')}] {name} ...")
        started = time.perf_counter()
        results["sections"][name] = SECTIONS[name].run(ctx)
        results["seconds"][name] = time.perf_counter() - started
        (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    parts = [f"Machine: {machine_text(results['machine'])}" + (" (--quick: tiny sizes)" if results["quick"] else "")]
    parts += [SECTIONS[name].markdown(r) for name, r in results["sections"].items()]
    total = sum(results["seconds"].values())
    parts.append(f"Suite time: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items()) + ").")
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models and videos (seconds; for CI)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="where results.md, results.json and the cached videos go (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (model and CUDA sections)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = run_suite(args.out, args.quick, args.only, args.compile, log=lambda s: print(s, file=sys.stderr))
    print(markdown(results), end="")


if __name__ == "__main__":
    main()
