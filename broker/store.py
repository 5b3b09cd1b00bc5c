"""The submission record and its episode results in Redis (the keys: `broker.keys`; the statuses:
`broker.status`, each move made atomic here, in Lua).
"""

from __future__ import annotations

import json
import time
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from broker.keys import (  # noqa: F401  (store's users name keys through it)
    DATASET, SUBMISSIONS, agent_logs_key, agent_slot_key, attempts_key, episode_job_id, lease_key, queue_list_key,
    queue_name, reaped_key, reaping_key, results_key, specs_key, submission_key, submission_of_queue,
)
from broker.status import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUBMITTED, TERMINAL  # noqa: F401
from scoring.aggregate import aggregate


def submission_queue(conn: redis.Redis, sid: str) -> Queue:
    """The submission's RQ queue (JSON-serialized jobs, never pickle)."""
    return Queue(queue_name(sid), connection=conn, serializer=JSONSerializer)


# ------------------------------------------------------------------------------ the record

FINALIZING_FIELD = "finalizing"
"""The record field whose HSETNX elects the one process that finalizes the score."""


def gate_checked_field(test: Any) -> str:
    """The record field that marks a test as judged by the completion gate (set once, by HSETNX)."""
    return f"gate_checked:{test}"


@dataclass
class Submission:
    """One submission's record: what it plays, by which rules, where it stands.

    Stored as the Redis hash ``flateval:submission:<id>`` with one field per attribute (None is
    no field); `to_hash`/`from_hash` are its only serialization.
    """

    id: str
    status: str = SUBMITTED
    name: str = ""
    queue: str = ""
    n_episodes: int = 0  # the results that complete it (a completion gate may cut it short) ...
    planned_episodes: int | None = None  # ... and how many were planned (None: records made before the field)
    test_set: str = ""  # the test set's directory ("" for a gymnasium env)
    challenge: str = ""
    phase: str = ""
    settings: dict = field(default_factory=dict)  # what every episode shares: an EpisodeSpec's fields
    aggregation: str = "mean"
    overall_s: float | None = None
    max_consecutive_timeouts: int | None = None
    completion_gate: float | None = None
    agent_command: str | None = None  # flateval run's
    workers: int | None = None  # flateval run's
    # the clock (epoch seconds)
    submitted_at: float | None = None
    enqueued_at: float | None = None
    deadline_at: float | None = None
    queued_at: float | None = None
    running_at: float | None = None
    last_result_at: float | None = None
    finished_at: float | None = None
    failed_at: float | None = None
    cancelled_at: float | None = None
    cleaned_at: float | None = None
    # the completion gate's units: [[test, [episode indices]], ...], and how many are released
    tests: list | None = None
    released: int | None = None
    consecutive_timeouts: int | None = None
    finalizing: float | None = None
    score: dict | None = None
    error: str | None = None
    stopped_by: str | None = None

    def to_hash(self) -> dict[str, str]:
        return encode_fields({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> "Submission":
        """The record from HGETALL's reply; fields it does not know (the gate's marks) are skipped."""
        types = _field_types()
        values = {}
        for key, value in raw.items():
            name = key.decode()
            if name in types:
                values[name] = _decode(types[name], value.decode())
        return cls(**values)

    @property
    def ended_at(self) -> float | None:
        ended = [t for t in (self.finished_at, self.failed_at, self.cancelled_at) if t is not None]
        return max(ended, default=None)


_TYPES: dict[str, Any] = {}


def _field_types() -> dict[str, Any]:
    if not _TYPES:
        hints = typing.get_type_hints(Submission)
        for f in fields(Submission):
            kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
            _TYPES[f.name] = kinds[0]
    return _TYPES


def _decode(kind: Any, text: str) -> Any:
    if kind in (dict, list):
        return json.loads(text)
    return kind(text)


def encode_fields(values: dict[str, Any]) -> dict[str, str]:
    """Record fields as hash values: numbers as text (floats exactly, by repr), dicts and lists as
    JSON; None is left out. A name that is not a `Submission` field is a bug: KeyError."""
    types = _field_types()
    out = {}
    for name, value in values.items():
        kind = types[name]
        if value is None:
            continue
        out[name] = json.dumps(value) if kind in (dict, list) else repr(float(value)) if kind is float else str(value)
    return out


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

RECORD_STORED, RECORD_COMPLETES, RECORD_ENDED, RECORD_GONE, RECORD_FENCED = 0, 1, -1, -2, -3
"""What `record_result` did: stored, stored the last one (finalize now), dropped because the
submission ended, dropped because its record is gone (Redis lost its state), dropped because a
later attempt was given the episode (this one's worker was taken for dead: its lease ran out and
the episode was requeued)."""

_RECORD_RESULT = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {{-2, 0}} end
if status == 'finished' or status == 'failed' or status == 'cancelled' then return {{-1, 0}} end
if ARGV[5] ~= '' then
  local latest = redis.call('HGET', KEYS[3], ARGV[1])
  if latest and tonumber(latest) > tonumber(ARGV[5]) then return {{-3, 0}} end
end
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
if redis.call('HLEN', KEYS[2]) >= expected and redis.call('HSETNX', KEYS[1], '{FINALIZING_FIELD}', ARGV[3]) == 1 then
  return {{1, streak}}
end
return {{0, streak}}
"""


def _now() -> str:
    return repr(time.time())


def create_submission(conn: redis.Redis, submission: Submission) -> None:
    now = time.time()
    submission.status, submission.submitted_at, submission.queue = SUBMITTED, now, queue_name(submission.id)
    pipe = conn.pipeline()
    pipe.hset(submission_key(submission.id), mapping=submission.to_hash())
    pipe.zadd(SUBMISSIONS, {submission.id: now})
    pipe.set(DATASET, repr(now), nx=True)
    pipe.execute()


def update_submission(conn: redis.Redis, sid: str, **values: Any) -> None:
    """Set some fields of the record (by their `Submission` names)."""
    conn.hset(submission_key(sid), mapping=encode_fields(values))


def transition(conn: redis.Redis, sid: str, new: str, allowed_from: Iterable[str]) -> bool:
    """Move to `new` if the status is one of `allowed_from`; True if it moved."""
    return bool(conn.eval(_TRANSITION, 1, submission_key(sid), new, _now(), *allowed_from))


def get_submission(conn: redis.Redis, sid: str) -> Submission | None:
    raw = conn.hgetall(submission_key(sid))
    return Submission.from_hash(raw) if raw else None


def missing_reason(conn: redis.Redis, sid: str) -> str:
    """Why a submission has no record, in words for a one-line error."""
    if conn.exists(DATASET):
        return f"no submission {sid}"
    return (f"no submission {sid}: this Redis holds no flateval data at all (a new Redis, or one that "
            f"restarted without its data: its state is lost)")


def get_status(conn: redis.Redis, sid: str) -> str | None:
    """The status alone (one field: cheap enough for a side thread's polling)."""
    return get_statuses(conn, [sid])[0]


def get_statuses(conn: redis.Redis, sids: list[str]) -> list[str | None]:
    """The statuses of several submissions in one round trip (None: no such record)."""
    pipe = conn.pipeline()
    for sid in sids:
        pipe.hget(submission_key(sid), "status")
    return [status.decode() if status is not None else None for status in pipe.execute()]


def open_submissions(conn: redis.Redis, sids: list[str] | None = None) -> list[str]:
    """Ids of the submissions still to evaluate (of `sids`, else of all), oldest first."""
    if sids is None:
        sids = [s.decode() for s in conn.zrange(SUBMISSIONS, 0, -1)]
    return [sid for sid, status in zip(sids, get_statuses(conn, sids)) if status not in (None, *TERMINAL)]


def record_result(conn: redis.Redis, sid: str, index: int, result: dict[str, Any],
                  attempt: int | None = None) -> tuple[int, int]:
    """Store one episode's result idempotently, if `attempt` (`claim_attempt`'s) is still the latest.

    Returns (state, timeout streak): state `RECORD_COMPLETES` means this call completed the set
    (finalize now); `RECORD_ENDED` (the submission had already ended), `RECORD_GONE` (its record is
    gone) and `RECORD_FENCED` (a later attempt was given out) drop the result; else `RECORD_STORED`.
    The streak counts timeouts in a row in the order results arrive (a re-delivered result does not
    count again). With no record of attempts (a Redis that lost its data) nothing is fenced.
    """
    state, streak = conn.eval(_RECORD_RESULT, 3, submission_key(sid), results_key(sid), attempts_key(sid),
                              str(index), json.dumps(result), _now(), str(result.get("outcome")),
                              "" if attempt is None else str(attempt))
    return int(state), int(streak)


_CLAIM_ATTEMPT = """
local number = redis.call('HGET', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
if number then return tonumber(number) end
number = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], number)
return number
"""


def claim_attempt(conn: redis.Redis, sid: str, index: int, claim: str | None = None) -> int:
    """A new attempt at the episode, which fences off every earlier one (a worker starting it, or a
    reaper taking it from a worker it believes dead): only the latest attempt stores a result.

    A worker names its `claim` (unique to its run): the client retries a command whose reply was
    lost, and a second increment would fence the worker off its own episode. The reaper's bump
    needs no name: two bumps fence the same worker."""
    if claim is None:
        return int(conn.hincrby(attempts_key(sid), str(index), 1))
    return int(conn.eval(_CLAIM_ATTEMPT, 1, attempts_key(sid), str(index), claim))


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
    update_submission(conn, sid, score=score, error=error)
    return True


def elect_finalizer(conn: redis.Redis, sid: str) -> bool:
    """True for exactly one caller per submission: the one that finalizes it."""
    return bool(conn.hsetnx(submission_key(sid), FINALIZING_FIELD, repr(time.time())))


def mark_gate_checked(conn: redis.Redis, sid: str, test: Any) -> bool:
    """True for exactly one caller per test: the one whose result completed it decides the gate."""
    return bool(conn.hsetnx(submission_key(sid), gate_checked_field(test), 1))


def save_agent_log(conn: redis.Redis, sid: str, pair: str, tail: str) -> None:
    conn.hset(agent_logs_key(sid), pair, tail)


def get_agent_logs(conn: redis.Redis, sid: str) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in conn.hgetall(agent_logs_key(sid)).items()}
