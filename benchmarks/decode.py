"""Section ``decode``: frame sampling, ms per video for F frames, ours vs decoding every frame.

"Ours" is :func:`stamcli.decode.read_clip` as ``stam predict``'s decode threads run it (one
FFmpeg thread each: PyAV sparse decoding, :mod:`stamcli.decode.pyav`), and again with decoder
``opencv`` (OpenCV alone: grabs and verified seeks), side by side, on the 10 s, the 1-minute and
the 10-minute video.

Timelines (``stam predict --window W --stride S``): ms per video of
:class:`stamcli.timeline.TimelineReader` (every window's F frames, decoded once) with PyAV and
with OpenCV alone, on the 1-minute and the 10-minute video, for overlapping windows (W the short
clip's length, S = W/2) and for short windows with gaps (W/5 every 3W, 2 s every 30 s).

"Every frame" is the authors' pipeline: PyAV (default settings) decodes the whole video and
every frame is converted to a PIL image; the sampled ones are then resized (PIL bilinear, shorter side 256)
and centre-cropped. Unlike the authors' code it keeps only the sampled images (their list of
every frame would not fit in memory for the 10-minute video), which only makes it faster.

Seeks (what chose :data:`stamcli.decode.opencv.SEEK_MIN_GAP`): OpenCV's cost of one verified
seek (``set(POS_FRAMES)`` + the grab that lands) in grabs, on videos of the clip's size with the
common key-frame spacings: MJPEG (every frame a key frame), OpenCV's mp4v (a key frame every 12),
H.264 with a key frame every 25 and x264's default of 250.  OpenCV seeks to a key frame before
the target and decodes forward from it, so the cost grows with the spacing; reading seeks
over gaps of at least the H.264 GOP-250 cost never costs more than grabbing through.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from stamcli.decode import opencv as opencv_backend
from stamcli.decode import read_clip, resize_size_for, sample_indices
from stamcli.parallel import one_torch_thread
from stamcli.timeline import TimelineReader

from .common import Context, _frames, duration_text, make_video, median_time

#: (title, file name, writer): the key-frame spacings of the seek table
SEEK_VIDEOS = (("MJPEG (all key frames)", "seek_mjpg.avi", dict(fourcc="MJPG")),
               ("mp4v (GOP 12)", "seek_mp4v.mp4", dict(fourcc="mp4v")),
               ("H.264 (GOP 25)", "seek_h264_g25.mp4", dict(codec="libx264", options={"g": "25"})),
               ("H.264 (GOP 250)", "seek_h264_g250.mp4", dict(codec="libx264", options={"g": "250"})))


def sampled_ms(path, num_frames: int, img: int, repeats: int, decoder: str) -> float:
    """Median ms of :func:`read_clip` with ``decoder`` and one decoding thread, as each of
    ``stam predict``'s decode threads reads a video."""
    return 1000 * median_time(lambda: read_clip(path, num_frames, img, threads=1, decoder=decoder), repeats)


def timeline_ms(path, num_frames: int, img: int, window_s: float, stride_s: float, repeats: int,
                decoder: str) -> tuple[float, dict]:
    """Median ms of reading every window of a ``--window window_s --stride stride_s`` timeline
    with ``decoder`` as ``stam predict --window``'s decode thread reads it (the reader's
    default FFmpeg threads, preprocessing on one core), and what the last read did."""
    with one_torch_thread():
        def read() -> None:
            reader = TimelineReader(path, num_frames, img, window_s, stride_s, decoder=decoder)
            facts["windows"] = sum(1 for _ in reader)
            facts.update(decoder=reader.decoder, decoded=reader.grabs, frame_count=reader.frame_count)

        facts: dict = {}
        return 1000 * median_time(read, repeats), facts


def seek_cost(path, seeks: int = 8) -> dict:
    """OpenCV's ms per grab (a grab-only pass over the whole video) and ms per seek + grab (to
    ``seeks`` targets spread over the video, in order), and their ratio: a seek in grabs."""
    import time

    with opencv_backend._capture(path, threads=1) as cap:
        start = time.perf_counter()
        n = opencv_backend._count_frames(cap)
        grab_ms = 1000 * (time.perf_counter() - start) / max(n, 1)
    targets = [(2 * i + 1) * n // (2 * seeks) for i in range(seeks)]
    with opencv_backend._capture(path, threads=1) as cap:
        start = time.perf_counter()
        for k in targets:
            cap.set(cv2.CAP_PROP_POS_FRAMES, k)
            cap.grab()
        seek_ms = 1000 * (time.perf_counter() - start) / seeks
    return {"frames": n, "grab_ms": grab_ms, "seek_ms": seek_ms, "grabs_per_seek": seek_ms / grab_ms}


def seek_video(ctx: Context, name: str, writer: dict) -> Path:
    """A cached video of the clip's size, long enough for several x264 GOPs of 250 (4 in the full
    run), written with ``writer`` (OpenCV's fourcc, or PyAV's codec and options)."""
    from tests.synthetic import write_video, write_video_av

    p = ctx.profile
    path = ctx.cache / f"{p.width}x{p.height}_{name}"
    if not path.exists():
        frames = _frames(1000 if not ctx.quick else 150, 0, p.width, p.height)
        if "fourcc" in writer:
            write_video(path, frames, p.fps, writer["fourcc"])
        else:
            write_video_av(path, frames, p.fps, writer["codec"], options={"preset": "veryfast", **writer["options"]})
    return path


def authors_clip(path, num_frames: int, img_size: int = 224) -> torch.Tensor:
    """``(F, 3, S, S)`` uint8 by the authors' route: PyAV full decode + PIL for every frame."""
    import av
    from PIL import Image

    with av.open(str(path)) as container:
        stream = container.streams.video[0]  # PyAV's default threading, as in the authors' code
        wanted = sample_indices(stream.frames, num_frames)
        kept = {}
        for index, frame in enumerate(container.decode(stream)):
            image = frame.to_image()  # every frame: decode + RGB conversion
            if index in wanted:
                kept[index] = image
    short = resize_size_for(img_size)
    out = []
    for index in wanted:
        image = kept[index]
        w, h = image.size
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        image = image.resize(size, Image.BILINEAR)
        left, top = round((size[0] - img_size) / 2), round((size[1] - img_size) / 2)
        image = image.crop((left, top, left + img_size, top + img_size))
        out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    return torch.stack(out)


def run(ctx: Context) -> dict:
    p = ctx.profile
    num_frames, img = p.big.frames, p.big.img_size
    minute = make_video(ctx.cache, p, p.minute_s, 0, ctx.log)
    rows = []
    for title, path, full_repeats in ((p.short_title, ctx.short_video(), p.repeats),
                                      (duration_text(p.minute_s), minute, 1),
                                      (p.long_title, ctx.long_video(), 1)):
        ours = sampled_ms(path, num_frames, img, p.repeats + 2, "auto")
        opencv = sampled_ms(path, num_frames, img, p.repeats + 2, "opencv")
        full = 1000 * median_time(lambda: authors_clip(path, num_frames, img), full_repeats)
        rows.append({"video": title, "path": path.name, "ours_ms": ours, "opencv_ms": opencv,
                     "full_decode_ms": full, "speedup": full / ours, "speedup_vs_opencv": opencv / ours,
                     "full_repeats": full_repeats, "ours_repeats": p.repeats + 2})
    timelines = []
    for title, path, repeats in ((duration_text(p.minute_s), minute, p.repeats), (p.long_title, ctx.long_video(), 1)):
        for window_s, stride_s in ((p.short_s, p.short_s / 2), (p.short_s / 5, p.short_s * 3)):
            ours, ours_facts = timeline_ms(path, num_frames, img, window_s, stride_s, repeats, "auto")
            opencv, opencv_facts = timeline_ms(path, num_frames, img, window_s, stride_s, repeats, "opencv")
            timelines.append({"video": title, "path": path.name, "window_s": window_s, "stride_s": stride_s,
                              "windows": ours_facts["windows"], "ours_ms": ours, "opencv_ms": opencv,
                              "speedup_vs_opencv": opencv / ours, "repeats": repeats, "ours": ours_facts,
                              "opencv": opencv_facts})
    seeks = [{"video": title, "path": name, **seek_cost(seek_video(ctx, name, writer))}
             for title, name, writer in SEEK_VIDEOS]
    return {"frames": num_frames, "img_size": img, "rows": rows, "timelines": timelines, "seeks": seeks,
            "seek_min_gap": opencv_backend.SEEK_MIN_GAP}


def markdown(r: dict) -> str:
    lines = [f"Frame sampling + preprocessing, F={r['frames']}, {r['img_size']} px, ms per video "
             "(median; the full decode of the longer videos runs once). Ours: one decoding thread, as "
             "`stam predict`'s decode threads run, with PyAV sparse decoding (stamcli's default) and "
             "with OpenCV alone (`--decoder opencv`):", "",
             "| video | ours (PyAV, sparse) | OpenCV alone, sparse | every frame (PyAV + PIL, authors') "
             "| speed-up vs every frame | speed-up vs OpenCV alone |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {row['video']} | {row['ours_ms']:.0f} | {row['opencv_ms']:.0f} | {row['full_decode_ms']:.0f} "
              f"| {row['speedup']:.1f}x | {row['speedup_vs_opencv']:.2f}x |" for row in r["rows"]]
    lines += ["", f"Timelines (`stam predict --window W --stride S`), F={r['frames']}: every window of one video "
              "read once as `stam predict`'s decode thread reads it (FFmpeg's default threads, preprocessing "
              "on one core), ms per video (median of the runs); frames decoded of the video's frames:", "",
              "| video | `--window`, `--stride` (s) | windows | ours (PyAV, sparse) | frames decoded "
              "| OpenCV alone (every frame) | frames decoded | speed-up | runs |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {t['video']} | {t['window_s']:g}, {t['stride_s']:g} | {t['windows']} | {t['ours_ms']:.0f} "
              f"| {t['ours']['decoded']} of {t['ours']['frame_count']} | {t['opencv_ms']:.0f} "
              f"| {t['opencv']['decoded']} | {t['speedup_vs_opencv']:.2f}x | {t['repeats']} |"
              for t in r["timelines"]]
    lines += ["", f"OpenCV seeks: one seek + grab in grabs (one decoding thread; `SEEK_MIN_GAP` is "
              f"{r['seek_min_gap']}: OpenCV seeks over gaps at least that long, grabs through shorter ones):", "",
              "| video | frames | ms per grab | ms per seek | a seek in grabs |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {row['video']} | {row['frames']} | {row['grab_ms']:.2f} | {row['seek_ms']:.2f} "
              f"| {row['grabs_per_seek']:.0f} |" for row in r["seeks"]]
    return "\n".join(lines)
