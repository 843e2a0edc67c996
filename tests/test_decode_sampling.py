"""Tests for stamcli.decode.sampling: which frames a clip (or each temporal view) is made of."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from stamcli.decode.sampling import clip_sampler, sample_indices, sampled

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
FIXTURE_EXPECTED = FIXTURES / "clip_400x300_75f_expected.pt"


def _formula(n: int, f: int, clip: int = 0, clips: int = 1) -> list[int]:
    """Frame ``i`` of ``f`` is ``floor((i + (clip + 1/2) / clips) * n / f)``, at most ``n - 1``: exact fractions."""
    return [min(math.floor((i + Fraction(2 * clip + 1, 2 * clips)) * n / f), n - 1) for i in range(f)]


LENGTHS = [*range(1, 130), 251, 1000, 12345, 10**9 + 7]  # every short video, and long ones (exact arithmetic)


def test_sample_indices_formula():
    for n in LENGTHS:
        for f in [*range(1, 34), 64, 65]:
            got = sample_indices(n, f)
            assert got == _formula(n, f), (n, f)
            assert got == sorted(got) and all(0 <= k < n for k in got), (n, f)
            if n >= f:
                assert len(set(got)) == f, (n, f)  # no repeats unless the video is shorter than F
            else:
                assert set(got) == set(range(n)), (n, f)  # a short video repeats frames, and skips none


def test_sample_indices_examples():
    assert sample_indices(1, 8) == [0] * 8
    assert sample_indices(10, 1) == [5]
    assert sample_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_indices(300, 8) == [18, 56, 93, 131, 168, 206, 243, 281]
    with pytest.raises(ValueError):
        sample_indices(0, 8)
    with pytest.raises(ValueError):
        sample_indices(5, 0)


@pytest.mark.skipif(not FIXTURE_EXPECTED.exists(), reason="shared fixtures not available")
def test_sample_indices_fixture():
    expected = torch.load(FIXTURE_EXPECTED, weights_only=True)
    assert sample_indices(75, 8) == expected["indices"].tolist()


def test_clip_offsets_formula_and_interleaving():
    for n in LENGTHS:
        for f in (1, 2, 3, 4, 8, 16):
            for clips in (1, 2, 3, 5):
                for c in range(clips):
                    got = sample_indices(n, f, c, clips)
                    assert got == _formula(n, f, c, clips), (n, f, c, clips)
                    # the clips interleave into one uniform sample of clips x F frames
                    assert got == sample_indices(n, clips * f)[c::clips], (n, f, c, clips)
                    assert clip_sampler(c, clips)(n, f) == got
            assert sample_indices(n, f, 0, 1) == sample_indices(n, f)


def test_clip_offsets_worked_example():
    assert [sample_indices(50, 4, c, 3) for c in range(3)] == [[2, 14, 27, 39], [6, 18, 31, 43], [10, 22, 35, 47]]
    with pytest.raises(ValueError, match="clip < clips"):
        sample_indices(50, 4, 3, 3)


def test_a_sampler_s_answer_is_checked():
    assert sampled(None, 50, 4) == [6, 18, 31, 43]
    assert sampled(lambda n, f: [n - 1 - i for i in range(f)], 50, 3) == [49, 48, 47]
    with pytest.raises(ValueError, match=r"sampler gave \[0, 50\] for n=50, num_frames=2: need 2 indices in \[0, 50\)"):
        sampled(lambda n, f: [0, n], 50, 2)
    with pytest.raises(ValueError, match="need 3 indices"):
        sampled(lambda n, f: [0, 1], 50, 3)
