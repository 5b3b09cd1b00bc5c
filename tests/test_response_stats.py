"""The agent response record of an episode: its percentiles, next to the keys it always had."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.episode import ResponseStats
from scoring.percentile import percentile


def test_percentile_interpolates_as_numpy_does():
    samples = [0.3, 0.1, 0.2, 0.5, 0.4, 1.7, 0.05, 0.2]
    for q in (0, 10, 50, 95, 99, 100):
        assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), abs=1e-12)
    assert percentile([0.25], 95) == 0.25
    assert percentile([], 50) is None


def test_response_stats_add_p50_and_p95_to_their_keys():
    stats = ResponseStats(planning_s=1.5)
    for seconds in (0.004, 0.001, 0.002, 0.003, 0.100):
        stats.add(seconds)
    record = stats.as_dict()
    assert set(record) == {"count", "mean_s", "max_s", "planning_s", "p50_s", "p95_s", "time_bank_left_s"}
    assert record["count"] == 5 and record["max_s"] == 0.100 and record["planning_s"] == 1.5
    assert record["p50_s"] == 0.003 and record["p95_s"] == pytest.approx(0.0808)
    assert ResponseStats().as_dict() == {"count": 0, "mean_s": None, "max_s": None, "planning_s": 0.0,
                                         "p50_s": None, "p95_s": None, "time_bank_left_s": None}
