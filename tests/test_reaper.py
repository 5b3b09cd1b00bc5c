"""The reaper re-runs the episodes of dead workers only: a job whose result is stored is played, even
when its worker, past its lease, still spends a step deadline and an agent restart on it (telling
its agent about a lost episode). Before, such jobs were requeued and played twice, which could
interleave with the consecutive-timeout count."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from broker import reaper, store, submit
from broker.plan import PlannedEpisode, make_plan
from core.challenge import Phase, StopRules


def _enqueued_submission(conn, episodes: int) -> str:
    """A submission of `episodes` episodes (Test_0/Level_<i>), created and enqueued; its id."""
    planned = [PlannedEpisode(env_file=f"Test_0/Level_{i}.pkl", seed=1001, env_path="x", test=0, level=i)
               for i in range(episodes)]
    plan = make_plan(planned, Phase(name="p", stop_rules=StopRules(None, None)))
    sid = submit.create(conn, plan)
    submit.enqueue(conn, sid, plan, submit.episode_specs(sid, plan))
    return sid


def test_only_episodes_without_a_result_are_requeued(redis_conn):
    sid = _enqueued_submission(redis_conn, 2)
    queue = store.submission_queue(redis_conn, sid)
    started = StartedJobRegistry(queue=queue)
    for job_id in queue.job_ids:  # both taken by a worker a minute ago, neither lease renewed since
        job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
        job.started_at = datetime.now(timezone.utc) - timedelta(seconds=60)
        job.save()
        queue.remove(job)
        redis_conn.zadd(started.key, {f"{job_id}:execution-1": time.time() + 600})  # RQ's "<job id>:<execution id>"
    store.record_result(redis_conn, sid, 0, {"index": 0, "outcome": "timeout", "normalized_return": -1.0})

    assert reaper.requeue_orphans(redis_conn, sid) == [store.episode_job_id(sid, 1)]
    assert queue.job_ids == [store.episode_job_id(sid, 1)]


def test_a_worker_taken_for_dead_is_fenced_off_when_it_comes_back(redis_conn):
    """A worker cut off from Redis past its lease: the reaper gives its episode to another worker;
    when the first one comes back it can neither renew nor drop the new lease, and its late result
    is refused, never stored over or beside the other's (tests/test_netns.py cuts a real link)."""
    sid = _enqueued_submission(redis_conn, 1)
    queue = store.submission_queue(redis_conn, sid)
    job_id = queue.job_ids[0]
    first = store.claim_attempt(redis_conn, sid, 0, "run-1")
    assert reaper.take_lease(redis_conn, sid, 0, job_id, "cut-off", first)
    job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    job.started_at = datetime.now(timezone.utc) - timedelta(seconds=60)
    job.save()
    queue.remove(job)
    redis_conn.zadd(StartedJobRegistry(queue=queue).key, {f"{job_id}:execution-1": time.time() + 600})
    redis_conn.delete(store.lease_key(job_id))  # its lease ran out while it was cut off

    assert reaper.requeue_orphans(redis_conn, sid) == [job_id]
    assert not reaper.take_lease(redis_conn, sid, 0, job_id, "cut-off", first)  # fenced before anyone took it
    second = store.claim_attempt(redis_conn, sid, 0, "run-2")
    assert store.claim_attempt(redis_conn, sid, 0, "run-2") == second  # a retried claim is the same attempt
    assert reaper.take_lease(redis_conn, sid, 0, job_id, "other", second)
    reaper.drop_lease(redis_conn, job_id, "cut-off", first)  # the first worker's end leaves the lease alone
    assert redis_conn.get(store.lease_key(job_id)) == reaper.lease_holder("other", second).encode()

    late = {"index": 0, "outcome": "completed", "normalized_return": -0.5, "worker": "cut-off"}
    assert store.record_result(redis_conn, sid, 0, late, first) == (store.RECORD_FENCED, 0)
    assert store.count_results(redis_conn, sid) == 0
    played = {"index": 0, "outcome": "completed", "normalized_return": -0.25, "worker": "other"}
    assert store.record_result(redis_conn, sid, 0, played, second)[0] == 1
    assert store.record_result(redis_conn, sid, 0, late, first) == (store.RECORD_FENCED, 0)
    assert store.get_results(redis_conn, sid) == [played]


def test_idle_workers_take_turns_to_reap(redis_conn):
    """A pass costs a command per running episode: idle workers reap a submission once a second
    between them, not once each (benchmarks/redis_scale.py measures both)."""
    sid = _enqueued_submission(redis_conn, 1)
    queue = store.submission_queue(redis_conn, sid)
    job = Job.fetch(queue.job_ids[0], connection=redis_conn, serializer=JSONSerializer)
    job.started_at = datetime.now(timezone.utc) - timedelta(seconds=60)
    job.save()
    queue.remove(job)
    redis_conn.zadd(StartedJobRegistry(queue=queue).key, {f"{job.id}:execution-1": time.time() + 600})
    redis_conn.set(store.reaping_key(sid), 1, px=60_000)  # another worker's turn

    assert reaper.reap_open_submissions(redis_conn, [sid]) == []
    redis_conn.delete(store.reaping_key(sid))  # its second is over
    assert reaper.reap_open_submissions(redis_conn, [sid]) == [job.id]
    assert 0 < redis_conn.pttl(store.reaping_key(sid)) <= reaper.REAP_EVERY_S * 1000


def test_an_episode_nobody_plays_any_more_is_re_enqueued_once(redis_conn):
    """What a failover that lost the last writes leaves: episode 1's job is gone (its dequeue and its
    result were lost, its worker moved on) and no result comes. Once the queue is empty and no result
    came for a while, it is re-enqueued from its spec, once; episodes played or under way are not."""
    sid = _enqueued_submission(redis_conn, 3)
    queue = store.submission_queue(redis_conn, sid)
    store.record_result(redis_conn, sid, 0, {"index": 0, "outcome": "completed", "normalized_return": -0.5})
    lost, leased = store.episode_job_id(sid, 1), store.episode_job_id(sid, 2)
    queue.empty()  # deletes the jobs too: as if their dequeues were kept and their results lost
    redis_conn.set(store.lease_key(leased), "a worker attempt 1", ex=10)  # under way

    assert reaper.requeue_lost(redis_conn, sid) == []  # a result came just now: nothing is lost yet
    store.update_submission(redis_conn, sid, last_result_at=time.time() - reaper.LOST_GRACE_S - 1,
                            enqueued_at=time.time() - 60)
    assert reaper.requeue_lost(redis_conn, sid) == [lost]
    assert queue.job_ids == [lost]
    job = Job.fetch(lost, connection=redis_conn, serializer=JSONSerializer)
    assert job.args[0]["index"] == 1 and job.args[0]["env_file"] == "Test_0/Level_1.pkl"
    assert redis_conn.hget(store.attempts_key(sid), "1") == b"1"  # fences whoever played it before
    assert reaper.requeue_lost(redis_conn, sid) == []  # queued now: not lost twice
