"""Generators of small synthetic test videos (and of broken files) for the test suite.

Frames are numpy ``uint8`` arrays of shape ``(H, W, 3)`` in **BGR** order (OpenCV's order);
writers that go through PyAV convert them.  The central pattern of :func:`index_frame` encodes
the frame's own number, so a test can check exactly which source frames a reader returned:
:func:`decode_index` reads it back from a decoded frame, :func:`decode_clip_index` from a frame
that went through stamcli's resize + centre crop.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

GRID = 4  #: the index pattern is a GRID x GRID board of black/white cells
DATA_BITS = 12  #: frame numbers 0..4095; the remaining 4 cells hold a checksum
PATTERN_FRAC = 0.7  #: the board is a centred square of this fraction of the shorter side
CROP_FRAC = 224 / 256  #: stamcli keeps this fraction of the (resized) shorter side

# ---------------------------------------------------------------------------- index frames


def _checksum(i: int) -> int:
    return (i ^ (i >> 4) ^ (i >> 8) ^ 0x5) & 0xF


def _bits(i: int) -> list[int]:
    if not 0 <= i < 2**DATA_BITS:
        raise ValueError(f"index {i} does not fit in {DATA_BITS} bits")
    word = i | (_checksum(i) << DATA_BITS)
    return [(word >> b) & 1 for b in range(GRID * GRID)]


def _board(height: int, width: int, frac: float) -> tuple[int, int, float]:
    """Top, left and cell size (float) of the centred pattern board."""
    side = frac * min(height, width)
    return (height - side) / 2, (width - side) / 2, side / GRID


def index_frame(i: int, height: int, width: int) -> np.ndarray:
    """A BGR frame whose central board of large black/white cells encodes ``i``.

    The background is a coloured gradient that shifts with ``i`` (so that frames differ outside
    the board too and codecs have real motion to encode).  The board sits in the centred square
    of side ``PATTERN_FRAC * min(height, width)``, which survives any centre crop of the kind
    stamcli makes, whatever the aspect ratio.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 255 // max(width - 1, 1) + 3 * i) % 256
    img[..., 1] = (yy * 255 // max(height - 1, 1) + 5 * i) % 256
    img[..., 2] = 128
    top, left, cell = _board(height, width, PATTERN_FRAC)
    for k, bit in enumerate(_bits(i)):
        r, c = divmod(k, GRID)
        y0, y1 = round(top + r * cell), round(top + (r + 1) * cell)
        x0, x1 = round(left + c * cell), round(left + (c + 1) * cell)
        img[y0:y1, x0:x1] = 255 if bit else 0
    return img


def _as_hwc(img) -> np.ndarray:
    a = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:  # CHW (torch layout)
        a = a.transpose(1, 2, 0)
    return a


def decode_index(img, frac: float = PATTERN_FRAC) -> int:
    """Read back the number written by :func:`index_frame` (BGR or RGB, HWC or CHW).

    ``frac`` is the fraction of the shorter side the board covers in ``img``.  Raises
    ``ValueError`` when the checksum does not match (not an index frame, or wrong geometry).
    """
    a = _as_hwc(img).astype(np.float32).mean(axis=2)
    top, left, cell = _board(a.shape[0], a.shape[1], frac)
    word = 0
    for k in range(GRID * GRID):
        r, c = divmod(k, GRID)
        cy, cx = top + (r + 0.5) * cell, left + (c + 0.5) * cell
        h = max(cell * 0.25, 0.5)
        patch = a[int(cy - h) : int(np.ceil(cy + h)), int(cx - h) : int(np.ceil(cx + h))]
        if patch.size == 0:
            raise ValueError("image too small to hold an index board")
        word |= int(patch.mean() >= 128) << k
    i = word & (2**DATA_BITS - 1)
    if word >> DATA_BITS != _checksum(i):
        raise ValueError(f"no valid index pattern (bits {word:016b})")
    return i


def decode_clip_index(frame) -> int:
    """:func:`decode_index` for a frame that went through stamcli's resize + centre crop."""
    return decode_index(frame, PATTERN_FRAC / CROP_FRAC)


def quadrant_frame(height: int, width: int) -> np.ndarray:
    """A BGR frame in four solid quadrants: top-left red, top-right green,
    bottom-left blue, bottom-right white.  Used to see which way up a frame comes out."""
    img = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    img[:h2, :w2] = (0, 0, 255)
    img[:h2, w2:] = (0, 255, 0)
    img[h2:, :w2] = (255, 0, 0)
    img[h2:, w2:] = (255, 255, 255)
    return img


QUADRANT_NAMES = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue", (255, 255, 255): "white"}


def quadrant_colors(frame_rgb) -> tuple[str, str, str, str]:
    """Colour names of the (top-left, top-right, bottom-left, bottom-right) quadrants of an
    **RGB** frame (HWC or CHW), each snapped to the nearest of red/green/blue/white."""
    a = _as_hwc(frame_rgb).astype(np.float32)
    h, w = a.shape[:2]
    out = []
    for ys, xs in [((0, h // 2), (0, w // 2)), ((0, h // 2), (w // 2, w)),
                   ((h // 2, h), (0, w // 2)), ((h // 2, h), (w // 2, w))]:
        dy, dx = (ys[1] - ys[0]) // 4, (xs[1] - xs[0]) // 4  # keep away from the edges
        mean = a[ys[0] + dy : ys[1] - dy, xs[0] + dx : xs[1] - dx].reshape(-1, 3).mean(0)
        best = min(QUADRANT_NAMES, key=lambda c: float(((mean - np.array(c)) ** 2).sum()))
        out.append(QUADRANT_NAMES[best])
    return tuple(out)


# ---------------------------------------------------------------------------- writers


BANDS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}  #: BGR colours of :func:`band_frame`


def band_frame(height: int, width: int) -> np.ndarray:
    """Three equal solid bands along the longer side: red, green, blue (left to right, or top to bottom)."""
    img = np.zeros((height, width, 3), np.uint8)
    long_side = max(height, width)
    for k, bgr in enumerate(BANDS.values()):
        lo, hi = k * long_side // 3, (k + 1) * long_side // 3
        if width >= height:
            img[:, lo:hi] = bgr
        else:
            img[lo:hi, :] = bgr
    return img


def write_video(path, frames: Iterable[np.ndarray], fps: float = 25, fourcc: str = "mp4v") -> Path:
    """Write BGR frames with OpenCV's VideoWriter (``mp4v``, ``MJPG``, ``XVID``, ``FFV1``...)."""
    import cv2

    path = Path(path)
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write fourcc {fourcc!r} to {path.name}")
    try:
        writer.write(np.ascontiguousarray(first))
        for f in it:
            writer.write(np.ascontiguousarray(f))
    finally:
        writer.release()
    return path


def write_video_av(path, frames: Iterable[np.ndarray], fps: float = 25, codec: str = "libx264", *,
                   rotation: int | None = None, pts: Sequence[int] | None = None,
                   time_base: Fraction | None = None, options: dict | None = None,
                   container_options: dict | None = None, pix_fmt: str | None = None) -> Path:
    """Write BGR frames with PyAV (H.264 with B-frames, rotation metadata, VFR timestamps...).

    ``rotation`` is the display rotation in degrees counter-clockwise (PyAV's convention);
    ``pts`` gives explicit timestamps in ``time_base`` units (variable frame rate).
    ``pix_fmt`` defaults to 4:2:0 (even sizes only: odd ones are cropped); use e.g.
    ``codec="ffv1", pix_fmt="bgr0"`` for odd sizes, lossless.
    """
    import av

    path = Path(path)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
        even = stream.pix_fmt.endswith("420p")
        stream.width, stream.height = (w - w % 2, h - h % 2) if even else (w, h)
        if time_base is not None:
            stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for k, img in enumerate([first, *frames]):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: stream.height, : stream.width]),
                                               format="bgr24")
            if pts is not None:
                frame.pts = int(pts[k])
                frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_index_video(path, n: int, height: int = 48, width: int = 64, fps: float = 25,
                      fourcc: str = "mp4v", *, codec: str | None = None, **av_kwargs) -> Path:
    """A video of ``n`` :func:`index_frame` frames; with ``codec`` it is written by PyAV
    (e.g. ``codec="libx264"``; ``av_kwargs`` go to :func:`write_video_av`), else by OpenCV."""
    frames = (index_frame(i, height, width) for i in range(n))
    if codec:
        return write_video_av(path, frames, fps, codec, **av_kwargs)
    return write_video(path, frames, fps, fourcc)


def write_raw_h264(path, n: int = 40, height: int = 48, width: int = 64, fps: float = 25) -> Path:
    """A raw H.264 elementary stream (``.h264``) of ``n`` index frames, no B-frames: OpenCV reads it,
    PyAV cannot (its packets have no timestamps to order frames by)."""
    import av

    path = Path(path)
    src = write_index_video(path.with_suffix(".src.mp4"), n, height, width, fps, codec="libx264",
                            options={"bf": "0"})
    with av.open(str(src)) as inp, av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = stream
                packet.pts = packet.dts = None
                out.mux(packet)
    src.unlink()
    return path


# ---------------------------------------------------------------------------- broken files


def write_empty(path) -> Path:
    """A 0-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_text(path) -> Path:
    """A text file (with a video extension, if ``path`` has one)."""
    path = Path(path)
    path.write_text("this is not a video\n" * 50)
    return path


def write_truncated(src, dst, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of the bytes of ``src``, as if a download or copy was cut off."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_corrupted(src, dst, start: float = 0.4, length: float = 0.2, seed: int = 0) -> Path:
    """``src`` with random bytes written over ``length`` of it starting at ``start`` (fractions)."""
    data = bytearray(Path(src).read_bytes())
    a, b = int(len(data) * start), int(len(data) * (start + length))
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def write_audio_only(path, seconds: float = 0.5, codec: str = "aac", rate: int = 16000) -> Path:
    """A file holding only an audio stream (a sine tone), e.g. AAC in ``.mp4``/``.m4a``."""
    import av

    path = Path(path)
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with av.open(str(path), "w", format="mp4" if path.suffix in (".mp4", ".m4a", ".mov") else None) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = stream.codec_context.format.name
        chunk = 1024
        for s in range(0, len(samples), chunk):
            part = samples[s : s + chunk]
            if fmt == "s16" or fmt == "s16p":
                part = (part * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(part[None, :], format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = s
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_unreadable(path) -> Path:
    """Drop all permissions on ``path`` (tests should skip this case when running as root)."""
    os.chmod(path, 0)
    return Path(path)


# ---------------------------------------------------------------------------- temporal-order dataset

MOTION_CLASSES = ("left", "right", "up", "down", "grow", "shrink")
#: each class and the class whose videos are its own frames in reverse order
MOTION_PAIRS = {"right": "left", "down": "up", "shrink": "grow"}


def motion_frames(kind: str, frames: int = 16, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """BGR frames of a bright filled square on a dark, slightly noisy background.

    ``left``/``up`` move it across the frame, ``grow`` grows it from a point; ``right``, ``down``
    and ``shrink`` are exactly the frames of ``left``, ``up`` and ``grow`` with the same ``seed``
    in reverse order, so each pair has the same frames up to order. The colour, the start
    position, the path and the background noise come from ``seed``. The object stays inside the
    central 80% of the frame, which any of stamcli's centre crops keeps.
    """
    if kind in MOTION_PAIRS:
        return motion_frames(MOTION_PAIRS[kind], frames, size, seed)[::-1]
    if kind not in MOTION_CLASSES:
        raise ValueError(f"unknown motion {kind!r}; expected one of {', '.join(MOTION_CLASSES)}")
    rng = np.random.default_rng(seed)
    colour = rng.integers(150, 256, 3)
    colour[rng.integers(3)] = 255  # always one saturated channel: bright on any background
    lo, hi = 0.1 * size, 0.9 * size  # the object's extent stays within [lo, hi]
    half = 0.1 * size  # half side of the moving square
    t = np.linspace(0.0, 1.0, frames)
    if kind == "grow":
        cy, cx = rng.uniform(0.4 * size, 0.6 * size, 2)
        halves = 0.04 * size + t * (min(cy, cx, size - cy, size - cx) - lo - 0.04 * size)
        centres = [(cy, cx)] * frames
    else:
        across = rng.uniform(lo + half, hi - half)  # the fixed coordinate
        start = rng.uniform(hi - half - 0.05 * size, hi - half)  # moving from high to low coordinates
        travel = rng.uniform(0.45, 0.55) * size
        along = start - t * travel
        centres = [(a, across) if kind == "up" else (across, a) for a in along]
        halves = np.full(frames, half)
    out = []
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for (cy, cx), h in zip(centres, halves):
        img = rng.integers(10, 30, (size, size, 3)).astype(np.uint8)
        inside = (np.abs(yy - cy) <= h) & (np.abs(xx - cx) <= h)
        img[inside] = colour
        out.append(img)
    return out


def write_motion_video(path, kind: str, frames: int = 16, size: int = 48, seed: int = 0,
                       fourcc: str = "mp4v") -> Path:
    """A video of :func:`motion_frames` (``left``, ``right``, ``up``, ``down``, ``grow`` or ``shrink``)."""
    return write_video(path, motion_frames(kind, frames, size, seed), 25, fourcc)


def write_motion_dataset(root, per_class: int = 20, frames: int = 16, size: int = 48, seed: int = 0) -> Path:
    """A temporal-order dataset: ``root/<class>/<class>_<i>.avi`` for the six
    :data:`MOTION_CLASSES` and ``root/labels.csv`` (``path,label`` header, paths relative to
    ``root``). Video ``i`` of ``right`` is video ``i`` of ``left`` reversed in time (likewise
    ``down``/``up`` and ``shrink``/``grow``), so only the order of the frames tells a pair's
    classes apart. Returns ``root``.

    The clips are MJPG (every frame compressed on its own): with an inter-frame codec such as
    mp4v the key frame is sharper than the rest, which marks where a clip starts and lets a model
    tell the direction even from shuffled frames."""
    import csv

    root = Path(root)
    rows = []
    for kind in MOTION_CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        pair = MOTION_CLASSES.index(MOTION_PAIRS.get(kind, kind)) // 2
        for i in range(per_class):
            name = f"{kind}/{kind}_{i}.avi"
            write_motion_video(root / name, kind, frames, size, seed=[seed, pair, i], fourcc="MJPG")
            rows.append((name, kind))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("path", "label"))
        writer.writerows(rows)
    return root


# ---------------------------------------------------------------------------- shot videos (cuts and fades)


from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class Scene:
    """A procedural shot: a ``pattern`` of amplitude ``contrast`` around a mean BGR ``colour``,
    moving ``velocity`` = (down, right) pixels per frame, with a little sensor noise per frame.

    Patterns: ``stripes`` (at ``angle`` degrees, ``period`` pixels), ``checker`` (squares of
    ``period``), ``blobs`` (smooth random texture, features about ``period`` pixels), ``flat``.
    Every pattern has mean 0, so scenes with the same ``colour`` have the same mean colour.
    """

    colour: tuple[int, int, int]
    pattern: str = "stripes"
    contrast: float = 50.0
    velocity: tuple[float, float] = (0.0, 1.0)
    period: float = 24.0
    angle: float = 0.0
    seed: int = 0

    def texture(self, height: int, width: int) -> np.ndarray:
        """The still pattern, float32 in [-1, 1], periodic (it wraps as it moves)."""
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        if self.pattern == "stripes":
            a = np.deg2rad(self.angle)
            return np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / self.period)
        if self.pattern == "checker":
            cells = (np.floor(xx / self.period) + np.floor(yy / self.period)) % 2
            return (2 * cells - 1).astype(np.float32)
        if self.pattern == "blobs":
            import cv2

            rng = np.random.default_rng(self.seed)
            small = rng.uniform(-1, 1, (max(2, round(height / self.period)), max(2, round(width / self.period))))
            big = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
            big -= big.mean()
            return np.clip(big / max(np.abs(big).max(), 1e-6), -1, 1)
        if self.pattern == "flat":
            return np.zeros((height, width), np.float32)
        raise ValueError(f"unknown pattern {self.pattern!r}")

    def frames(self, count: int, height: int, width: int, start: int = 0):
        """``count`` BGR uint8 frames of the scene from its frame ``start`` (float32 before rounding)."""
        base = self.texture(height, width)
        colour = np.asarray(self.colour, np.float32)
        rng = np.random.default_rng([self.seed, start, 7])
        for t in range(start, start + count):
            dy, dx = round(self.velocity[0] * t), round(self.velocity[1] * t)
            tex = np.roll(base, (dy, dx), axis=(0, 1))
            img = colour + self.contrast * tex[..., None] + rng.normal(0, 2.0, (height, width, 1))
            yield np.clip(img, 0, 255)


#: Named scenes of the shot-detection videos: different colours; textures of the same mean grey;
#: fast pans; dark, low-contrast scenes. ``SCENE_PAIRS_SIMILAR`` lists cuts that are hard to see.
SCENES: dict[str, Scene] = {
    "red": Scene((40, 50, 200), "stripes", 40, (0, 1.5), 28, 20, seed=1),
    "green": Scene((60, 190, 60), "checker", 40, (1.0, 0), 20, seed=2),
    "blue": Scene((200, 80, 40), "blobs", 60, (0.5, 1.0), 30, seed=3),
    "yellow": Scene((40, 200, 210), "stripes", 40, (0, -1.0), 18, 100, seed=4),
    "grey_stripes": Scene((128, 128, 128), "stripes", 70, (0, 2.0), 24, 45, seed=5),
    "grey_checker": Scene((128, 128, 128), "checker", 70, (0, 2.0), 24, seed=6),
    "grey_blobs": Scene((128, 128, 128), "blobs", 70, (1.0, 1.0), 24, seed=7),
    "pan_a": Scene((70, 120, 160), "blobs", 70, (0, 6.0), 20, seed=8),
    "pan_b": Scene((70, 120, 160), "blobs", 70, (0, 6.0), 20, seed=9),
    "whip_pan": Scene((90, 140, 120), "blobs", 80, (2.0, 14.0), 16, seed=13),
    "dark_a": Scene((22, 22, 26), "stripes", 10, (0, 1.0), 24, 0, seed=10),
    "dark_b": Scene((22, 22, 26), "checker", 10, (0, 1.0), 24, seed=11),
    "dark_c": Scene((30, 20, 18), "blobs", 12, (0.5, 0.5), 24, seed=12),
}


@dataclass(frozen=True)
class ShotSpec:
    """One shot of a generated video: ``frames`` of ``scene`` (a key of :data:`SCENES`).

    ``dissolve`` frames before the shot's start cross-fade from the previous shot into this one
    (0: a hard cut); ``through_black`` makes it a fade out to black and back in instead.
    ``flashes`` are frames of the shot (from its start) lit up as by a photographer's flash.
    """

    scene: str
    frames: int
    dissolve: int = 0
    through_black: bool = False
    flashes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ShotTruth:
    """Where a generated video's shots change: ``cuts`` (first frames of shots after hard cuts),
    ``fades`` (``(start, end)`` frame ranges of gradual transitions), its ``frames`` and ``fps``."""

    cuts: tuple[int, ...]
    fades: tuple[tuple[int, int], ...]
    frames: int
    fps: float
    starts: tuple[int, ...]  #: first frame of every shot (a fade's shot starts where the fade ends)


def shot_frames(shots: Sequence[ShotSpec], height: int = 180, width: int = 320):
    """The BGR uint8 frames of ``shots`` in order, and their :class:`ShotTruth` (fps unset: 0)."""
    out: list[np.ndarray] = []
    cuts, fades, starts = [], [], []
    for k, shot in enumerate(shots):
        scene = SCENES[shot.scene]
        d = min(shot.dissolve, len(out)) if k else 0
        frames = list(scene.frames(shot.frames, height, width, start=d))  # the scene moves on through the fade
        for j in shot.flashes:
            frames[j] = frames[j] * 0.3 + 200
        if d:  # the last d frames of the previous shot fade into the scene's first d frames
            for j, head in enumerate(scene.frames(d, height, width)):
                a, tail = (j + 1) / (d + 1), out[len(out) - d + j]
                if shot.through_black:  # out to black over the first half, in over the second
                    mixed = tail * max(0.0, 1 - 2 * a) if a < 0.5 else head * min(1.0, 2 * a - 1)
                else:
                    mixed = (1 - a) * tail + a * head
                out[len(out) - d + j] = mixed
            fades.append((len(out) - d, len(out)))
        elif k:
            cuts.append(len(out))
        starts.append(len(out))
        out.extend(frames)
    frames_u8 = [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in out]
    return frames_u8, ShotTruth(tuple(cuts), tuple(fades), len(out), 0.0, tuple(starts))


def write_shot_video(path, shots: Sequence[ShotSpec], fps: float = 25, height: int = 180, width: int = 320,
                     codec: str = "libx264", **av_kwargs) -> ShotTruth:
    """Write ``shots`` as a video (H.264 by default, with PyAV) and return where its shots change."""
    frames, truth = shot_frames(shots, height, width)
    # one x264 thread and one lookahead thread: the same file every time
    av_kwargs.setdefault("options", {"preset": "veryfast", "x264-params": "threads=1:lookahead-threads=1"})
    write_video_av(path, frames, fps, codec, **av_kwargs)
    return ShotTruth(truth.cuts, truth.fades, truth.frames, float(fps), truth.starts)


#: Videos for measuring shot detection (25 fps): name -> shots.  Hard cuts of every kind, shots of
#: 2 s between cuts, and gradual transitions, each of which should give at most one cut.
SHOT_SUITE: dict[str, tuple[ShotSpec, ...]] = {
    "colour cuts, 2 s shots": (ShotSpec("red", 75), ShotSpec("green", 50), ShotSpec("blue", 50),
                               ShotSpec("yellow", 50), ShotSpec("red", 60)),
    "same mean grey, other texture": (ShotSpec("grey_stripes", 75), ShotSpec("grey_checker", 75),
                                      ShotSpec("grey_blobs", 60), ShotSpec("grey_stripes", 60)),
    "cut inside a fast pan": (ShotSpec("pan_a", 90), ShotSpec("pan_b", 75), ShotSpec("pan_a", 75)),
    "dark, low contrast": (ShotSpec("dark_a", 75), ShotSpec("dark_b", 75), ShotSpec("dark_c", 75),
                           ShotSpec("dark_a", 60)),
    "2 s cross-dissolve": (ShotSpec("red", 100), ShotSpec("blue", 100, dissolve=50), ShotSpec("green", 75)),
    "4 s cross-dissolve, same grey": (ShotSpec("grey_blobs", 175), ShotSpec("grey_stripes", 150, dissolve=100)),
    "2 s fade through black": (ShotSpec("green", 100), ShotSpec("yellow", 100, dissolve=50, through_black=True),
                               ShotSpec("blue", 60)),
    "4 s fade through black": (ShotSpec("blue", 125), ShotSpec("grey_blobs", 150, dissolve=100, through_black=True)),
    "whip pan, flashes, no cut": (ShotSpec("whip_pan", 150), ShotSpec("grey_blobs", 125, flashes=(40, 41, 80))),
}
