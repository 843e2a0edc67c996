"""Section ``decode``: frame sampling, ms per video for F frames, ours vs decoding every frame.

"Ours" is :func:`stamcli.video.read_clip` as ``stam predict``'s decode threads run it (one
FFmpeg thread each: PyAV sparse decoding, :mod:`stamcli.sparse_decode`), and again with
``STAM_DECODER=opencv`` (OpenCV alone: grabs and verified seeks), side by side, on the 10 s, the
1-minute and the 10-minute video.

Timelines (``stam predict --window W --stride S``): ms per video of
:class:`stamcli.timeline.TimelineReader` (every window's F frames, decoded once) with PyAV and
with OpenCV alone, on the 1-minute and the 10-minute video, for overlapping windows (W the short
clip's length, S = W/2) and for short windows with gaps (W/5 every 3W, 2 s every 30 s).

"Every frame" is the authors' pipeline: PyAV (default settings) decodes the whole video and
every frame is converted to a PIL image; the sampled ones are then resized (PIL bilinear, shorter side 256)
and centre-cropped. Unlike the authors' code it keeps only the sampled images (their list of
every frame would not fit in memory for the 10-minute video), which only makes it faster.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import torch

from stamcli.parallel import one_torch_thread
from stamcli.timeline import TimelineReader
from stamcli.video import read_clip, resize_size_for, sample_indices

from .common import Context, duration_text, make_video, median_time


def sampled_ms(path, frames: int, img: int, repeats: int, name: str) -> float:
    """Median ms of :func:`read_clip` with decoder ``name`` and one decoding thread, as each of
    ``stam predict``'s decode threads reads a video."""
    with mock.patch.dict(os.environ, STAM_DECODER=name):
        return 1000 * median_time(lambda: read_clip(path, frames, img, threads=1), repeats)


def timeline_ms(path, frames: int, img: int, window_s: float, stride_s: float, repeats: int,
                name: str) -> tuple[float, dict]:
    """Median ms of reading every window of a ``--window window_s --stride stride_s`` timeline
    with decoder ``name`` as ``stam predict --window``'s decode thread reads it (the reader's
    default FFmpeg threads, preprocessing on one core), and what the last read did."""
    with mock.patch.dict(os.environ, STAM_DECODER=name), one_torch_thread():
        def read() -> None:
            reader = TimelineReader(path, frames, img, window_s, stride_s)
            facts["windows"] = sum(1 for _ in reader)
            facts.update(decoder=reader.decoder, decoded=reader.grabs, frame_count=reader.frame_count)

        facts: dict = {}
        return 1000 * median_time(read, repeats), facts


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
    frames, img = p.big.frames, p.big.img_size
    minute = make_video(ctx.cache, p, p.minute_s, 0, ctx.log)
    rows = []
    for title, path, full_repeats in ((p.short_title, ctx.short_video(), p.repeats),
                                      (duration_text(p.minute_s), minute, 1),
                                      (p.long_title, ctx.long_video(), 1)):
        ours = sampled_ms(path, frames, img, p.repeats + 2, "auto")
        opencv = sampled_ms(path, frames, img, p.repeats + 2, "opencv")
        full = 1000 * median_time(lambda: authors_clip(path, frames, img), full_repeats)
        rows.append({"video": title, "path": path.name, "ours_ms": ours, "opencv_ms": opencv,
                     "full_decode_ms": full, "speedup": full / ours, "speedup_vs_opencv": opencv / ours,
                     "full_repeats": full_repeats, "ours_repeats": p.repeats + 2})
    timelines = []
    for title, path, repeats in ((duration_text(p.minute_s), minute, p.repeats), (p.long_title, ctx.long_video(), 1)):
        for window_s, stride_s in ((p.short_s, p.short_s / 2), (p.short_s / 5, p.short_s * 3)):
            ours, ours_facts = timeline_ms(path, frames, img, window_s, stride_s, repeats, "auto")
            opencv, opencv_facts = timeline_ms(path, frames, img, window_s, stride_s, repeats, "opencv")
            timelines.append({"video": title, "path": path.name, "window_s": window_s, "stride_s": stride_s,
                              "windows": ours_facts["windows"], "ours_ms": ours, "opencv_ms": opencv,
                              "speedup_vs_opencv": opencv / ours, "repeats": repeats, "ours": ours_facts,
                              "opencv": opencv_facts})
    return {"frames": frames, "img_size": img, "rows": rows, "timelines": timelines}


def markdown(r: dict) -> str:
    lines = [f"Frame sampling + preprocessing, F={r['frames']}, {r['img_size']} px, ms per video "
             "(median; the full decode of the longer videos runs once). Ours: one decoding thread, as "
             "`stam predict`'s decode threads run, with PyAV sparse decoding (stamcli's default) and "
             "with OpenCV alone (`STAM_DECODER=opencv`):", "",
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
    return "\n".join(lines)
