"""Which frames of an ``n``-frame video a clip is made of."""

from __future__ import annotations

from typing import Callable

__all__ = ["Sampler", "sample_indices", "clip_sampler", "sampled"]

Sampler = Callable[[int, int], "list[int]"]  #: (n, num_frames) -> num_frames indices in [0, n)


def sample_indices(n: int, num_frames: int, clip: int = 0, clips: int = 1) -> list[int]:
    """Uniform sampling: frame ``i`` of ``F`` is ``floor((i + 0.5) * n / F)``, at most ``n - 1``.

    A video shorter than ``F`` frames repeats frames by the same formula.  With ``clips`` = C
    temporal views, clip ``c`` (0-based) is shifted by a fraction of the stride: frame ``i`` is
    ``floor((i + (c + 0.5) / C) * n / F)``, at most ``n - 1``; the C clips interleave into the
    uniform sample of ``C * F`` frames, and ``clips=1`` is the plain sampling.
    """
    if n < 1 or num_frames < 1:
        raise ValueError(f"need n >= 1 and num_frames >= 1, got n={n}, num_frames={num_frames}")
    if not 0 <= clip < clips:
        raise ValueError(f"need 0 <= clip < clips, got clip={clip}, clips={clips}")
    return [min(((2 * (i * clips + clip) + 1) * n) // (2 * clips * num_frames), n - 1) for i in range(num_frames)]


def clip_sampler(clip: int, clips: int) -> Sampler:
    """The sampler of temporal clip ``clip`` of ``clips`` (:func:`sample_indices`)."""
    return lambda n, num_frames: sample_indices(n, num_frames, clip, clips)


def sampled(sampler: Sampler | None, n: int, num_frames: int) -> list[int]:
    """``sampler(n, num_frames)`` checked (ValueError unless ``num_frames`` indices in ``[0, n)``);
    :func:`sample_indices` for None."""
    if sampler is None:
        return sample_indices(n, num_frames)
    indices = [int(k) for k in sampler(n, num_frames)]
    if len(indices) != num_frames or not all(0 <= k < n for k in indices):
        raise ValueError(f"sampler gave {indices} for n={n}, num_frames={num_frames}: "
                         f"need {num_frames} indices in [0, {n})")
    return indices
