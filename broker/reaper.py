"""Re-run the episodes of workers that died mid-episode, within seconds rather than RQ's minutes.

A running episode job holds a lease (``flateval:lease:<job id>``, a few seconds long) that its
worker renews from a side thread. A job in RQ's started registry whose lease has run out belongs to
a dead worker (SIGKILL, OOM, a lost node): the reaper puts it back on its queue, unless its result
is already stored (after storing it, the worker may spend a step deadline and an agent restart
telling its agent about a lost episode, without a lease: that episode is played, not orphaned). Results are stored
idempotently per episode, so a job re-run (or, in a race, run twice) is still scored exactly once.

A worker that was only cut off (a network partition longer than its lease) is fenced, not trusted:
each start of an episode and each requeue claims a new attempt (`store.claim_attempt`), the lease
names the attempt that holds it, and only the latest attempt may renew that lease, drop it, or store
the episode's result. The cut-off worker's late result is refused and its watch stops its episode.

An episode can also be lost outright: a Redis failover that drops the last writes may take back
its dequeue or its result while its worker moved on, and two workers that played it across the
failover may fence each other off. Once the queue is empty and no result came for a while, an
episode with no result, no job queued or started and no lease is re-enqueued from its stored spec
(`requeue_lost`); one that keeps getting lost fails the submission rather than loop.

Reapers run where someone is watching anyway: `flateval run`'s follower, every worker while idle,
and every busy worker's lease thread; workers take turns (`reap_open_submissions`), so a
submission is reaped about once a second however many workers there are.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import redis
from rq.exceptions import NoSuchJobError

try:
    from rq.executions import Execution
except ImportError:  # RQ 1 has no executions: its registry entries are plain job ids
    Execution = None
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from broker import stop_rules, store, submit
from core.episode_spec import EpisodeSpec

LEASE_S = 10
"""A dead worker's episode is requeued this long after its last renewal, at the latest."""
RENEW_S = 2.0
REAP_EVERY_S = 1.0
"""Idle workers reap a submission once a second between them (each pass costs a command per running
episode: without the turn, idle workers x running episodes commands a second)."""
KEEP_FENCED_JOB_S = 24 * 3600
"""How long a fenced run keeps its job's hash for the requeued run, when the job names no timeout."""
START_GRACE_S = 5.0
"""A job RQ just marked started may not have taken its lease yet."""
LOST_GRACE_S = 5.0
"""How long a submission must go without a result (or a release) before an episode nobody plays is lost."""
MAX_ATTEMPTS = 10
"""An episode given out this often without a result fails its submission (a job that always raises)."""


_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
local latest = redis.call('HGET', KEYS[2], ARGV[3])
if latest and tonumber(latest) > tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_holder(owner: str, attempt: int) -> str:
    """What a lease holds: the worker and the attempt it plays (see `store.claim_attempt`)."""
    return f"{owner} attempt {attempt}"


def lease_owner(holder: str) -> str:
    """The worker named in a lease's value (`lease_holder`)."""
    return holder.rsplit(" attempt ", 1)[0]


def take_lease(conn: redis.Redis, sid: str, index: int, job_id: str, owner: str, attempt: int) -> bool:
    """Take or renew the job's lease for this attempt; False if a later attempt has the episode
    (this worker was taken for dead): then it must stop, and will store nothing."""
    return bool(conn.eval(_TAKE_LEASE, 2, store.lease_key(job_id), store.attempts_key(sid),
                          lease_holder(owner, attempt), LEASE_S, str(index), str(attempt)))


def drop_lease(conn: redis.Redis, job_id: str, owner: str, attempt: int) -> None:
    """Drop the lease if this attempt still holds it (never the lease of the attempt that replaced it)."""
    conn.eval(_DROP_LEASE, 1, store.lease_key(job_id), lease_holder(owner, attempt))


def requeue_orphans(conn: redis.Redis, sid: str) -> list[str]:
    """Put the submission's episodes whose worker died back on its queue; return their job ids."""
    queue = store.submission_queue(conn, sid)
    registry = StartedJobRegistry(queue=queue)
    requeued = []
    now = datetime.now(timezone.utc)
    for raw in conn.zrange(registry.key, 0, -1):
        entry = raw.decode()
        job_id = entry.split(":", 1)[0]  # RQ 2 keeps "<job id>:<execution id>"; RQ 1 the job id
        if conn.exists(store.lease_key(job_id)):
            continue
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            conn.zrem(registry.key, entry)
            continue
        started = _run_started(conn, entry, job)
        if started is None or (now - started).total_seconds() < START_GRACE_S:
            continue  # being started this very moment (no date yet), or just now: its lease is coming
        index = _episode_index(job)
        if index is not None and conn.hexists(store.results_key(sid), str(index)):
            continue  # played: its worker, past its lease, is telling (or restarting) its agent
        run = entry if ":" in entry else f"{job_id}:{job.started_at}"  # RQ 2+: <job id>:<execution id>
        if not conn.set(store.reaped_key(run), 1, nx=True, ex=60):
            continue  # another reaper got there first
        if index is not None:
            store.claim_attempt(conn, sid, index)  # fences the worker taken for dead, should it come back
        conn.zrem(registry.key, entry)
        queue.enqueue_job(job, at_front=True)  # it was under way: it goes next, not after the whole queue
        requeued.append(job_id)
    return requeued


def _run_started(conn: redis.Redis, entry: str, job: Job) -> datetime | None:
    """When this run of the job began: its RQ execution's creation (RQ 2+: the registry entry is
    ``<job id>:<execution id>``), else the job's ``started_at``, which a re-run reuses from its last
    run until the worker saves its own (so it cannot tell a run that is starting)."""
    job_id, _, execution_id = entry.partition(":")
    if execution_id and Execution is not None:
        try:
            return Execution.fetch(execution_id, job_id, connection=conn).created_at.astimezone(timezone.utc)
        except Exception:  # the execution's hash is gone (expired): fall back on the job's date
            pass
    return job.started_at.replace(tzinfo=timezone.utc) if job.started_at else None


def _episode_index(job: Job) -> int | None:
    """The episode index of an episode job (its spec, the job's one argument)."""
    spec = job.args[0] if job.args else None
    return spec.get("index") if isinstance(spec, dict) else None


def requeue_lost(conn: redis.Redis, sid: str) -> list[str]:
    """Re-enqueue the submission's episodes that nobody plays and nobody will; return their job ids.

    Looked for only when the queue is empty and no result came for `LOST_GRACE_S` (a few cheap
    reads otherwise): then an episode released to play, without a result, not queued, not in RQ's
    started registry, without a lease and whose job (if any) ended a while ago is lost.
    """
    queue = store.submission_queue(conn, sid)
    if queue.count:
        return []
    record = store.get_submission(conn, sid)
    if record is None or record.status in store.TERMINAL or record.enqueued_at is None:
        return []
    if time.time() - max(record.enqueued_at, record.last_result_at or 0.0) < LOST_GRACE_S:
        return []
    released = (range(record.planned_episodes or record.n_episodes) if not record.tests
                else [i for _, indices in record.tests[:record.released or 0] for i in indices])
    played = {int(i) for i in conn.hkeys(store.results_key(sid))}
    started = {entry.decode().split(":", 1)[0] for entry in conn.zrange(StartedJobRegistry(queue=queue).key, 0, -1)}
    requeued = []
    for index in sorted(set(released) - played):
        job_id = store.episode_job_id(sid, index)
        if job_id in started or conn.exists(store.lease_key(job_id)) or not _ended_long_ago(conn, job_id):
            continue
        raw = conn.hget(store.specs_key(sid), str(index))
        attempts = int(conn.hget(store.attempts_key(sid), str(index)) or 0)
        if raw is None or not conn.set(store.reaped_key(f"{job_id}:lost:{attempts}"), 1, nx=True, ex=60):
            continue  # no spec to play it from (a record older than this rule), or another reaper has it
        if attempts >= MAX_ATTEMPTS:
            stop_rules.fail(conn, sid, f"episode {index} was given out {attempts} times without a result")
            return requeued
        store.claim_attempt(conn, sid, index)
        spec = EpisodeSpec.from_dict(json.loads(raw))
        queue.enqueue_many([submit.episode_job(spec, record.overall_s or 3600.0)])
        requeued.append(job_id)
    return requeued


def _ended_long_ago(conn: redis.Redis, job_id: str) -> bool:
    """Whether the job is gone, or ended (finished, failed, stopped) `LOST_GRACE_S` ago or more."""
    try:
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return True
    if job.get_status(refresh=False) not in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED,
                                             JobStatus.CANCELED):
        return False
    ended = job.ended_at.replace(tzinfo=timezone.utc) if job.ended_at else None
    return ended is None or (datetime.now(timezone.utc) - ended).total_seconds() >= LOST_GRACE_S


def reap_open_submissions(conn: redis.Redis, sids: list[str] | None = None) -> list[str]:
    """`requeue_orphans` and `requeue_lost` over the open ones of the given (default: all)
    submissions that no other worker reaped within the last `REAP_EVERY_S`."""
    return [job for sid in store.open_submissions(conn, sids)
            if conn.set(store.reaping_key(sid), 1, nx=True, px=int(REAP_EVERY_S * 1000))
            for job in requeue_orphans(conn, sid) + requeue_lost(conn, sid)]

