"""Aggregate episode records into a submission's score."""

from __future__ import annotations

from collections import Counter, defaultdict
from statistics import fmean
from typing import Any, Iterable, Mapping

from core.outcomes import ENV_ERROR, OUTCOMES
from core.settings import FLATLAND


def combine(values: list[float], tests: list[Any], method: str = "mean") -> float | None:
    """The submission's primary number from its episodes' normalized returns."""
    if not values:
        return None
    if method == "sum":
        return float(sum(values))
    if method == "mean_of_test_means":
        by_test: dict[Any, list[float]] = defaultdict(list)
        for value, test in zip(values, tests):
            by_test[test].append(value)
        return fmean(fmean(v) for v in by_test.values())
    return fmean(values)


def scored_episodes(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The episodes that count towards the score: every one with a normalized return, except those
    lost to a broken env file (``env_error``, the host's fault)."""
    return [r for r in results if r.get("outcome") != ENV_ERROR and r.get("normalized_return") is not None]


def primary_score(results: Iterable[Mapping[str, Any]], method: str = "mean") -> float | None:
    """The submission's primary number from the results stored so far: what `flateval run`'s progress
    bar, the exporter's ``flateval_submission_mean_normalized_return`` and the final score all show."""
    scored = scored_episodes(results)
    return combine([r["normalized_return"] for r in scored], [r.get("test") for r in scored], method)


def aggregate(results: Iterable[Mapping[str, Any]], method: str = "mean") -> dict[str, Any]:
    """Primary: the normalized returns of the scored episodes, combined by `method` (the key keeps
    its contract name, `mean_normalized_return`; for a gymnasium env without normalization it is the
    mean return); secondary: mean completion (None where episodes have none: gymnasium), and the
    mean raw return.

    Episodes lost to a broken env file (``env_error``) are the host's fault and count in neither;
    they are reported in `outcomes`. No scored episode means a null score.
    """
    results = list(results)
    scored = scored_episodes(results)
    outcomes = Counter(r.get("outcome") for r in results)
    has_completion = any(r.get("env", FLATLAND) == FLATLAND for r in scored)  # records before "env": Flatland
    returns = [r["return"] for r in scored if r.get("return") is not None]
    return {
        "mean_normalized_return": primary_score(scored, method),
        "aggregation": method,
        "mean_percentage_complete": fmean(r["percentage_complete"] or 0.0 for r in scored) if has_completion else None,
        "mean_return": fmean(returns) if returns else None,
        "episodes": len(results),
        "scored_episodes": len(scored),
        "outcomes": {outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "steps": sum(int(r.get("steps") or 0) for r in results),
    }
