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
    score = record.get("score") or aggregate([])
    if record["status"] != store.FINISHED:
        score = {**score, "mean_normalized_return": None, "mean_percentage_complete": None}
    enqueued = float(record.get("enqueued_at", 0) or 0)
    last = float(record.get("last_result_at", 0) or 0)
    return {
        "submission_id": sid,
        "name": record.get("name"),
        "status": record["status"],
        "error": record.get("error"),
        "score": score,
        "timing": {
            "wall_s": (last - enqueued) if enqueued and last else None,
            "submitted_at": float(record.get("submitted_at", 0) or 0) or None,
            "enqueued_at": enqueued or None,
            "last_result_at": last or None,
        },
        "n_episodes": record.get("n_episodes"),
        "challenge": record.get("challenge"),
        "phase": record.get("phase"),
        "stopped_by": record.get("stopped_by"),
        "settings": {**(record.get("settings") or {}), "phase": record.get("phase")},
        "episodes": episodes,
        "agent_logs": store.get_agent_logs(conn, sid),
    }
