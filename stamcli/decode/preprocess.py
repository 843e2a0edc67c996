"""Decoded BGR frames -> the model's input: upright, shorter side resized, cropped, RGB ``uint8``.

The authors' evaluation transform: shorter side resized to 256 with an antialiased bilinear filter
(PIL's), centre crop 224, RGB, ``uint8`` (the model divides by 255).  Test-time views cut 1 or 3
crops from one resize (:func:`preprocess_crops`); training augmentation cuts a chosen region
instead (:func:`preprocess_frame` with ``region``).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CROPS", "Crop", "resize_size_for", "crop_offsets", "preprocess_crops", "preprocess_frame", "rotate",
           "checked_crop"]

CROPS = (1, 3)  #: spatial crops per frame that :func:`preprocess_crops` can cut
Crop = Callable[[int, int], "tuple[int, int, int, int]"]  #: (h, w) -> (top, left, crop_h, crop_w)


def resize_size_for(img_size: int) -> int:
    """Shorter-side resize used before the centre crop: ``int(img_size / 0.875)`` (224 -> 256)."""
    return (img_size * 8) // 7


def _resized_hw(h: int, w: int, short: int) -> tuple[int, int]:
    """Shorter side to ``short``, longer side scaled alike and truncated (torchvision's rule)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def crop_offsets(height: int, width: int, size: int, crops: int = 1) -> list[tuple[int, int]]:
    """Top-left corners of the ``size x size`` crops of a ``height x width`` frame.

    ``crops=1``: the centre (offsets rounded).  ``crops=3``: start, centre and end of the longer
    side, centred on the shorter one: left/centre/right for a landscape or square frame,
    top/centre/bottom for a portrait one.
    """
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}, got {crops}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    if crops == 1:
        return [(top, left)]
    if height > width:
        return [(0, left), (top, left), (height - size, left)]
    return [(top, 0), (top, left), (top, width - size)]


def preprocess_crops(bgr: np.ndarray, img_size: int = 224, resize_size: int | None = None,
                     crops: int = 1) -> torch.Tensor:
    """One decoded BGR ``(H, W, 3)`` uint8 frame -> RGB ``(crops, 3, img_size, img_size)`` uint8.

    Antialiased bilinear resize of the shorter side to ``resize_size`` (torch's uint8 kernel,
    which reproduces PIL's bilinear filter), then the crops of :func:`crop_offsets` (one resize
    for all of them).
    """
    x = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
    resize_size = resize_size or resize_size_for(img_size)
    h, w = bgr.shape[:2]
    nh, nw = _resized_hw(h, w, resize_size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    views = [x[0, :, top : top + img_size, left : left + img_size] for top, left in crop_offsets(nh, nw, img_size, crops)]
    return torch.stack(views).flip(1)  # BGR -> RGB


def preprocess_frame(bgr: np.ndarray, img_size: int = 224, resize_size: int | None = None,
                     region: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """One decoded BGR ``(H, W, 3)`` uint8 frame -> RGB ``(3, img_size, img_size)`` uint8.

    Antialiased bilinear resize of the shorter side to ``resize_size`` (torch's uint8 kernel,
    which reproduces PIL's bilinear filter), then a centre crop with rounded offsets.  With
    ``region=(top, left, h, w)`` that region is cut instead and resized (same filter) to
    ``img_size x img_size``.
    """
    if region is None:
        return preprocess_crops(bgr, img_size, resize_size)[0]
    x = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
    top, left, ch, cw = region
    x = x[:, :, top : top + ch, left : left + cw]
    if (ch, cw) != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].flip(0)  # BGR -> RGB (a copy)


_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def rotate(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a decoded frame clockwise by ``rotation`` degrees (0/90/180/270; others: unchanged)."""
    return cv2.rotate(frame, _ROTATE[rotation]) if rotation in _ROTATE else frame


def checked_crop(crop: Crop) -> Crop:
    """``crop`` asked once per frame size (one region for a whole clip, whichever decoder reads it)
    and checked: a region outside the frame is a ``ValueError``."""
    regions: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    def region(h: int, w: int) -> tuple[int, int, int, int]:
        if (h, w) not in regions:
            top, left, ch, cw = (int(v) for v in crop(h, w))
            if not (0 <= top and 0 <= left and ch >= 1 and cw >= 1 and top + ch <= h and left + cw <= w):
                raise ValueError(f"crop region {(top, left, ch, cw)} is not inside a {h}x{w} frame")
            regions[(h, w)] = (top, left, ch, cw)
        return regions[(h, w)]

    return region
