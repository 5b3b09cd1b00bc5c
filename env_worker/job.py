"""The RQ job that runs one episode: `run_episode_job(spec)`, enqueued with RQ's JSON serializer.

It runs under `flateval worker` and under a stock ``rq worker -S json`` alike. The result is stored
in Redis idempotently under (submission, episode index); the job that stores the last result
finalizes the submission's score from what is stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rq import get_current_job

from broker import store
from env_worker.episode import run_episode
from env_worker.pairing import paired_agent
from flateval.settings import EpisodeSpec

TEST_SET_DIR_ENV = "FLATEVAL_TEST_SET_DIR"
"""Where this worker sees the test set, when it is mounted elsewhere than on the submitting host."""


def run_episode_job(spec: dict[str, Any]) -> dict[str, Any]:
    episode = EpisodeSpec.from_dict(spec)
    conn = get_current_job().connection
    sid = episode.submission_id
    status = conn.hget(store.submission_key(sid), "status")
    if status is None or status.decode() in store.TERMINAL:
        return {"skipped": status.decode() if status else "unknown submission"}
    store.transition(conn, sid, store.RUNNING, (store.QUEUED, store.SUBMITTED))

    root = os.environ.get(TEST_SET_DIR_ENV)
    if root:
        episode = EpisodeSpec.from_dict({**episode.as_dict(), "env_path": str(Path(root) / episode.env_file)})
    pair = paired_agent()
    result = run_episode(episode, pair.link, pair.observers)
    row = {**result.as_dict(), "index": episode.index, "episode_id": episode.episode_id, "worker": pair.name}
    if store.record_result(conn, sid, episode.index, row) == 1:
        store.finalize(conn, sid)
    tail = pair.output_tail()
    if tail is not None:
        store.save_agent_log(conn, sid, pair.name, tail)
    pair.after_episode(result)
    return {"outcome": result.outcome, "normalized_return": result.normalized_return}
