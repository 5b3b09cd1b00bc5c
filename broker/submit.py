"""Create a submission and fan its episodes out as RQ jobs (one job per episode, JSON-serialized)."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Sequence

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from broker import store
from broker.test_set import EnvFile
from flateval.settings import EpisodeSpec

JOB_FUNCTION = "env_worker.job.run_episode_job"
RESULT_TTL_S = 0  # results live in the submission's hash, not in RQ's job results
FAILURE_TTL_S = 7 * 24 * 3600


def new_submission_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def episode_specs(sid: str, env_files: Sequence[EnvFile], template: EpisodeSpec) -> list[EpisodeSpec]:
    """One spec per env file, in test-set order; `template` carries the challenge's settings."""
    return [
        replace(template, env_path=str(f.path), env_file=f.env_file, test=f.test, level=f.level,
                episode_id=f"{sid}/{index}", submission_id=sid, index=index)
        for index, f in enumerate(env_files)
    ]


def create(conn: redis.Redis, env_files: Sequence[EnvFile], template: EpisodeSpec, name: str | None = None,
           test_set: str = "", sid: str | None = None, extra: dict | None = None) -> str:
    sid = sid or new_submission_id()
    store.create_submission(conn, sid, {
        "name": name or sid, "n_episodes": len(env_files), "test_set": test_set,
        "settings": {k: v for k, v in template.as_dict().items()
                     if k not in ("env_path", "env_file", "test", "level", "episode_id", "submission_id", "index")},
        **(extra or {}),
    })
    return sid


def enqueue(conn: redis.Redis, sid: str, specs: Sequence[EpisodeSpec], job_timeout_s: float) -> Queue:
    """Put every episode on the submission's queue in one round trip, then mark it queued."""
    queue = Queue(store.queue_name(sid), connection=conn, serializer=JSONSerializer)
    jobs = [
        Queue.prepare_data(JOB_FUNCTION, args=(spec.as_dict(),), job_id=f"flateval-{sid}-{spec.index}",
                           timeout=int(job_timeout_s) + 60, result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S,
                           description=f"{sid} {spec.env_file}")
        for spec in specs
    ]
    conn.hset(store.submission_key(sid), "enqueued_at", repr(time.time()))
    queue.enqueue_many(jobs)
    store.transition(conn, sid, store.QUEUED, (store.SUBMITTED,))
    return queue


def drop_queue(conn: redis.Redis, sid: str) -> int:
    """Remove the submission's queued (not yet started) episode jobs; return how many."""
    queue = Queue(store.queue_name(sid), connection=conn, serializer=JSONSerializer)
    return queue.empty()
