"""Keep Redis bounded: what an ended submission leaves behind, and when it goes.

At the end of a submission nothing is deleted at once (a client may still be reading). Then:

- its RQ queue, job hashes and job registries are deleted, and the queue leaves ``rq:queues``,
  `QUEUE_GRACE_S` after it ended;
- its attempts and gate specs are deleted, and its record, results and agent logs expire `RESULT_TTL_S` after that
  (``FLATEVAL_RESULT_TTL_S``, default 7 days): `flateval results` works until then;
- its id leaves ``flateval:submissions`` once its record has expired.

`cleanup_ended` runs whenever a submission is created.
"""

from __future__ import annotations

import os
import time

import redis
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from broker import store

QUEUE_GRACE_S = 300.0
RESULT_TTL_S = float(os.environ.get("FLATEVAL_RESULT_TTL_S", 7 * 24 * 3600))
_REGISTRIES = (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry,
               ScheduledJobRegistry, CanceledJobRegistry)


def cleanup_ended(conn: redis.Redis, older_than_s: float = QUEUE_GRACE_S, ttl_s: float = RESULT_TTL_S) -> int:
    """Clean every submission that ended more than `older_than_s` ago; return how many."""
    now = time.time()
    cleaned = 0
    for raw in conn.zrange(store.SUBMISSIONS, 0, -1):
        sid = raw.decode()
        record = store.get_submission(conn, sid)
        if record is None:  # the record expired: forget the id too
            conn.zrem(store.SUBMISSIONS, sid)
            continue
        ended_at = record.ended_at
        if record.cleaned_at or record.status not in store.TERMINAL or ended_at is None \
                or now - ended_at < older_than_s:
            continue
        _drop_rq_state(conn, sid)
        ttl = max(1, int(ttl_s))
        pipe = conn.pipeline()
        pipe.hset(store.submission_key(sid), mapping=store.encode_fields({"cleaned_at": now}))
        for key in (store.submission_key(sid), store.results_key(sid), store.agent_logs_key(sid)):
            pipe.expire(key, ttl)
        pipe.delete(store.specs_key(sid), store.attempts_key(sid))
        pipe.execute()
        cleaned += 1
    return cleaned


def _drop_rq_state(conn: redis.Redis, sid: str) -> None:
    queue = store.submission_queue(conn, sid)
    job_ids = set(queue.get_job_ids())
    for registry_class in _REGISTRIES:
        registry = registry_class(queue=queue)
        job_ids.update(registry.get_job_ids(cleanup=False))
        conn.delete(registry.key)
    for job_id in job_ids:
        conn.delete(f"rq:job:{job_id}", f"rq:job:{job_id}:dependents", f"rq:results:{job_id}")
    conn.delete(f"{queue.key}:intermediate")
    queue.delete(delete_jobs=False)
