"""Epoch time of fine-tuning with the whole model trained vs ``--freeze-backbone`` (cached embeddings).

    python -m benchmarks.bench_finetune            # vit_small_patch16_224 x 8 frames, 16 clips, 3 epochs
    python -m benchmarks.bench_finetune --quick    # a tiny model (seconds)

Clips are generated; the model is a new one on a timm ViT (random weights: speed does not depend on
them). Prints a Markdown table: set-up (data checks, model, and with a frozen backbone the embedding
cache), the first epoch, the median of the later epochs and the whole run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_finetune.py`
    # the script's folder would shadow top-level modules (its cuda.py hides cuda-python's `cuda`)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import cpu_name, write_clip  # noqa: E402

from stamcli import create_model, save_checkpoint  # noqa: E402
from stamcli.train.config import FinetuneConfig  # noqa: E402
from stamcli.train.finetune import finetune  # noqa: E402


def epoch_seconds(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [float(row["seconds"]) for row in csv.DictReader(handle)]


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for i in range(args.clips):
            path = write_clip(root / f"clip{i}.mp4", 2.0 if args.quick else 5.0, 160 if args.quick else 320,
                              120 if args.quick else 240, seed=i)
            rows.append((path.name, "a" if i % 2 else "b"))
        data = root / "clips.csv"
        data.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
        if args.quick:
            model = save_checkpoint(create_model("vit_tiny_patch16_224", frames=4, num_classes=2, img_size=32,
                                                 depth=1, labels=["a", "b"]), root / "tiny.safetensors")
            source = str(model)
        else:
            source = args.backbone
        results = {}
        for frozen in (False, True):
            config = FinetuneConfig(data=str(data), model=source, frames=None if args.quick else 8,
                                    img_size=None if args.quick else 224, epochs=args.epochs, batch_size=4,
                                    val_split=0.0, workers=0, freeze_backbone=frozen, device="cpu",
                                    output=str(root / ("frozen" if frozen else "full")))
            started = time.perf_counter()
            run_dir = finetune(config).run_dir
            total = time.perf_counter() - started
            seconds = epoch_seconds(run_dir)
            results["frozen" if frozen else "full"] = {
                "setup": total - sum(seconds),  # data checks, model, and (frozen) the embedding cache
                "first": seconds[0], "later": statistics.median(seconds[1:]), "total": total,
            }
    return {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "model": "tiny (quick)" if args.quick else f"{args.backbone} x 8 frames, 224 px",
        "clips": args.clips,
        "epochs": args.epochs,
        **results,
        "speedup_later_epochs": results["full"]["later"] / max(results["frozen"]["later"], 1e-9),
    }


def markdown(r: dict) -> str:
    return "\n".join([
        f"Machine: {r['machine']}; model: {r['model']}; {r['clips']} clips, {r['epochs']} epochs, batch 4.",
        "",
        "| training | set-up (s) | first epoch (s) | later epochs, median (s) | whole run (s) |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {title} | {r[k]['setup']:.2f} | {r[k]['first']:.2f} | {r[k]['later']:.3f} | {r[k]['total']:.1f} |"
          for title, k in (("whole model", "full"), ("`--freeze-backbone` (set-up builds the cache)", "frozen"))),
        f"| speed-up per epoch after the first | | | {r['speedup_later_epochs']:.0f}x | |",
    ])


def emit(result: dict, table: str, json_path: Path | None) -> None:
    """Print the Markdown table; with ``--json``, also write the result there."""
    print(table)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backbone", default="vit_small_patch16_224")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.clips, args.epochs = min(args.clips, 4), min(args.epochs, 2)
    result = run(args)
    emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
