"""Aggregate episode records into a submission's score."""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Any, Iterable, Mapping

from scoring.episode import ENV_ERROR, OUTCOMES


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Primary: mean normalized return over the scored episodes; secondary: mean completion.

    Episodes lost to a broken env file (``env_error``) are the host's fault and count in neither
    mean; they are reported in `outcomes`. No scored episode means a null score.
    """
    results = list(results)
    scored = [r for r in results if r.get("outcome") != ENV_ERROR and r.get("normalized_return") is not None]
    outcomes = Counter(r.get("outcome") for r in results)
    return {
        "mean_normalized_return": fmean(r["normalized_return"] for r in scored) if scored else None,
        "mean_percentage_complete": fmean(r["percentage_complete"] or 0.0 for r in scored) if scored else None,
        "episodes": len(results),
        "scored_episodes": len(scored),
        "outcomes": {outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "steps": sum(int(r.get("steps") or 0) for r in results),
    }
