"""Tests for stamcli.decode.preprocess: resize, crops, RGB and rotation of decoded frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stamcli.decode.preprocess import (checked_crop, crop_offsets, preprocess_crops, preprocess_frame,
                                       resize_size_for, rotate)
from synthetic import quadrant_frame


def test_resize_size_for():
    assert resize_size_for(224) == 256
    assert resize_size_for(112) == 128
    assert resize_size_for(384) == 438  # int(384 / 0.875) = int(438.86)
    assert all(resize_size_for(s) == int(s / 0.875) for s in range(1, 1000))


@pytest.mark.parametrize("hw", [(48, 64), (61, 97), (200, 120), (300, 400), (720, 1280), (256, 256)])
def test_preprocess_frame_matches_pil(hw):
    """Same as the reference transform (PIL bilinear resize, centre crop) on any geometry."""
    Image = pytest.importorskip("PIL.Image")
    h, w = hw
    rng = np.random.default_rng(h * w)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.0)
    bgr[::4] = 255  # fine stripes: aliasing shows up if the downscale is not antialiased
    out = preprocess_frame(bgr, 224)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    nh, nw = (256, int(256 * w / h)) if h <= w else (int(256 * h / w), 256)
    ref = np.asarray(Image.fromarray(bgr[..., ::-1].copy()).resize((nw, nh), Image.BILINEAR))
    top, left = int(round((nh - 224) / 2)), int(round((nw - 224) / 2))
    ref = torch.from_numpy(ref[top : top + 224, left : left + 224].copy()).permute(2, 0, 1)
    diff = (out.float() - ref.float()).abs()
    assert diff.mean().item() < 0.05 and diff.max().item() <= 2


def test_preprocess_is_rgb():
    bgr = np.zeros((60, 80, 3), np.uint8)
    bgr[..., 2] = 200  # red in BGR
    out = preprocess_frame(bgr)
    assert out[0].float().mean() == pytest.approx(200, abs=1)
    assert out[1].float().mean() == 0 and out[2].float().mean() == 0


def test_crop_offsets():
    assert crop_offsets(32, 42, 32, 3) == [(0, 0), (0, 5), (0, 10)]  # landscape: left, centre, right
    assert crop_offsets(42, 32, 32, 3) == [(0, 0), (5, 0), (10, 0)]  # portrait: top, centre, bottom
    assert crop_offsets(40, 40, 32, 3) == [(4, 0), (4, 4), (4, 8)]  # square: along the width
    assert crop_offsets(256, 341, 224, 1) == [(16, 58)]  # the plain centre crop (rounded)
    with pytest.raises(ValueError, match="crops must be one of"):
        crop_offsets(32, 42, 32, 2)


def test_one_of_three_crops_is_the_centre_crop():
    bgr = quadrant_frame(48, 80)
    crops = preprocess_crops(bgr, 32, 32, 3)
    assert crops.shape == (3, 3, 32, 32) and torch.equal(crops[1], preprocess_frame(bgr, 32, 32))


def test_rotation_helper():
    img = quadrant_frame(40, 60)
    assert np.array_equal(rotate(img, 90), np.rot90(img, -1))
    assert np.array_equal(rotate(img, 180), np.rot90(img, 2))
    assert np.array_equal(rotate(img, 270), np.rot90(img, 1))
    assert rotate(img, 0) is img


def test_a_crop_is_asked_once_per_frame_size_and_checked():
    asked = []
    region = checked_crop(lambda h, w: asked.append((h, w)) or (4, 8, 32, 40))
    assert region(48, 64) == region(48, 64) == (4, 8, 32, 40) and asked == [(48, 64)]
    assert region(64, 48) == (4, 8, 32, 40) and asked == [(48, 64), (64, 48)]
    with pytest.raises(ValueError, match=r"crop region \(4, 8, 32, 40\) is not inside a 30x64 frame"):
        region(30, 64)
