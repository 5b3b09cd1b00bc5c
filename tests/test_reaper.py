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


def test_only_episodes_without_a_result_are_requeued(redis_conn):
    episodes = [PlannedEpisode(env_file=f"Test_0/Level_{i}.pkl", seed=1001, env_path="x", test=0, level=i)
                for i in range(2)]
    plan = make_plan(episodes, Phase(name="p", stop_rules=StopRules(None, None)))
    sid = submit.create(redis_conn, plan)
    submit.enqueue(redis_conn, sid, plan, submit.episode_specs(sid, plan))
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
