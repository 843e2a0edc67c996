"""Shot detection: which PySceneDetect detector and threshold, and what detection costs next to tagging.

    python -m benchmarks.shots accuracy [--out DIR]   # detectors x thresholds x widths on generated videos
    python -m benchmarks.shots cost [--out DIR] [--seconds S]  # seconds per minute of video: detection vs tagging

``accuracy`` decodes each video of ``tests/synthetic.SHOT_SUITE`` (320x180 H.264, 25 fps) once with
stamcli's decoder, then feeds the same frames to every detector configuration through
:class:`stamcli.shots.ShotDetector`.  A hard cut is *found* when a reported cut is within one frame
of it (``exact``: on the frame); a reported cut outside every transition (one frame of slack) is
*false*; a gradual transition that gets more than one cut is *split*; cuts the detector reported
that :class:`~stamcli.shots.ShotDetector`'s flash check dropped are counted apart (a flash
within a shot is no cut).  Results go to
``OUT/shots_accuracy.md``.

``cost`` times, on a 1-minute 640x360 H.264 video with a cut every 4 s (``--seconds`` for
another length): decoding every frame, the detection alone (:func:`stamcli.shots.detect_shots`),
reading fixed 4 s windows and the shot windows (:class:`stamcli.timeline.TimelineReader`, in one
pass and in two), and a small and a stam_16-sized model on the shot windows (random weights:
speed does not depend on them).  ``OUT/shots_cost.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from stamcli.shots import DETECTORS, ShotDetector, ShotOptions, shrink  # noqa: E402
from tests.synthetic import SHOT_SUITE, ShotSpec, ShotTruth, write_shot_video  # noqa: E402

#: (detector, extra detector arguments, thresholds) measured; PySceneDetect's defaults are among them.
GRID = (
    ("content", (), (15.0, 20.0, 27.0, 35.0)),
    ("adaptive", (("min_content_val", 15.0),), (2.0, 3.0, 4.0)),
    ("adaptive", (("min_content_val", 10.0),), (2.0, 3.0, 4.0)),
    ("histogram", (), (0.02, 0.05, 0.1, 0.2)),
    ("hash", (), (0.25, 0.35, 0.395, 0.45)),
    ("threshold", (), (12.0,)),
)
WIDTH = 256
#: other widths, measured with the chosen detector only
OTHER_WIDTHS = (128, 64)
CHOSEN = ("adaptive", (("min_content_val", 10.0),), 3.0)
#: x264 qualities each video is encoded at (23 is x264's default; 30 smooths low-contrast detail away)
CRFS = (18, 23, 30)
MIN_SHOT_S = 0.5


@dataclass
class Score:
    cuts: int = 0  #: hard cuts in the videos
    found: int = 0  #: within one frame
    exact: int = 0  #: on the frame
    false: int = 0  #: reported outside every transition
    transitions: int = 0  #: gradual transitions
    split: int = 0  #: gradual transitions with more than one cut
    flashes: int = 0  #: cuts the detector reported that the flash check dropped
    seconds: float = 0.0  #: detection time (shared machine: indicative only)
    frames: int = 0

    def add(self, truth: ShotTruth, reported: list[int]) -> None:
        self.cuts += len(truth.cuts)
        used = set()
        for cut in truth.cuts:
            near = [r for r in reported if abs(r - cut) <= 1]
            self.found += bool(near)
            self.exact += cut in reported
            used.update(near)
        for a, b in truth.fades:
            inside = [r for r in reported if a - 1 <= r <= b + 1]
            self.transitions += 1
            self.split += len(inside) > 1
            used.update(inside)
        self.false += sum(r not in used for r in reported)


def decoded_frames(path: Path) -> tuple[float, list]:
    """Every frame of ``path`` (BGR, full size) with stamcli's decoder, and the fps."""
    from stamcli.decode import SparseFrameStream

    with SparseFrameStream(path) as stream:
        return stream.fps, [bgr for _, bgr in stream.every_frame()]


def accuracy(out: Path, log=print) -> str:
    videos = {}
    for k, (name, shots) in enumerate(SHOT_SUITE.items()):
        for crf in CRFS:
            path = out / "cache" / f"shots_{k}_crf{crf}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            truth = write_shot_video(path, shots, fps=25, options={
                "preset": "veryfast", "crf": str(crf), "x264-params": "threads=1:lookahead-threads=1"})
            videos[f"{name} (crf {crf})"] = (truth, *decoded_frames(path))
        log(f"{name}: {truth.frames} frames, cuts {list(truth.cuts)}, transitions {list(truth.fades)}")
    rows = []
    configs = [(WIDTH, d, args, t) for d, args, ts in GRID for t in ts] + [(w, *CHOSEN) for w in OTHER_WIDTHS]
    for width, detector, args, threshold in configs:
        options = ShotOptions(detector, threshold, MIN_SHOT_S, width, args)
        score, per_video = Score(), []
        for name, (truth, fps, frames) in videos.items():
            d = ShotDetector(fps, options)
            start = time.perf_counter()
            for frame in frames:
                d.push(frame)
            reported = [s.start for s in d.shots()[1:]]
            score.seconds += time.perf_counter() - start
            score.frames += len(frames)
            score.flashes += len(d.flashes)
            before = (score.found, score.false, score.split)
            score.add(truth, reported)
            if (score.found - before[0], score.false - before[1], score.split - before[2]) != (
                    len(truth.cuts), 0, 0):
                per_video.append(f"{name}: {reported}")
        title = detector + "".join(f", {k} {v:g}" for k, v in args)
        rows.append((width, title, threshold, score, per_video))
        log(f"{width:4d} {title:10s} {threshold:6g}  found {score.found}/{score.cuts} "
            f"(exact {score.exact}) false {score.false} split {score.split}/{score.transitions}")
    lines = ["| width | detector | threshold | hard cuts found (on the frame) | false cuts | transitions split "
             "| dropped as flashes | ms per frame |", "|---|---|---|---|---|---|---|---|"]
    for width, detector, threshold, s, _ in rows:
        default = " (default)" if threshold == DETECTORS[detector.split(",")[0]][1] else ""
        lines.append(f"| {width} | {detector} | {threshold:g}{default} | {s.found}/{s.cuts} ({s.exact}) | {s.false} | "
                     f"{s.split}/{s.transitions} | {s.flashes} | {1000 * s.seconds / max(s.frames, 1):.2f} |")
    lines += ["", "Misses, false or split cuts (reported first frames of shots):", ""]
    for width, detector, threshold, _, per_video in rows:
        for text in per_video:
            lines.append(f"- {width} {detector} {threshold:g}: {text}")
    text = "\n".join(lines) + "\n"
    (out / "shots_accuracy.md").write_text(text)
    return text


COST_SCENES = ("red", "grey_stripes", "pan_a", "green", "dark_a", "blue", "grey_checker", "yellow")


def cost(out: Path, seconds: float = 60.0, shot_s: float = 4.0, width: int = 640, height: int = 360,
         quick: bool = False, log=print) -> str:
    """Seconds per minute of video: finding the shots and reading their windows, next to fixed
    windows and to the model that tags them."""
    import torch

    from benchmarks.common import FULL, QUICK, machine, machine_text, median_time
    from stamcli.decode import SparseFrameStream
    from stamcli.shots import detect_shots
    from stamcli.timeline import ShotWindows, TimelineReader

    fps = 25
    path = out / "cache" / f"shots_cost_{width}x{height}_{seconds:g}s.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        n_shots = round(seconds / shot_s)
        shots = [ShotSpec(COST_SCENES[k % len(COST_SCENES)], round(shot_s * fps)) for k in range(n_shots)]
        log(f"generating {path.name}")
        write_shot_video(path, shots, fps=fps, height=height, width=width, options={"preset": "veryfast"})
    minutes = seconds / 60
    rows = []
    profile = QUICK if quick else FULL
    repeats = 1 if quick else 3

    def decode_all():
        with SparseFrameStream(path) as stream:
            for _ in stream.every_frame():
                pass

    found = detect_shots(path)
    log(f"{len(found.shots)} shots")
    rows.append(("decode every frame (PyAV), no detector", median_time(decode_all, repeats)))
    for w in (256, 128):
        rows.append((f"shot detection alone: decode every frame + shrink to {w} px + AdaptiveDetector",
                     median_time(lambda w=w: detect_shots(path, ShotOptions(width=w)), repeats)))

    def read(frames, size, window_s=None, shots=None):
        reader = TimelineReader(path, frames, size, window_s, shots=shots)
        return [clip.frames for _, clip in reader]

    for spec in (profile.small, profile.big):
        f, size = spec.frames, spec.img_size
        rows.append((f"fixed {shot_s:g} s windows, {f} frames each at {size} px (no shot detection)",
                     median_time(lambda: read(f, size, window_s=shot_s), repeats)))
        rows.append((f"--window shots, one pass (detection; the open shot's decoded frames kept), {f} frames at {size} px",
                     median_time(lambda: read(f, size, shots=ShotWindows()), repeats)))
        rows.append((f"--window shots, two passes (detection, then the sampled frames), {f} frames at {size} px",
                     median_time(lambda: read(f, size, shots=ShotWindows(buffer_mb=0)), repeats)))
        clips = read(f, size, shots=ShotWindows())
        model = spec.build()

        def run_model(clips=clips, model=model):
            with torch.inference_mode():
                for k in range(0, len(clips), 8):
                    model(torch.stack(clips[k:k + 8]).float().div_(255))

        rows.append((f"model on the shot windows: {spec.title}, batch 8",
                     median_time(run_model, 1 if spec is FULL.big else repeats)))
    lines = [f"{width}x{height} H.264 at {fps} fps, {seconds:g} s, a cut every {shot_s:g} s "
             f"({len(found.shots)} shots); {machine_text(machine())}", "",
             "| step | seconds per minute of video |", "|---|---|"]
    lines += [f"| {name} | {t / minutes:.2f} |" for name, t in rows]
    text = "\n".join(lines) + "\n"
    (out / "shots_cost.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shots", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["accuracy", "cost"])
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"))
    parser.add_argument("--seconds", type=float, default=60.0, help="cost: length of the generated video")
    parser.add_argument("--quick", action="store_true", help="cost: tiny models, 160x90, one repeat (a smoke test)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "accuracy":
        print(accuracy(args.out))
    else:
        size = dict(width=160, height=90) if args.quick else {}
        print(cost(args.out, seconds=args.seconds, quick=args.quick, **size))


if __name__ == "__main__":
    main()
