"""Aggregate episode records into a submission's score."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from statistics import fmean
from typing import Any, Iterable, Mapping

from core.outcomes import ENV_ERROR, OUTCOMES
from core.settings import FAB_AGGREGATION, FLATLAND


def combine(values: list[float], tests: list[Any], method: str = "mean") -> float | None:
    """The submission's primary number from its episodes' normalized returns."""
    if not values:
        return None
    if method in ("sum", FAB_AGGREGATION):  # FAB: NANSUM per test, NANSUM over the tests (= of every episode)
        return float(sum(values))
    if method == "mean_of_test_means":
        by_test: dict[Any, list[float]] = defaultdict(list)
        for value, test in zip(values, tests):
            by_test[test].append(value)
        return fmean(fmean(v) for v in by_test.values())
    return fmean(values)


def _number(value: Any) -> float | None:
    """A score as FAB reads it: None and NaN are missing (its NANSUM and NANMEAN skip them)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _nansum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(sum(present)) if present else None


def _nanmean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def test_key(record: Mapping[str, Any]) -> Any:
    """The test an episode belongs to: FAB's test id, else the test's number."""
    return record.get("test_id") or record.get("test")


def fab_scores(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """FAB's scores (its ECML 2026 benchmark's fields): per test, ``normalized_reward`` is the NANSUM of
    its scenarios' and ``percentage_complete`` their NANMEAN; the benchmark's are the NANSUM and the
    NANMEAN of the tests' (a test or benchmark with no value has none: FAB's null). Only scored
    episodes count (`scored_episodes`), as FAB posts only the scenarios that ran."""
    by_test: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for record in scored_episodes(results):
        by_test[test_key(record)].append(record)
    tests = {str(test): {"normalized_reward": _nansum(_number(r.get("normalized_return")) for r in records),
                         "percentage_complete": _nanmean(_number(r.get("percentage_complete")) for r in records)}
             for test, records in by_test.items()}
    return {"normalized_reward": _nansum(t["normalized_reward"] for t in tests.values()),
            "percentage_complete": _nanmean(t["percentage_complete"] for t in tests.values()),
            "tests": tests}


def scored_episodes(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The episodes that count towards the score: every one with a normalized return, except those
    lost to a broken env file (``env_error``, the host's fault); a NaN is no score."""
    return [r for r in results if r.get("outcome") != ENV_ERROR and _number(r.get("normalized_return")) is not None]


def primary_score(results: Iterable[Mapping[str, Any]], method: str = "mean") -> float | None:
    """The submission's primary number from the results stored so far: what `flateval run`'s progress
    bar, the exporter's ``flateval_submission_mean_normalized_return`` and the final score all show."""
    scored = scored_episodes(results)
    return combine([r["normalized_return"] for r in scored], [test_key(r) for r in scored], method)


def aggregate(results: Iterable[Mapping[str, Any]], method: str = "mean") -> dict[str, Any]:
    """Primary: the normalized returns of the scored episodes, combined by `method` (the key keeps
    its contract name, `mean_normalized_return`; for a gymnasium env without normalization it is the
    mean return); secondary: mean completion (None where episodes have none: gymnasium; under FAB's
    aggregation the mean of the tests' means, and its scores per test under ``fab``), and the mean
    raw return.

    Episodes lost to a broken env file (``env_error``) are the host's fault and count in neither;
    they are reported in `outcomes`. No scored episode means a null score.
    """
    results = list(results)
    scored = scored_episodes(results)
    outcomes = Counter(r.get("outcome") for r in results)
    has_completion = any(r.get("env", FLATLAND) == FLATLAND for r in scored)  # records before "env": Flatland
    returns = [r["return"] for r in scored if r.get("return") is not None]
    mean_completion = fmean(r["percentage_complete"] or 0.0 for r in scored) if has_completion else None
    fab = fab_scores(results) if method == FAB_AGGREGATION else None
    if fab is not None:  # FAB's secondary score: the mean over the tests of each test's mean
        mean_completion = fab["percentage_complete"]
    score = {
        "mean_normalized_return": primary_score(scored, method),
        "aggregation": method,
        "mean_percentage_complete": mean_completion,
        "mean_return": fmean(returns) if returns else None,
        "episodes": len(results),
        "scored_episodes": len(scored),
        "outcomes": {outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "steps": sum(int(r.get("steps") or 0) for r in results),
    }
    if fab is not None:
        score["fab"] = fab
    return score
