"""The submission record and its episode results in Redis: every key flateval writes is named here.

Keys (documented in docs/architecture.md):

- ``flateval:submissions``                  sorted set of submission ids by creation time
- ``flateval:submission:<id>``              hash: the submission record (status, settings, timing, score)
- ``flateval:submission:<id>:results``      hash: episode index -> result record (JSON); a re-run
                                            replaces the field, so a result is never counted twice
- ``flateval:submission:<id>:agent_logs``   hash: pair name -> last 10,000 chars of its agent's output
- ``flateval:submission:<id>:specs``        hash: episode index -> episode spec (JSON), kept only
                                            when a completion gate releases tests one by one
- ``rq:queue:flateval-<id>``                the submission's RQ queue (one job per episode)

Status moves ``submitted -> queued -> running -> finished | failed | cancelled``; transitions are
atomic (Lua), and the terminal states are final.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from scoring.aggregate import aggregate

SUBMITTED, QUEUED, RUNNING = "submitted", "queued", "running"
FINISHED, FAILED, CANCELLED = "finished", "failed", "cancelled"
TERMINAL = (FINISHED, FAILED, CANCELLED)

SUBMISSIONS = "flateval:submissions"


def submission_key(sid: str) -> str:
    return f"flateval:submission:{sid}"


def results_key(sid: str) -> str:
    return f"flateval:submission:{sid}:results"


def agent_logs_key(sid: str) -> str:
    return f"flateval:submission:{sid}:agent_logs"


def specs_key(sid: str) -> str:
    return f"flateval:submission:{sid}:specs"


def queue_name(sid: str) -> str:
    return f"flateval-{sid}"


def submission_queue(conn: redis.Redis, sid: str) -> Queue:
    """The submission's RQ queue (JSON-serialized jobs, never pickle)."""
    return Queue(queue_name(sid), connection=conn, serializer=JSONSerializer)


_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {err = 'no such submission'} end
for i = 3, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[2])
    return 1
  end
end
return 0
"""

_RECORD_RESULT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'finished' or status == 'failed' or status == 'cancelled' then return {-1, 0} end
local fresh = redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'last_result_at', ARGV[3])
local streak = 0
if fresh == 1 then
  if ARGV[4] == 'timeout' then
    streak = redis.call('HINCRBY', KEYS[1], 'consecutive_timeouts', 1)
  else
    redis.call('HSET', KEYS[1], 'consecutive_timeouts', 0)
  end
end
local expected = tonumber(redis.call('HGET', KEYS[1], 'n_episodes'))
if redis.call('HLEN', KEYS[2]) >= expected and redis.call('HSETNX', KEYS[1], 'finalizing', ARGV[3]) == 1 then
  return {1, streak}
end
return {0, streak}
"""


def _now() -> str:
    return repr(time.time())


def create_submission(conn: redis.Redis, sid: str, fields: dict[str, Any]) -> None:
    record = {"id": sid, "status": SUBMITTED, "submitted_at": _now(), "queue": queue_name(sid)}
    record.update({k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in fields.items()})
    pipe = conn.pipeline()
    pipe.hset(submission_key(sid), mapping=record)
    pipe.zadd(SUBMISSIONS, {sid: time.time()})
    pipe.execute()


def transition(conn: redis.Redis, sid: str, new: str, allowed_from: Iterable[str]) -> bool:
    """Move to `new` if the status is one of `allowed_from`; True if it moved."""
    return bool(conn.eval(_TRANSITION, 1, submission_key(sid), new, _now(), *allowed_from))


def get_submission(conn: redis.Redis, sid: str) -> dict[str, Any] | None:
    raw = conn.hgetall(submission_key(sid))
    if not raw:
        return None
    record = {k.decode(): v.decode() for k, v in raw.items()}
    for key in ("score", "settings", "episodes_index"):
        if key in record:
            record[key] = json.loads(record[key])
    for key in ("n_episodes", "released"):
        if key in record:
            record[key] = int(record[key])
    for key in ("deadline_at", "enqueued_at", "overall_s"):
        if record.get(key):
            record[key] = float(record[key])
    for key in ("max_consecutive_timeouts", "completion_gate"):
        if key in record:
            record[key] = None if record[key] == "" else float(record[key])
    if "tests" in record:
        record["tests"] = json.loads(record["tests"])
    return record


def record_result(conn: redis.Redis, sid: str, index: int, result: dict[str, Any]) -> tuple[int, int]:
    """Store one episode's result idempotently.

    Returns (state, timeout streak): state 1 means this call completed the set (finalize now), -1
    that the submission had already ended (the result is dropped), else 0. The streak counts
    timeouts in a row in the order results arrive (a re-delivered result does not count again).
    """
    state, streak = conn.eval(_RECORD_RESULT, 2, submission_key(sid), results_key(sid), str(index),
                              json.dumps(result), _now(), str(result.get("outcome")))
    return int(state), int(streak)


def get_results(conn: redis.Redis, sid: str) -> list[dict[str, Any]]:
    """All stored results, sorted by test then level (then index)."""
    rows = [json.loads(v) for v in conn.hvals(results_key(sid))]
    rows.sort(key=lambda r: (r.get("test") if r.get("test") is not None else -1,
                             r.get("level") if r.get("level") is not None else -1, r.get("index", 0)))
    return rows


def count_results(conn: redis.Redis, sid: str) -> int:
    return int(conn.hlen(results_key(sid)))


def finalize(conn: redis.Redis, sid: str, status: str = FINISHED, error: str | None = None) -> bool:
    """Compute the score from the stored results (never from one process's memory) and end the
    submission. A `failed` or `cancelled` submission gets no score."""
    results = get_results(conn, sid)
    method = conn.hget(submission_key(sid), "aggregation")
    score = aggregate(results, method.decode() if method else "mean")
    if status != FINISHED:
        score.update(mean_normalized_return=None, mean_percentage_complete=None)
    if not transition(conn, sid, status, (SUBMITTED, QUEUED, RUNNING)):
        return False
    fields = {"score": json.dumps(score)}
    if error:
        fields["error"] = error
    conn.hset(submission_key(sid), mapping=fields)
    return True


def save_agent_log(conn: redis.Redis, sid: str, pair: str, tail: str) -> None:
    conn.hset(agent_logs_key(sid), pair, tail)


def get_agent_logs(conn: redis.Redis, sid: str) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in conn.hgetall(agent_logs_key(sid)).items()}
