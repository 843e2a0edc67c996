"""Measure stamcli's throughput on this machine and print a Markdown table (and JSON with --json).

    python benchmarks/bench_predict.py                # stam_16 (ViT-B/16, 16 frames), 8 videos
    python benchmarks/bench_predict.py --quick        # a tiny model and 2 short videos (seconds)

Videos are generated (10 s, 640x360, 25 fps, mp4v); model weights are random in the authors'
architecture (speed does not depend on their values). Each figure is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from stamcli import create_model
from stamcli.engine import PredictOptions, Predictor
from stamcli.video import read_clip


def make_video(path: Path, seconds: float, width: int, height: int, fps: int = 25) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for i in range(int(seconds * fps)):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()
    return path


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(args) -> dict:
    if args.quick:
        model = create_model("vit_tiny_patch16_224", frames=4, num_classes=5, img_size=32, depth=1)
        seconds, size, count = 1.0, (160, 90), 2
    else:
        model = create_model("vit_base_patch16_224", frames=16, num_classes=400)
        seconds, size, count = 10.0, (640, 360), args.videos
    model.eval()
    frames, img = model.config.frames, model.config.img_size
    with tempfile.TemporaryDirectory() as tmp:
        videos = [str(make_video(Path(tmp) / f"v{i}.mp4", seconds, *size)) for i in range(count)]
        decode_s = median_time(lambda: read_clip(videos[0], frames, img), args.repeats)
        batch = torch.rand(args.batch_size, frames, 3, img, img)
        with torch.inference_mode():
            model(batch[:1])  # warm-up
            model_s = median_time(lambda: model(batch), args.repeats)
        predictor = Predictor(model, PredictOptions(batch_size=args.batch_size, device="cpu"))
        list(predictor.predict(videos[:1]))  # warm-up
        e2e_s = median_time(lambda: list(predictor.predict(videos)), max(1, args.repeats // 2))
    return {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": f"{model.config.backbone} x {frames} frames ({'tiny' if args.quick else 'stam_16 size'})",
        "decode_ms_per_video": 1000 * decode_s,
        "model_videos_per_s": args.batch_size / model_s,
        "end_to_end_videos_per_s": count / e2e_s,
        "batch_size": args.batch_size,
        "videos": count,
        "video": f"{seconds:g} s {size[0]}x{size[1]} mp4v @25 fps",
    }


def markdown(result: dict) -> str:
    return "\n".join([
        f"Machine: {result['machine']}; model: {result['model']}; videos: {result['video']}.",
        "",
        "| measurement | result |",
        "| --- | --- |",
        f"| frame sampling + preprocessing (F={result['model'].split(' x ')[1].split()[0]}), ms/video | {result['decode_ms_per_video']:.1f} |",
        f"| model only, batch {result['batch_size']}, videos/s | {result['model_videos_per_s']:.3f} |",
        f"| end to end (`Predictor` over {result['videos']} videos), videos/s | {result['end_to_end_videos_per_s']:.3f} |",
    ])


def emit(result: dict, table: str, json_path: Path | None) -> None:
    """Print the Markdown table; with ``--json``, also write the result there."""
    print(table)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, tiny videos (a smoke test)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    result = run(args)
    emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
