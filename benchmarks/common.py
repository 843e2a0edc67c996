"""What every section shares: the run's settings, timing, the machine, generated videos and models.

Videos are H.264 (x264 ``veryfast``, default GOP of 250 frames, B-frames) generated with PyAV
through ``tests/synthetic.py``, like Kinetics clips: 10 s at 640x360, 25 fps, and a 10-minute one.
They are cached under ``OUT/cache`` and reused by later runs. Models are random in the authors'
architecture and file format (speed does not depend on the weights); their head is scaled so
that the softmax is peaked, as a trained model's is ("random peaked weights").
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/run.py` as well as `python -m benchmarks`
    sys.path.insert(0, str(REPO))

from stamcli import create_model  # noqa: E402
from stamcli.model import STAM  # noqa: E402

HEAD_SCALE = 30.0  #: random head weights x this: peaked softmax, like a trained model's


@dataclass(frozen=True)
class ModelSpec:
    """A STAM to measure: its name in the tables and :func:`stamcli.create_model` arguments."""

    title: str
    backbone: str
    frames: int = 16
    img_size: int = 224
    num_classes: int = 400
    overrides: dict = field(default_factory=dict)

    def build(self, seed: int = 0) -> STAM:
        """The model with random peaked weights, in eval mode."""
        torch.manual_seed(seed)
        model = create_model(self.backbone, frames=self.frames, num_classes=self.num_classes,
                             img_size=self.img_size, **self.overrides).eval()
        with torch.no_grad():
            model.head.weight.mul_(HEAD_SCALE)
        model.name = self.title
        return model


def duration_text(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


@dataclass(frozen=True)
class Profile:
    """The sizes a run uses: the full suite, or ``--quick`` (seconds, for CI)."""

    big: ModelSpec  #: stam_16
    small: ModelSpec  #: a small backbone, where decoding matters most
    short_s: float  #: the Kinetics-like clip
    long_s: float  #: the long video
    minute_s: float  #: the longer videos of the second small-backbone end-to-end run
    width: int
    height: int
    fps: int
    videos: int  #: videos in the end-to-end runs
    batch_size: int
    repeats: int

    @property
    def short_title(self) -> str:
        return duration_text(self.short_s)

    @property
    def long_title(self) -> str:
        return duration_text(self.long_s)

    @property
    def video_text(self) -> str:
        return f"{self.width}x{self.height} H.264 at {self.fps} fps"


FULL = Profile(
    big=ModelSpec("stam_16 (ViT-B/16 x 16 frames)", "vit_base_patch16_224"),
    small=ModelSpec("ViT-Ti/16 x 16 frames", "vit_tiny_patch16_224"),
    short_s=10.0, long_s=600.0, minute_s=60.0, width=640, height=360, fps=25, videos=32, batch_size=8, repeats=3,
)
_TINY = dict(embed_dim=64, num_heads=2, temporal_layers=1, temporal_ff=128)
QUICK = Profile(
    big=ModelSpec("tiny stand-in for stam_16", "vit_tiny_patch16_224", frames=16, img_size=32,
                  num_classes=5, overrides=dict(_TINY, depth=2)),
    small=ModelSpec("tiny stand-in for the small backbone", "vit_tiny_patch16_224", frames=16, img_size=32,
                    num_classes=5, overrides=dict(_TINY, depth=1)),
    short_s=1.0, long_s=6.0, minute_s=3.0, width=160, height=90, fps=25, videos=3, batch_size=2, repeats=1,
)


@dataclass
class Context:
    """One run of the suite: its profile, output folder and the videos it generated."""

    profile: Profile
    out: Path
    quick: bool
    log: Callable[[str], None] = print
    compile: bool = False  #: also measure torch.compile (model and CUDA sections)
    memo: dict = field(default_factory=dict)  #: results shared between sections of the run

    @property
    def cache(self) -> Path:
        path = self.out / "cache"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def short_video(self, seed: int = 0) -> Path:
        return make_video(self.cache, self.profile, self.profile.short_s, seed, self.log)

    def long_video(self) -> Path:
        return make_video(self.cache, self.profile, self.profile.long_s, 0, self.log)

    def clip_videos(self, seconds: float | None = None) -> list[Path]:
        """An end-to-end set: ``profile.videos`` different videos, ``seconds`` long (the short clip's
        length by default)."""
        seconds = self.profile.short_s if seconds is None else seconds
        return [make_video(self.cache, self.profile, seconds, seed, self.log) for seed in range(self.profile.videos)]


def child_env() -> dict:
    """The environment for a child Python process that imports this checkout's stamcli and benchmarks."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


# ---------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------- the machine


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    """CPU model, cores, torch and its threads, the GPU if any."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "gpu": gpu, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def machine_text(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
            f"GPU: {m['gpu'] or 'none'}; {m['date']}")


# ---------------------------------------------------------------------------- videos


def _frames(count: int, seed: int, width: int, height: int):
    """BGR frames of a smooth random texture panning sideways (cheap to make, real motion)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 4), 3), dtype=np.uint8)
    base = cv2.resize(small, (2 * width, height), interpolation=cv2.INTER_CUBIC)
    for i in range(count):
        x = (3 * i) % width
        yield base[:, x : x + width]


def write_clip(path: Path, seconds: float, width: int, height: int, fps: int = 25, seed: int = 0) -> Path:
    """Write a ``seconds``-long H.264 video (x264 veryfast) of a panning random texture."""
    from tests.synthetic import write_video_av

    return write_video_av(path, _frames(round(seconds * fps), seed, width, height), fps=fps,
                          options={"preset": "veryfast"})


def make_video(folder: Path, profile: Profile, seconds: float, seed: int, log=print) -> Path:
    """A cached ``seconds``-long H.264 video of ``profile``'s size (generated on first use)."""
    name = f"h264_{profile.width}x{profile.height}_{profile.fps}fps_{seconds:g}s_seed{seed}.mp4"
    path = folder / name
    if not path.exists():
        if seconds >= 60:
            log(f"generating {name} (once; cached in {folder})")
        tmp = path.with_suffix(".part.mp4")
        write_clip(tmp, seconds, profile.width, profile.height, profile.fps, seed)
        tmp.replace(path)
    return path


def save_authors_checkpoint(model: STAM, path: Path) -> Path:
    """``model`` in the authors' file format (what ``stam predict --model FILE.pth`` reads)."""
    from tests.conftest import save_authors_checkpoint as save

    return save(model, path)
