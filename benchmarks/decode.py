"""Section ``decode``: frame sampling, ms per video for F frames, ours vs decoding every frame.

"Every frame" is the authors' pipeline: PyAV (default settings) decodes the whole video and
every frame is converted to a PIL image; the sampled ones are then resized (PIL bilinear, shorter side 256)
and centre-cropped. Unlike the authors' code it keeps only the sampled images (their list of
every frame would not fit in memory for the 10-minute video), which only makes it faster.
"""

from __future__ import annotations

import numpy as np
import torch

from stamcli.video import read_clip, resize_size_for, sample_indices

from .common import Context, median_time


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
    rows = []
    for title, path, full_repeats in ((p.short_title, ctx.short_video(), p.repeats),
                                      (p.long_title, ctx.long_video(), 1)):
        ours = median_time(lambda: read_clip(path, frames, img), p.repeats + 2)
        full = median_time(lambda: authors_clip(path, frames, img), full_repeats)
        rows.append({"video": title, "path": path.name, "ours_ms": 1000 * ours, "full_decode_ms": 1000 * full,
                     "speedup": full / ours, "full_repeats": full_repeats, "ours_repeats": p.repeats + 2})
    return {"frames": frames, "img_size": img, "rows": rows}


def markdown(r: dict) -> str:
    lines = [f"Frame sampling + preprocessing, F={r['frames']}, {r['img_size']} px, ms per video "
             "(median; the full decode of the long video runs once):", "",
             "| video | ours (OpenCV, sparse) | every frame (PyAV + PIL, authors') | speed-up |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {row['video']} | {row['ours_ms']:.0f} | {row['full_decode_ms']:.0f} | {row['speedup']:.1f}x |"
              for row in r["rows"]]
    return "\n".join(lines)
