"""Percentiles of a handful of samples, without numpy: the episode record must not depend on it."""

from __future__ import annotations

from typing import Sequence


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default), so p50 of an even count is the mean of the middle two; None for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
