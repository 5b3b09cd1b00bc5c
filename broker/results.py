"""The results document of a submission (what `--output` and `flateval results` write)."""

from __future__ import annotations

from typing import Any

import redis

from broker import store
from scoring.aggregate import aggregate


def results_document(conn: redis.Redis, sid: str) -> dict[str, Any]:
    record = store.get_submission(conn, sid)
    if record is None:
        raise KeyError(sid)
    episodes = store.get_results(conn, sid)
    score = record.score or aggregate([])
    if record.status != store.FINISHED:
        score = {**score, "mean_normalized_return": None, "mean_percentage_complete": None}
    enqueued = record.enqueued_at or 0.0
    last = record.last_result_at or 0.0
    return {
        "submission_id": sid,
        "name": record.name,
        "status": record.status,
        "error": record.error,
        "score": score,
        "timing": {
            "wall_s": (last - enqueued) if enqueued and last else None,
            "submitted_at": record.submitted_at or None,
            "enqueued_at": enqueued or None,
            "last_result_at": last or None,
        },
        "n_episodes": record.n_episodes,  # what completes it: fewer than planned when a completion gate stopped it
        "planned_episodes": record.planned_episodes or record.n_episodes,
        "challenge": record.challenge,
        "phase": record.phase,
        "stopped_by": record.stopped_by,
        "settings": {**record.settings, "overall_s": record.overall_s, "aggregation": record.aggregation,
                     "max_consecutive_timeouts": record.max_consecutive_timeouts,
                     "completion_gate": record.completion_gate, "phase": record.phase},
        "episodes": episodes,
        "agent_logs": store.get_agent_logs(conn, sid),
    }
